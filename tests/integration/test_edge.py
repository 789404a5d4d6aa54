"""Edge deployment over a real Mosquitto: config-file agents, vetoes, SIGTERM, mixed trainers."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from harness import TIMEOUT_S, CoordinatorThread, TopicWatcher, wait_process

from coordinator import RoundConfig
from edge_agent.mqtt import AgentNode, run_fleet
from edge_agent.policy import MIB, ResourcePolicy, read_memory
from edge_agent.state import MODEL_NAME, StateDir
from fedmq.broker import LocalBroker
from fedmq.launch import AgentSettings, Connection, build_agent
from fedmq.tasks import DataConfig, get_task
from protocol import ClosedBy, Phase, Topics, decode_presence, decode_update
from transport.connection import BrokerURL

pytestmark = pytest.mark.integration

#: far beyond the test's own timeouts: a round closing at all proves it did not wait for it
LONG_DEADLINE_S = 600.0


def config(job: str, task: str, **overrides: object) -> RoundConfig:
    settings: dict[str, object] = {"job": job, "task": task, "rounds": 2,
                                   "plan": get_task(task).plan, "deadline_s": LONG_DEADLINE_S}
    settings.update(overrides)
    return RoundConfig(**settings)  # type: ignore[arg-type]


def fleet(url: str, job: str, task: str, specs: list[dict[str, object]]) -> list[AgentNode]:
    """One in-process agent per spec (AgentSettings overrides), shard i of len(specs)."""
    conn = Connection(BrokerURL.parse(url))
    return [
        build_agent(
            AgentSettings(job=job, task=task, agent_id=f"agent-{i}", shard=i,
                          num_shards=len(specs), data=DataConfig(), threads=1,
                          **spec),  # type: ignore[arg-type]
            conn,
        )
        for i, spec in enumerate(specs)
    ]


def stop_fleet(nodes: list[AgentNode], threads: list[threading.Thread]) -> None:
    for node in nodes:
        node.stop()
    for thread in threads:
        thread.join(10)


def test_a_vetoed_round_is_declined_and_closes_without_waiting(
    broker: LocalBroker, tmp_path: Path
) -> None:
    hooks = tmp_path / "hooks.py"
    hooks.write_text("def on_battery(job, agent, round):\n    return 'on battery'\n")
    job = "edge-veto"
    watcher = TopicWatcher(broker.url, job)
    coord = CoordinatorThread(config(job, "linreg", min_agents=3), broker.url)
    nodes = fleet(broker.url, job, "linreg", [
        {"trainer": "numpy"},
        {"trainer": "numpy"},
        {"trainer": "numpy", "policy": ResourcePolicy(hook=f"{hooks}:on_battery")},
    ])
    threads = run_fleet(nodes)
    try:
        coord.start().join(TIMEOUT_S)  # raises if the rounds waited for their deadline
    finally:
        stop_fleet(nodes, threads)
    assert coord.node.rounds.phase is Phase.DONE
    metrics = watcher.metrics()
    assert [m.round for m in metrics] == [1, 2]
    for m in metrics:
        assert (m.accepted, m.declined, m.closed_by) == (2, 1, ClosedBy.ALL_REPLIED)
        assert m.duration_s < TIMEOUT_S < LONG_DEADLINE_S
    declines = [decode_update(p) for p in watcher.on("/update/agent-2")]
    assert len(declines) == 2
    for u in declines:
        assert u.declined == f"vetoed: hook '{hooks}:on_battery': on battery"
    assert nodes[2].rounds_trained == 0 and nodes[0].rounds_trained == 2
    watcher.close()


def test_a_round_that_would_not_fit_under_the_memory_ceiling_is_declined_not_attempted(
    broker: LocalBroker,
) -> None:
    # This process's RSS is the agent's (in-process agents): a ceiling 24 MiB above it
    # cannot hold a round's estimated need (MIN_ROUND_NEED, 32 MiB), so the agent must
    # decline before training, with the reason, while the other agent trains.
    job = "edge-no-fit"
    watcher = TopicWatcher(broker.url, job)
    coord = CoordinatorThread(config(job, "linreg", min_agents=2, rounds=1), broker.url)
    fleet(broker.url, job, "linreg", [{"trainer": "numpy"}] * 2)  # loads what agents load
    rss = read_memory().rss_bytes
    assert rss is not None
    ceiling_mb = round(rss / MIB + 24)
    nodes = fleet(broker.url, job, "linreg", [
        {"trainer": "numpy"},
        {"trainer": "numpy", "policy": ResourcePolicy(max_rss_mb=ceiling_mb)},
    ])
    threads = run_fleet(nodes)
    try:
        coord.start().join(TIMEOUT_S)
    finally:
        stop_fleet(nodes, threads)
    [metrics] = watcher.metrics()
    assert (metrics.accepted, metrics.declined, metrics.closed_by) == (1, 1, ClosedBy.ALL_REPLIED)
    [decline] = [decode_update(p) for p in watcher.on("/update/agent-1")]
    assert decline.declined is not None and decline.tensors == ()
    assert decline.declined.startswith("vetoed: the round would take resident memory from")
    assert f"over the {ceiling_mb:g} MiB ceiling" in decline.declined
    assert nodes[1].rounds_trained == 0 and nodes[0].rounds_trained == 1
    watcher.close()


def test_a_mixed_fleet_of_numpy_and_torch_agents_trains_one_mlp_job(
    broker: LocalBroker,
) -> None:
    job = "edge-mixed"
    watcher = TopicWatcher(broker.url, job)
    coord = CoordinatorThread(
        config(job, "digits", rounds=4, min_agents=4, deadline_s=60.0), broker.url
    )
    nodes = fleet(broker.url, job, "digits", [{"trainer": "numpy"}, {"trainer": "torch"},
                                              {"trainer": "numpy"}, {"trainer": "torch"}])
    threads = run_fleet(nodes)
    try:
        coord.start().join(TIMEOUT_S)
    finally:
        stop_fleet(nodes, threads)
    metrics = watcher.metrics()
    assert [m.round for m in metrics] == [1, 2, 3, 4]
    assert all(m.accepted == 4 and not m.rejected for m in metrics)
    accuracy = [m.accuracy for m in metrics]
    assert all(a is not None for a in accuracy)
    assert accuracy[-1] > accuracy[0] and accuracy[-1] >= 0.85, accuracy  # type: ignore[operator]
    presences = [decode_presence(p) for t, p, _ in watcher.messages if "/agents/" in t]
    trainers = {p.agent: p.trainer for p in presences if p.online}
    assert trainers == {"agent-0": "numpy", "agent-1": "torch", "agent-2": "numpy",
                        "agent-3": "torch"}
    watcher.close()


SLOW_HOOK = """
import sys, time
def block(**context):
    print("HOOK RUNNING round", context["round"], file=sys.stderr, flush=True)
    time.sleep(120)  # the device is busy: the round is in progress when SIGTERM comes
"""


def _read_until(stream: object, marker: str, lines: list[str], timeout: float) -> bool:
    """Collect ``stream``'s lines on a thread; True once one contains ``marker``."""
    seen = threading.Event()

    def pump() -> None:
        for line in stream:  # type: ignore[attr-defined]
            lines.append(line)
            if marker in line:
                seen.set()

    threading.Thread(target=pump, daemon=True).start()
    return seen.wait(timeout)


@pytest.mark.parametrize("trainer", ["numpy", "torch"])
def test_sigterm_mid_round_declines_goes_offline_and_keeps_the_state_dir(
    broker: LocalBroker, tmp_path: Path, trainer: str
) -> None:
    job = f"edge-sigterm-{trainer}"
    (tmp_path / "hooks.py").write_text(SLOW_HOOK)
    (tmp_path / "agent.toml").write_text(
        f'broker = "{broker.url}"\njob = "{job}"\ntask = "linreg"\nagent_id = "pi-1"\n'
        f'shard = "1/4"\ntrainer = "{trainer}"\nstate_dir = "state"\nlog_level = "INFO"\n'
        '[policy]\nhook = "hooks.py:block"\n'
    )
    watcher = TopicWatcher(broker.url, job)
    coord = CoordinatorThread(config(job, "linreg", min_agents=1, rounds=1), broker.url)
    coord.start()
    proc = subprocess.Popen([sys.executable, "-m", "fedmq", "agent", "--config",
                             str(tmp_path / "agent.toml")],
                            stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    lines: list[str] = []
    try:
        assert _read_until(proc.stderr, "HOOK RUNNING round 1", lines, TIMEOUT_S), lines
        proc.send_signal(signal.SIGTERM)
        assert wait_process(proc, timeout=30) == 0, lines  # type: ignore[arg-type]
    finally:
        if proc.poll() is None:
            proc.kill()
        coord.node.stop("test over")
        coord.thread.join(10)
    log = "".join(lines)
    assert "SIGTERM received" in log and "mid-round 1: abandoned, declined" in log, log
    presence_topic = Topics(job).presence("pi-1")
    watcher.wait_for(lambda: any(t == presence_topic and not decode_presence(p).online
                                 for t, p, _ in watcher.messages))
    # the last word on the presence topic is offline, and retained for newcomers
    late = TopicWatcher(broker.url, job)
    late.wait_for(lambda: bool(late.on("/agents/pi-1")))
    assert not decode_presence(late.on("/agents/pi-1")[-1]).online
    declines = [decode_update(p) for p in watcher.on("/update/pi-1")]
    assert [u.declined for u in declines] == ["agent shutting down"]
    # the state dir holds round 1's global model, whole, and nothing half-written
    state_files = sorted(p.name for p in (tmp_path / "state" / "pi-1").iterdir())
    assert state_files == [MODEL_NAME], state_files
    saved = StateDir(tmp_path / "state", "pi-1").load_model()
    assert saved is not None and (saved.job, saved.round) == (job, 1)
    late.close()
    watcher.close()


TORCH_FREE_RUN = """
import sys
from fedmq.entry import main
code = main(sys.argv[1:])
leaked = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "coordinator"))
print("LEAKED", leaked)
sys.exit(code)
"""


def test_a_numpy_agent_from_a_config_file_never_loads_torch(
    broker: LocalBroker, tmp_path: Path
) -> None:
    job = "edge-torch-free"
    (tmp_path / "agent.toml").write_text(
        f'broker = "{broker.url}"\njob = "{job}"\ntask = "mlp"\nagent_id = "zero-1"\n'
        'shard = "0/2"\ntrainer = "numpy"\nstate_dir = "state"\nexit_when_done = true\n'
    )
    coord = CoordinatorThread(config(job, "mlp", min_agents=1, rounds=2), broker.url)
    coord.start()
    proc = subprocess.Popen(
        [sys.executable, "-c", TORCH_FREE_RUN, "agent", "--config", str(tmp_path / "agent.toml")],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        out, _ = proc.communicate(timeout=TIMEOUT_S)
    finally:
        if proc.poll() is None:
            proc.kill()
    coord.join()
    assert proc.returncode == 0, out
    assert "LEAKED []" in out, out
    assert coord.node.rounds.phase is Phase.DONE
    saved = StateDir(tmp_path / "state", "zero-1").load_model()
    assert saved is not None and saved.done and saved.round == 2
