"""Browser agents and the dashboard in real headless Chromium, over a real Mosquitto's
WebSockets listener, beside Python agents and a real coordinator.

Every wait is on a condition (the coordinator's closed rounds, or a JavaScript
expression over a page's DOM) with a timeout; nothing sleeps.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from web_harness import ARTIFACTS, Browser, agent_link, dashboard_link, pages_server, web_broker

from coordinator import Action, MessageRejected, RoundConfig, UpdateAccepted
from fedmq.tasks import get_task
from tests.integration.harness import CoordinatorThread, agent_fleet

pytestmark = pytest.mark.integration

DIGITS = get_task("digits")
#: the dashboard's round rows, its phase, its connection (JavaScript, read in the page)
ROWS = "document.querySelectorAll('#rounds-table tbody tr').length"
DONE = "document.querySelector('#phase').dataset.phase === 'done'"
CONNECTED = "document.querySelector('#connection').dataset.state === 'connected'"
#: a "1": one vertical stroke on the agent page's drawing pad, as a finger would draw it
DRAW_A_ONE = """(() => {
  const pad = document.getElementById('pad');
  const r = pad.getBoundingClientRect();
  const at = (y) => ({ clientX: r.left + r.width / 2, clientY: r.top + r.height * y,
                       pointerId: 1, bubbles: true });
  pad.dispatchEvent(new PointerEvent('pointerdown', at(0.15)));
  for (let y = 0.2; y <= 0.85; y += 0.05) pad.dispatchEvent(new PointerEvent('pointermove', at(y)));
  pad.dispatchEvent(new PointerEvent('pointerup', at(0.85)));
})()"""


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    b = Browser()
    try:
        yield b
    finally:
        b.quit()


@dataclasses.dataclass
class Accepted:
    """The coordinator's accepted updates and rejections, as (agent, round)."""

    updates: list[tuple[str, int]] = dataclasses.field(default_factory=list)
    rejected: list[MessageRejected] = dataclasses.field(default_factory=list)
    cond: threading.Condition = dataclasses.field(default_factory=threading.Condition)

    def __call__(self, action: Action) -> None:
        with self.cond:
            if isinstance(action, UpdateAccepted):
                self.updates.append((action.agent, action.round_no))
            elif isinstance(action, MessageRejected):
                self.rejected.append(action)
            self.cond.notify_all()


def rounds_in_dom(browser: Browser, page: str) -> list[dict[str, str]]:
    value = browser.eval(page, """[...document.querySelectorAll('#rounds-table tbody tr')].map(
        (tr) => ({ round: tr.dataset.round, missed: tr.dataset.missed === 'true',
                   accuracy: tr.children[6]?.textContent,
                   accepted: tr.children[2]?.textContent }))""")
    assert isinstance(value, list)
    return value


def test_browser_and_python_agents_train_digits_and_the_dashboard_shows_every_round(
    browser: Browser,
) -> None:
    job, rounds, python, browsers = "mixed", 6, 4, 3
    total = python + browsers
    accepted = Accepted()
    # the demo's codec: int8 with error feedback, in zstd frames, from the browsers too
    config = RoundConfig(job=job, task="digits", rounds=rounds, plan=DIGITS.plan,
                         codec="int8+zstd", min_agents=total, deadline_s=60)
    with web_broker(job) as broker, pages_server(f"ws://127.0.0.1:{broker.ws_port}", job,
                                                 "digits") as base:
        browser.open("dash", dashboard_link(base, broker, job), 1280, 800)
        for i in range(browsers):
            browser.open(f"b{i}", agent_link(base, broker, job, f"browser-{i}",
                                            f"{python + i}/{total}"), 390, 844)
        with agent_fleet(broker.url, job, "digits", python, total=total):
            coordinator = CoordinatorThread(config, broker.url, on_action=accepted).start()
            coordinator.join(180)
        browser.wait("dash", f"{DONE} && {ROWS} === {rounds}")
        shot = browser.screenshot("dash", ARTIFACTS / "dashboard.png")
        # the draw panel runs the final global model here, and keeps the labelled drawing
        samples = int(browser.text("b0", "#samples"))
        browser.eval("b0", DRAW_A_ONE)
        browser.wait("b0", "document.querySelector('#prediction').dataset.digit !== undefined")
        predicted = browser.text("b0", "#prediction")
        agents_shot = browser.screenshot("b0", ARTIFACTS / "agent.png")
        browser.eval("b0", "document.querySelectorAll('#labels button')[1].click()")
        browser.wait("b0", f"document.querySelector('#samples').textContent === '{samples + 1}'")
        kept = browser.text("b0", "#drawings")
        dom = rounds_in_dom(browser, "dash")
        online = browser.text("dash", "#online-kinds")
        for i in range(browsers):
            browser.close_page(f"b{i}")
        browser.close_page("dash")

    closed = coordinator.closed
    assert [m.round for m in closed] == list(range(1, rounds + 1))
    assert closed[-1].accuracy is not None and closed[-1].accuracy >= 0.90
    assert accepted.rejected == []
    from_browsers = [(a, r) for a, r in accepted.updates if a.startswith("browser-")]
    assert sorted(from_browsers) == sorted(
        (f"browser-{i}", r) for i in range(browsers) for r in range(1, rounds + 1))
    assert len(accepted.updates) == total * rounds
    # the page shows every round, newest first, with the coordinator's numbers
    assert [int(row["round"]) for row in dom] == list(range(rounds, 0, -1))
    by_round = {m.round: m for m in closed}
    for row in dom:
        m = by_round[int(row["round"])]
        assert row["accuracy"] == f"{m.accuracy:.4f}" and int(row["accepted"]) == m.accepted
    assert "3 browser" in online
    assert shot.stat().st_size > 10_000 and agents_shot.stat().st_size > 10_000
    assert f"round {rounds} model reads a" in predicted
    assert kept.endswith("1 so far")


def test_a_browser_agent_reloaded_mid_round_answers_the_round_once(browser: Browser) -> None:
    job = "reload"
    accepted = Accepted()
    # enough local epochs that the browser is still training when the page reloads
    plan = dataclasses.replace(DIGITS.plan, epochs=150)
    config = RoundConfig(job=job, task="digits", rounds=2, plan=plan, codec="none",
                         min_agents=2, quorum=2, deadline_s=120)
    with web_broker(job) as broker, pages_server(f"ws://127.0.0.1:{broker.ws_port}", job,
                                                 "digits") as base:
        browser.open("agent", agent_link(base, broker, job, "browser-r", "1/2"), 390, 844)
        with agent_fleet(broker.url, job, "digits", 1, total=2):
            coordinator = CoordinatorThread(config, broker.url, on_action=accepted).start()
            browser.wait("agent", "document.querySelector('#phase').dataset.phase === 'training'"
                                  " && document.querySelector('#phase').dataset.round === '1'")
            with accepted.cond:
                sent_before = [u for u in accepted.updates if u[0] == "browser-r"]
            browser.reload("agent")
            coordinator.join(180)
        browser.wait("agent", "document.querySelector('#updates').dataset.rounds.includes('1')")
        browser.close_page("agent")
    assert sent_before == []
    assert [m.round for m in coordinator.closed] == [1, 2]
    assert sorted(u for u in accepted.updates if u[0] == "browser-r") == [
        ("browser-r", 1), ("browser-r", 2)]
    assert accepted.rejected == []


def test_the_dashboard_keeps_its_rounds_across_a_broker_restart_and_marks_any_it_missed(
    browser: Browser,
) -> None:
    job, rounds = "restart", 4
    config = RoundConfig(job=job, task="digits", rounds=rounds, plan=DIGITS.plan, codec="none",
                         min_agents=2, deadline_s=60)
    restarted = threading.Event()
    with web_broker(job) as broker, pages_server(f"ws://127.0.0.1:{broker.ws_port}", job,
                                                 "digits") as base:
        browser.open("dash", dashboard_link(base, broker, job), 1280, 800)
        with agent_fleet(broker.url, job, "digits", 2):
            coordinator = CoordinatorThread(config, broker.url).start()
            coordinator.wait_rounds(2, 120)
            browser.wait("dash", f"{ROWS} >= 2")
            broker.restart()  # retained state is gone; everyone reconnects
            restarted.set()
            browser.wait("dash", f"{DONE} && {CONNECTED}", timeout=180)
            coordinator.join(180)
        dom = rounds_in_dom(browser, "dash")
        browser.close_page("dash")
    assert restarted.is_set()
    closed = {m.round: m for m in coordinator.closed}
    assert sorted(closed) == list(range(1, rounds + 1))
    # Every round has its row. One that closed while the page was reconnecting (the broker
    # keeps only the last round's metrics) is marked as not seen; the rounds before the
    # restart, and the last, carry the coordinator's figures.
    assert [int(row["round"]) for row in dom] == list(range(rounds, 0, -1))
    for row in dom:
        m = closed[int(row["round"])]
        assert row["missed"] or row["accuracy"] == f"{m.accuracy:.4f}"
    seen = {int(row["round"]) for row in dom if not row["missed"]}
    assert {1, 2, rounds} <= seen


def test_a_browser_task_module_trains_on_the_drawings_of_the_device(browser: Browser) -> None:
    """docs/examples/web_task.js: a phone with a labelled drawing trains on it; a phone with
    none declines, saying why; a Python agent runs the matching Python task."""
    job = "drawn"
    accepted = Accepted()
    task = "docs/examples/web_task.py:TASK"
    config = RoundConfig(job=job, task=task, rounds=1, plan=get_task(task).plan, codec="none",
                         min_agents=3, deadline_s=60)
    module = Path(__file__).resolve().parents[2] / "docs" / "examples" / "web_task.js"
    with web_broker(job) as broker, pages_server(f"ws://127.0.0.1:{broker.ws_port}", job, task,
                                                 modules={"web_task": module}) as base:
        for name in ("drew", "blank"):
            link = agent_link(base, broker, job, name, "0/1", task="/tasks/web_task.js")
            browser.open(name, link, 390, 844)
        browser.wait("drew", CONNECTED)
        browser.eval("drew", DRAW_A_ONE)
        browser.wait("drew", "!document.querySelectorAll('#labels button')[1].disabled")
        browser.eval("drew", "document.querySelectorAll('#labels button')[1].click()")
        browser.wait("drew", "document.querySelector('#samples').textContent === '1'")
        with agent_fleet(broker.url, job, task, 1):
            coordinator = CoordinatorThread(config, broker.url, on_action=accepted).start()
            coordinator.join(120)
        browser.wait("blank", "document.querySelector('#updates').dataset.declined !== ''")
        declined = browser.eval("blank", "document.querySelector('#updates').dataset.declined")
        for name in ("drew", "blank"):
            browser.close_page(name)
    (m,) = coordinator.closed
    assert (m.accepted, m.declined, m.closed_by.value) == (2, 1, "all_replied")
    assert sorted(accepted.updates) == [("agent-0", 1), ("drew", 1)]
    assert declined == "no training data on this device"
