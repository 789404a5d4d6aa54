"""The monitor's terminal view: one rich renderable built from a :class:`MonitorState`.

Rendering reads the state and the time it is given and nothing else, so a frame
can be rendered into a recording console for docs and tests exactly as it
appears live. Imports rich, which only the ``monitor`` extra installs.
"""

from __future__ import annotations

import time

from rich.console import Group, RenderableType
from rich.panel import Panel
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from fedmq.monitor.state import JobView, MonitorState
from fedmq.progress import down_per_agent, human_bytes, ratio_both, staleness_text, wasted
from protocol import Phase

#: rows of the recent-rounds table
RECENT_ROUNDS = 8

_PHASE_STYLE = {
    Phase.WAITING: "yellow",
    Phase.TRAINING: "bold cyan",
    Phase.EVALUATING: "magenta",
    Phase.DONE: "bold green",
    Phase.FAILED: "bold red",
    Phase.STOPPED: "bold yellow",
}


def render(
    state: MonitorState, now: float, *, broker: str, connected: bool, job: str | None = None
) -> RenderableType:
    """The whole screen: a header line, then one panel per job (or just ``job``)."""
    link = "[green]connected[/]" if connected else "[red]disconnected, reconnecting[/]"
    header = Text.from_markup(
        f"[bold]fedmq monitor[/]  {broker}  {link}  "
        f"{time.strftime('%H:%M:%S', time.localtime(now))}  {state.messages} messages"
    )
    parts: list[RenderableType] = [header]
    if state.malformed:
        bad = ", ".join(f"{kind} {n}" for kind, n in sorted(state.malformed.items()))
        parts.append(Text(f"malformed messages: {bad}", style="red"))
    jobs = [v for name, v in sorted(state.jobs.items()) if job is None or name == job]
    if not jobs:
        parts.append(Text("waiting for a job's retained status, metrics or presence ...", "dim"))
    parts.extend(job_panel(v, now) for v in jobs)
    return Group(*parts)


def job_panel(view: JobView, now: float) -> Panel:
    """One job: its round, replies toward quorum, deadline, agents, results, rejections."""
    s = view.status
    lines: list[RenderableType] = []
    if s is None:
        title = f"job {view.job}  (no status yet)"
    else:
        style = _PHASE_STYLE[s.phase]
        title = f"job {view.job} · run {s.run} · [{style}]{s.phase.value}[/]"
        lines.append(_round_line(view, now))
        if s.message:
            lines.append(Text(s.message, style="dim"))
    online, offline = view.agent_counts()
    told = f"   (coordinator counts {s.agents_online} online)" if s is not None else ""
    lines.append(Text(f"agents   {online} online, {offline} offline{told}"))
    last = view.last_evaluated()
    if last is not None:
        acc = f"{last.accuracy:.4f}" if last.accuracy is not None else "-"
        loss = f"{last.loss:.4f}" if last.loss is not None else "-"
        eps = f"   epsilon {last.epsilon:.3g}" if last.epsilon is not None else ""
        lines.append(
            Text(f"last     accuracy {acc}   loss {loss}{eps}   (round {last.round})")
        )
    if view.model is not None:
        m = view.model
        what = "final" if m.done else f"round {m.round}"
        lines.append(
            Text(f"model    {what}, task {m.task}, codec {m.codec}, {human_bytes(m.size_bytes)}")
        )
    stale = view.last_staleness()
    if stale is not None:  # FedBuff, --carry-late (docs/STRATEGIES.md)
        lines.append(Text(f"staleness {staleness_text(stale.staleness or {})}   "
                          f"(tau:updates applied, round {stale.round})"))
    rejected = s.rejected if s is not None else {}
    if rejected:
        by_reason = ", ".join(f"{r} {n}" for r, n in sorted(rejected.items()))
        lines.append(Text(f"rejected {by_reason}   (wasted: {wasted(rejected)} stale)",
                          style="yellow"))
    else:
        lines.append(Text("rejected none"))
    recent = view.recent_rounds(RECENT_ROUNDS)
    if recent:
        lines.append(_rounds_table(view))
    return Panel(Group(*lines), title=title, title_align="left")


def _round_line(view: JobView, now: float) -> RenderableType:
    s = view.status
    assert s is not None
    attempt = f" (retry {s.attempt})" if s.attempt and s.mode == "sync" else ""
    # FedBuff (docs/PROTOCOL.md §13): the round is the model version, replies its buffer
    word, fill = ("version ", "buffer") if s.mode == "fedbuff" else ("round   ", "replies")
    if s.phase not in (Phase.TRAINING, Phase.EVALUATING):
        return Text(f"{word} {s.round}/{s.rounds}")
    grid = Table.grid(padding=(0, 1))
    grid.add_row(
        Text(f"{word} {s.round}/{s.rounds}{attempt}"),
        Text(fill),
        ProgressBar(total=max(s.quorum, 1), completed=min(s.accepted, max(s.quorum, 1)), width=24),
        Text(f"{s.accepted}/{s.quorum}"),
        Text(_deadline_text(view, now)),
    )
    return grid


def _deadline_text(view: JobView, now: float) -> str:
    left = view.deadline_in(now)
    if left is None:
        return ""
    if left < 0:
        return f"deadline passed {-left:.0f} s ago"
    return f"deadline in {left:.1f} s"


def _rounds_table(view: JobView) -> Table:
    table = Table(title="recent rounds", title_justify="left", expand=False, box=None)
    for name in ("round", "closed by", "accepted", "declined", "rejected", "accuracy", "loss",
                 "up", "down", "down/agent", "both ways", "seconds"):
        table.add_column(name, justify="left" if name == "closed by" else "right")
    for m in view.recent_rounds(RECENT_ROUNDS):
        per_agent, both = down_per_agent(m), ratio_both(m)
        table.add_row(
            str(m.round),
            m.closed_by.value,
            str(m.accepted),
            str(m.declined),
            str(sum(m.rejected.values())),
            f"{m.accuracy:.4f}" if m.accuracy is not None else "-",
            f"{m.loss:.4f}" if m.loss is not None else "-",
            human_bytes(m.bytes_up),
            human_bytes(m.bytes_down),
            human_bytes(per_agent) if per_agent is not None else "-",
            f"x{both:.1f}" if both is not None else "-",
            f"{m.duration_s:.2f}",
        )
    return table
