"""Following a run from the coordinator's side: progress lines, a JSONL log, the summary.

:class:`RunRecorder` observes the coordinator's actions (it is passed as
``on_action``); it never changes the run.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TextIO

from coordinator import Action, RoundClosed, RoundOpened, Rounds
from protocol import RoundMetrics


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
    return (
        f"round {m.round:>3}/{rounds}  replies {m.accepted:>3}/{quorum} ({m.closed_by.value})  "
        f"{acc}  {loss}  up {human_bytes(m.bytes_up)}  down {human_bytes(m.bytes_down)}  "
        f"{m.duration_s:.2f} s{extra}"
    )


@dataclass
class RunRecorder:
    """Prints progress, appends each round's metrics to ``metrics.jsonl``, builds the summary."""

    rounds: int
    out: TextIO | None = sys.stdout
    jsonl: Path | None = None
    started: float = field(default_factory=time.monotonic)
    history: list[RoundMetrics] = field(default_factory=list)
    first_round_at: float | None = None
    _quorum: int = 0

    def __call__(self, action: Action) -> None:
        match action:
            case RoundOpened(quorum=quorum, round_no=round_no, attempt=attempt):
                self._quorum = quorum
                if self.first_round_at is None:
                    self.first_round_at = time.monotonic()
                if attempt:
                    self._print(f"round {round_no:>3}: too few replies; retry {attempt}")
            case RoundClosed(metrics=metrics):
                self.history.append(metrics)
                self._print(round_line(metrics, self.rounds, self._quorum))
                if self.jsonl is not None:
                    self.jsonl.parent.mkdir(parents=True, exist_ok=True)
                    with self.jsonl.open("a") as f:
                        f.write(json.dumps(_metrics_dict(metrics)) + "\n")
            case _:
                pass

    def _print(self, line: str) -> None:
        if self.out is not None:
            print(line, file=self.out, flush=True)

    def summary(self, core: Rounds, **extra: Any) -> dict[str, Any]:
        """The run in one JSON-ready dict (the demo's ``--summary`` file).

        Counts come from the round machine, whose history after ``--resume``
        includes the rounds closed before the restart.
        """
        h = core.history
        last_acc = next((m.accuracy for m in reversed(h) if m.accuracy is not None), None)
        start = self.first_round_at if self.first_round_at is not None else self.started
        raw_up = sum(m.raw_bytes_up for m in h)
        up = sum(m.bytes_up for m in h)
        rejected = core.rejected_total
        return {
            "phase": core.phase.value,
            "message": core.message,
            "final_accuracy": last_acc,
            "rounds_completed": len(h),
            "wall_s": round(time.monotonic() - start, 3),
            "bytes_up": up,
            "bytes_down": sum(m.bytes_down for m in h),
            "raw_bytes_up": raw_up,
            "compression_ratio_up": round(raw_up / up, 3) if up else None,
            "updates_accepted": sum(m.accepted for m in h),
            "updates_declined": sum(m.declined for m in h),
            "updates_rejected": sum(rejected.values()),
            "rejected_by_reason": rejected,
            "accuracy_per_round": [m.accuracy for m in h],
            "seconds_per_round": [round(m.duration_s, 4) for m in h],
            **extra,
        }


def _metrics_dict(m: RoundMetrics) -> dict[str, Any]:
    d = asdict(m)
    d["closed_by"] = m.closed_by.value
    return d
