"""``fedmq report RUN_DIR``: plots and a short markdown summary of one finished run.

Reads only the run directory the coordinator wrote (``metrics.jsonl``, one
round per line, and ``summary.json`` when present), never a broker. A reused
run directory can hold several runs' lines: the report covers the run that
``summary.json`` names, else the last run in the file, and a round written twice
(a resumed run) counts once, last line winning. Lines that do not parse are
skipped and counted in the report. matplotlib is used through its Agg canvas
only (no pyplot, no display), and imported when a report is written.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fedmq.progress import (
    byte_totals,
    down_per_agent,
    human_bytes,
    ratio_both,
    staleness_text,
    wasted,
)
from protocol import SCHEMA_VERSION, RejectReason, RoundMetrics, WireError, decode_metrics

if TYPE_CHECKING:
    from matplotlib.figure import Figure

PLOTS = ("accuracy.png", "bytes.png", "participation.png")
REPORT = "report.md"
#: 800 x 320 pixels: readable in a README, small on disk
_FIGSIZE_IN = (8.0, 3.2)
_DPI = 100


@dataclass(slots=True)
class RunRecord:
    """One run's rounds as read back from its directory."""

    rounds: list[RoundMetrics]
    summary: dict[str, Any] = field(default_factory=dict)
    skipped_lines: int = 0


def load_run(run_dir: Path) -> RunRecord:
    """Read ``run_dir``'s metrics and summary.

    Raises:
        FileNotFoundError: without ``metrics.jsonl``.
        ValueError: when it holds no usable round.
    """
    summary: dict[str, Any] = {}
    summary_path = run_dir / "summary.json"
    if summary_path.exists():
        loaded = json.loads(summary_path.read_text())
        summary = loaded if isinstance(loaded, dict) else {}
    by_run: dict[str, dict[int, RoundMetrics]] = {}
    skipped = 0
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        if not line.strip():
            continue
        try:
            m = _parse_line(line)
        except WireError:
            skipped += 1
            continue
        rounds = by_run.pop(m.run, {})  # re-inserted: the run written last stays last
        rounds[m.round] = m
        by_run[m.run] = rounds
    if not by_run:
        raise ValueError(f"{run_dir / 'metrics.jsonl'} holds no rounds")
    run = summary.get("run")
    chosen = by_run[run] if isinstance(run, str) and run in by_run else list(by_run.values())[-1]
    return RunRecord(sorted(chosen.values(), key=lambda m: m.round), summary, skipped)


def _parse_line(line: str) -> RoundMetrics:
    """One JSONL line, checked by the wire decoder: the file holds the wire's fields.

    Raises:
        WireError: for a line that is not a round's metrics.
    """
    try:
        doc = json.loads(line)
    except ValueError:
        raise WireError(RejectReason.MALFORMED, f"not JSON: {line[:60]!r}") from None
    if not isinstance(doc, dict):
        raise WireError(RejectReason.MALFORMED, f"not a JSON object: {line[:60]!r}")
    doc.setdefault("v", SCHEMA_VERSION)
    doc.setdefault("type", "metrics")
    return decode_metrics(json.dumps(doc).encode())


def write_report(run_dir: Path, out_dir: Path | None = None) -> list[Path]:
    """Write the three plots and ``report.md`` into ``out_dir`` (default ``run_dir``)."""
    record = load_run(run_dir)
    out = out_dir or run_dir
    out.mkdir(parents=True, exist_ok=True)
    rounds = record.rounds
    written = [
        _save(_accuracy_figure(rounds), out / PLOTS[0]),
        _save(_bytes_figure(rounds), out / PLOTS[1]),
        _save(_participation_figure(rounds), out / PLOTS[2]),
    ]
    report = out / REPORT
    report.write_text(markdown(record))
    return [*written, report]


# --- plots -------------------------------------------------------------------------------


def _figure(ncols: int = 1) -> Figure:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    fig = Figure(figsize=_FIGSIZE_IN, dpi=_DPI, layout="constrained")
    FigureCanvasAgg(fig)
    for ax in fig.subplots(1, ncols, squeeze=False).flat:
        ax.set_xlabel("round")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    return fig


def _legend_outside(ax: Any) -> None:
    ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0))


def _save(fig: Figure, path: Path) -> Path:
    fig.savefig(path, format="png", metadata={"Software": None})
    return path


def _series(rounds: list[RoundMetrics], key: str) -> tuple[list[int], list[float]]:
    points = [(m.round, getattr(m, key)) for m in rounds if getattr(m, key) is not None]
    return [r for r, _ in points], [v for _, v in points]


def _accuracy_figure(rounds: list[RoundMetrics]) -> Figure:
    fig = _figure(2)
    acc_ax, loss_ax = fig.axes
    for ax, (test_key, train_key, name) in zip(
        (acc_ax, loss_ax),
        (("accuracy", "train_accuracy", "accuracy"), ("loss", "train_loss", "loss")),
        strict=True,
    ):
        for key, label, style in ((test_key, "test (global model)", "-o"),
                                  (train_key, "train (agents' mean)", "--")):
            xs, ys = _series(rounds, key)
            if xs:
                ax.plot(xs, ys, style, label=label, markersize=3)
        ax.set_title(f"{name} per round")
        ax.grid(alpha=0.3)
        if ax.get_lines():
            ax.legend(fontsize="small")
        else:
            ax.text(0.5, 0.5, f"no {name} recorded", ha="center", transform=ax.transAxes)
    return fig


def _bytes_figure(rounds: list[RoundMetrics]) -> Figure:
    fig = _figure()
    ax = fig.axes[0]
    xs = [m.round for m in rounds]
    width = 0.4
    ax.bar([x - width / 2 for x in xs], [m.bytes_up / 1e6 for m in rounds], width,
           label="up (updates)")
    ax.bar([x + width / 2 for x in xs], [m.bytes_down / 1e6 for m in rounds], width,
           label="down (models, deltas)")
    ax.plot(xs, [m.raw_bytes_up / 1e6 for m in rounds], "k:", label="up, uncompressed float32")
    if any(m.raw_bytes_down for m in rounds):
        ax.plot(xs, [(m.raw_bytes_down or 0) / 1e6 for m in rounds], "k--",
                label="down, uncompressed float32")
    ax.set_title("payload bytes per round")
    ax.set_ylabel("MB")
    ax.grid(axis="y", alpha=0.3)
    _legend_outside(ax)
    return fig


def _participation_figure(rounds: list[RoundMetrics]) -> Figure:
    from matplotlib.ticker import MaxNLocator

    fig = _figure()
    ax = fig.axes[0]
    xs = [m.round for m in rounds]
    accepted = [m.accepted for m in rounds]
    declined = [m.declined for m in rounds]
    ax.bar(xs, accepted, label="accepted")
    ax.bar(xs, declined, bottom=accepted, label="declined")
    bottom = [a + d for a, d in zip(accepted, declined, strict=True)]
    reasons = sorted({r for m in rounds for r in m.rejected})
    for reason in reasons:
        counts = [m.rejected.get(reason, 0) for m in rounds]
        ax.bar(xs, counts, bottom=bottom, label=f"rejected: {reason}", hatch="//")
        bottom = [b + c for b, c in zip(bottom, counts, strict=True)]
    ax.set_title("replies per round")
    ax.set_ylabel("messages")
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(axis="y", alpha=0.3)
    _legend_outside(ax)
    return fig


# --- markdown ------------------------------------------------------------------------------


def markdown(record: RunRecord) -> str:
    """A short summary: the outcome, the totals, the plots, and one table row per round."""
    rounds, s = record.rounds, record.summary
    first = rounds[0]
    evaluated = [m for m in rounds if m.accuracy is not None]
    rejected: Counter[str] = Counter()
    for m in rounds:
        rejected.update(m.rejected)
    up = sum(m.bytes_up for m in rounds)
    raw_up = sum(m.raw_bytes_up for m in rounds)
    rows = [
        ("job", first.job),
        ("run", first.run),
        ("task", str(s.get("task", "-"))),
        ("outcome", f"{s['phase']}: {s.get('message', '')}" if "phase" in s else "-"),
        ("rounds", str(len(rounds))),
    ]
    if evaluated:
        best = max(evaluated, key=lambda m: m.accuracy or 0.0)
        rows.append(("final accuracy", f"{evaluated[-1].accuracy:.4f} "
                     f"(best {best.accuracy:.4f} in round {best.round})"))
    if isinstance(s.get("wall_s"), int | float):
        rows.append(("wall time", f"{s['wall_s']:.1f} s"))
    mean_s = sum(m.duration_s for m in rounds) / len(rounds)
    rows += [
        ("mean round", f"{mean_s:.2f} s"),
        ("updates", f"{sum(m.accepted for m in rounds)} accepted, "
                    f"{sum(m.declined for m in rounds)} declined, "
                    f"{sum(rejected.values())} rejected"),
        ("payload", f"up {human_bytes(up)} (uncompressed {human_bytes(raw_up)}), "
                    f"down {human_bytes(sum(m.bytes_down for m in rounds))}"),
    ]
    totals = byte_totals(rounds)
    if totals["compression_ratio_both"] is not None:
        rows.append(("compression", f"up {totals['compression_ratio_up']:.1f}x, down "
                     f"{totals['compression_ratio_down']:.1f}x, both ways "
                     f"{totals['compression_ratio_both']:.1f}x; "
                     f"{human_bytes(totals['bytes_down_per_agent_round'])} down per agent "
                     f"per round"))
    if rejected:
        rows.append(("rejected by reason",
                     ", ".join(f"{r} {n}" for r, n in sorted(rejected.items()))))
    staleness: Counter[str] = Counter()
    for m in rounds:
        staleness.update(m.staleness or {})
    if staleness:  # FedBuff, --carry-late: every step's updates by staleness tau
        rows.append(("staleness", f"{staleness_text(staleness)} (tau:updates applied); "
                     f"wasted {wasted(rejected)} (rejected stale)"))
    if record.skipped_lines:
        rows.append(("unreadable lines", f"{record.skipped_lines} skipped in metrics.jsonl"))
    out = [f"# fedmq run {first.run} (job {first.job})", "", "| | |", "| --- | --- |"]
    out += [f"| {k} | {v} |" for k, v in rows]
    out += ["", "![accuracy and loss per round](accuracy.png)", "",
            "![payload bytes per round](bytes.png)", "",
            "![replies per round](participation.png)", "", "## Rounds", "",
            "| round | closed by | accepted | declined | rejected | accuracy | loss | up | down "
            "| down/agent | both ways | seconds |",
            "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for m in rounds:
        acc = f"{m.accuracy:.4f}" if m.accuracy is not None else "-"
        loss = f"{m.loss:.4f}" if m.loss is not None else "-"
        per_agent, both = down_per_agent(m), ratio_both(m)
        out.append(
            f"| {m.round} | {m.closed_by.value} | {m.accepted} | {m.declined} | "
            f"{sum(m.rejected.values())} | {acc} | {loss} | {human_bytes(m.bytes_up)} | "
            f"{human_bytes(m.bytes_down)} | "
            f"{human_bytes(per_agent) if per_agent is not None else '-'} | "
            f"{f'{both:.1f}x' if both is not None else '-'} | {m.duration_s:.2f} |"
        )
    return "\n".join(out) + "\n"
