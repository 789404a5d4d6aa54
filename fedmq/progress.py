"""Following a run from the coordinator's side: progress lines, a JSONL log, the summary.

:class:`RunRecorder` observes the coordinator's actions (it is passed as
``on_action``); it never changes the run. On a terminal (and with rich
installed) the open round also gets a live bar, replies toward quorum and the
deadline countdown, drawn by rich's own refresh thread; anywhere else the output
is the plain lines alone, one per round.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TextIO

from coordinator import Action, RoundClosed, RoundOpened, Rounds, Stop, UpdateAccepted
from coordinator.buffered import BufferedRounds
from protocol import RoundMetrics
from protocol.durable import atomic_write


def human_bytes(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if abs(n) < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"


def round_line(m: RoundMetrics, rounds: int, quorum: int) -> str:
    """One line per closed round: what a person scanning a log wants to see."""
    acc = f"acc {m.accuracy:.4f}" if m.accuracy is not None else "acc -"
    loss = f"loss {m.loss:.4f}" if m.loss is not None else ""
    rejected = sum(m.rejected.values())
    extra = f"  rejected {rejected}" if rejected else ""
    if m.epsilon is not None:  # DP-FedAvg: the privacy spent so far
        extra += f"  epsilon {m.epsilon:.3g}"
    if m.staleness:  # FedBuff, --carry-late: the updates applied, by staleness
        extra += f"  staleness {staleness_text(m.staleness)}"
    # each way's compression: raw float32 over the payload bytes (docs/PROTOCOL.md §15.6)
    up = f" (x{m.raw_bytes_up / m.bytes_up:.1f})" if m.bytes_up else ""
    down = f" (x{m.raw_bytes_down / m.bytes_down:.1f})" if m.raw_bytes_down and m.bytes_down else ""
    return (
        f"round {m.round:>3}/{rounds}  replies {m.accepted:>3}/{quorum} ({m.closed_by.value})  "
        f"{acc}  {loss}  up {human_bytes(m.bytes_up)}{up}  down {human_bytes(m.bytes_down)}{down}  "
        f"{m.duration_s:.2f} s{extra}"
    )


def staleness_text(counts: Mapping[str, int]) -> str:
    """A staleness histogram as ``tau:count`` pairs by tau, e.g. ``0:7 1:2 4:1``."""
    return " ".join(f"{tau}:{n}" for tau, n in sorted(counts.items(), key=lambda kv: int(kv[0])))


def wasted(rejected: Mapping[str, int]) -> int:
    """Updates trained and then thrown away for arriving too late (rejected ``stale``)."""
    return rejected.get("stale", 0)


def down_per_agent(m: RoundMetrics) -> int | None:
    """The round's downlink per device: bytes down over the (announcement, agent) pairs."""
    return m.bytes_down // m.addressed if m.addressed else None


def ratio_both(m: RoundMetrics) -> float | None:
    """The round's compression both ways: raw float32 up and down over the payload bytes."""
    sent = m.bytes_up + m.bytes_down
    return (m.raw_bytes_up + m.raw_bytes_down) / sent if m.raw_bytes_down and sent else None


def byte_totals(history: Sequence[RoundMetrics]) -> dict[str, Any]:
    """A run's payload bytes each way, their ratios to raw float32 (each way and both
    ways), and the mean downlink per device per round (docs/PROTOCOL.md §15.6)."""
    up, down = sum(m.bytes_up for m in history), sum(m.bytes_down for m in history)
    raw_up = sum(m.raw_bytes_up for m in history)
    raw_down = sum(m.raw_bytes_down or 0 for m in history)
    addressed = sum(m.addressed or 0 for m in history)
    counted = raw_down > 0  # runs recorded before downlink counts have none

    def ratio(raw: int, sent: int) -> float | None:
        return round(raw / sent, 3) if raw and sent else None

    return {
        "bytes_up": up,
        "bytes_down": down,
        "raw_bytes_up": raw_up,
        "raw_bytes_down": raw_down if counted else None,
        "compression_ratio_up": ratio(raw_up, up),
        "compression_ratio_down": ratio(raw_down, down) if counted else None,
        "compression_ratio_both": ratio(raw_up + raw_down, up + down) if counted else None,
        "bytes_down_per_agent_round": round(down / addressed) if addressed else None,
    }


@dataclass
class RunRecorder:
    """Prints progress, appends each round's metrics to ``metrics.jsonl``, builds the summary."""

    rounds: int
    out: TextIO | None = sys.stdout
    jsonl: Path | None = None
    #: draw the live bar; None means "when ``out`` is a terminal"
    live: bool | None = None
    started: float = field(default_factory=time.monotonic)
    history: list[RoundMetrics] = field(default_factory=list)
    first_round_at: float | None = None
    _quorum: int = 0
    _bar: RoundBar | None = None

    def __post_init__(self) -> None:
        if self.live is None:
            self.live = self.out is not None and self.out.isatty()
        if self.live and self.out is not None:
            try:
                self._bar = RoundBar(self.out, self.rounds)
            except ImportError:  # rich is in the monitor extra; plain lines do without it
                self._bar = None

    def __call__(self, action: Action) -> None:
        match action:
            case RoundOpened(quorum=quorum, round_no=round_no, attempt=attempt):
                self._quorum = quorum
                if self.first_round_at is None:
                    self.first_round_at = time.monotonic()
                if attempt:
                    self._print(f"round {round_no:>3}: too few replies; retry {attempt}")
                if self._bar is not None:
                    self._bar.open(round_no, attempt, quorum, action.deadline_s)
            case UpdateAccepted(accepted=accepted) if self._bar is not None:
                self._bar.replies(accepted)
            case RoundClosed(metrics=metrics):
                self.history.append(metrics)
                self._print(round_line(metrics, self.rounds, self._quorum))
                if self.jsonl is not None:
                    self.jsonl.parent.mkdir(parents=True, exist_ok=True)
                    with self.jsonl.open("a") as f:
                        f.write(json.dumps(_metrics_dict(metrics)) + "\n")
            case Stop():
                self.close()
            case _:
                pass

    def close(self) -> None:
        """Take the live bar down (idempotent); the run's lines stay on screen."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def _print(self, line: str) -> None:
        if self._bar is not None:
            self._bar.print(line)
        elif self.out is not None:
            print(line, file=self.out, flush=True)

    def summary(self, core: Rounds | BufferedRounds, **extra: Any) -> dict[str, Any]:
        """The run in one JSON-ready dict (the demo's ``--summary`` file).

        Counts come from the round machine, whose history after ``--resume``
        includes the rounds closed before the restart.
        """
        h = core.history
        last_acc = next((m.accuracy for m in reversed(h) if m.accuracy is not None), None)
        start = self.first_round_at if self.first_round_at is not None else self.started
        rejected = core.rejected_total
        return {
            "phase": core.phase.value,
            "message": core.message,
            "final_accuracy": last_acc,
            "rounds_completed": len(h),
            "wall_s": round(time.monotonic() - start, 3),
            **byte_totals(h),
            "updates_accepted": sum(m.accepted for m in h),
            "updates_declined": sum(m.declined for m in h),
            "updates_rejected": sum(rejected.values()),
            "rejected_by_reason": rejected,
            "accuracy_per_round": [m.accuracy for m in h],
            "seconds_per_round": [round(m.duration_s, 4) for m in h],
            **extra,
        }


def write_summary(path: Path, summary: dict[str, Any]) -> None:
    """Write a run's summary as JSON, atomically, creating its directory: a run stopped
    before its first round has written nothing else there yet."""
    atomic_write(path, (json.dumps(summary, indent=2) + "\n").encode())


def _metrics_dict(m: RoundMetrics) -> dict[str, Any]:
    d = asdict(m)
    d["closed_by"] = m.closed_by.value
    return d


class RoundBar:
    """The open round on a terminal: a bar of replies toward quorum and the time left.

    rich's refresh thread redraws it, so the countdown moves between actions;
    lines printed through :meth:`print` scroll above it.

    Raises:
        ImportError: when rich is not installed.
    """

    def __init__(self, out: TextIO, rounds: int) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

        self._rounds = rounds
        self._progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("replies"),
            _deadline_column(),
            console=Console(file=out),
            transient=True,
            refresh_per_second=4,
        )
        self._task = self._progress.add_task("", total=1, deadline=0.0, visible=False)
        self._started = False

    def open(self, round_no: int, attempt: int, quorum: int, deadline_s: float) -> None:
        retry = f" retry {attempt}" if attempt else ""
        self._progress.reset(
            self._task,
            total=max(quorum, 1),
            completed=0,
            description=f"round {round_no:>3}/{self._rounds}{retry}",
            deadline=time.monotonic() + deadline_s,
            visible=True,
        )
        if not self._started:
            self._progress.start()
            self._started = True

    def replies(self, accepted: int) -> None:
        self._progress.update(self._task, completed=accepted)

    def print(self, line: str) -> None:
        self._progress.console.print(line, markup=False, highlight=False, soft_wrap=True)

    def close(self) -> None:
        if self._started:
            self._progress.stop()


def _deadline_column() -> Any:
    """A rich column with the seconds left before the round's deadline, fresh at every redraw."""
    from rich.progress import ProgressColumn, Task
    from rich.text import Text

    class DeadlineColumn(ProgressColumn):
        def render(self, task: Task) -> Text:
            left = task.fields["deadline"] - time.monotonic()
            return Text(f"deadline in {max(left, 0.0):5.1f} s")

    return DeadlineColumn()
