"""A real agent process under a cgroup memory limit: what would not fit is declined, not
attempted (no OOM kill, no half-sent update); once memory is there, it trains."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from harness import TIMEOUT_S, CoordinatorThread, TopicWatcher, wait_process
from needs import require_cgroups

from coordinator import RoundConfig
from edge_agent.policy import MIB, MIN_ROUND_NEED
from fedmq.broker import LocalBroker
from fedmq.tasks import get_task
from fedmq_tools.bench.limits import Cgroup
from protocol import Phase, decode_presence, decode_update

pytestmark = pytest.mark.integration

ROOMY = 1024 * MIB


#: a round whose only agent declined waits for its deadline (min_replies is 1), then stops
SHORT_DEADLINE_S = 2.0


def one_round(job: str, url: str, deadline_s: float) -> CoordinatorThread:
    config = RoundConfig(job=job, task="mlp", rounds=1, plan=get_task("mlp").plan,
                         deadline_s=deadline_s, on_short_round="stop", evaluate=False)
    coord = CoordinatorThread(config, url).start()
    coord.join(TIMEOUT_S)
    return coord


def test_a_round_that_would_not_fit_the_cgroup_is_declined_then_trained_once_it_fits(
    broker: LocalBroker, tmp_path: Path
) -> None:
    require_cgroups()
    job = "cgroup-limit"
    watcher = TopicWatcher(broker.url, job)
    group = Cgroup(f"fedmq-test-{os.getpid()}", ROOMY, cpus=1.0)
    agent = [sys.executable, "-m", "fedmq", "--log-level", "INFO", "agent", "--broker",
             broker.url, "--job", job, "--task", "mlp", "--shard", "0/1", "--agent-id", "cg-0",
             "--trainer", "numpy"]
    log = tmp_path / "agent.log"
    proc = subprocess.Popen(group.wrap(agent), stdout=log.open("wb"), stderr=subprocess.STDOUT)
    try:
        watcher.wait_for(lambda: any(decode_presence(p).online
                                     for p in watcher.on("/agents/cg-0") if p))
        # leave the agent less than a round's need (MIN_ROUND_NEED for this small MLP)
        used = int((group.memory / "memory.usage_in_bytes").read_text())
        (group.memory / "memory.limit_in_bytes").write_text(str(used + 4 * MIB))

        short = one_round(job, broker.url, SHORT_DEADLINE_S)
        assert short.node.rounds.phase is Phase.FAILED  # the only agent declined
        [decline] = [decode_update(p) for p in watcher.on("/update/cg-0")]
        assert decline.tensors == () and decline.declined is not None
        assert f"needs about {MIN_ROUND_NEED // MIB} MiB more memory" in decline.declined
        assert "MiB limit" in decline.declined
        assert proc.poll() is None, log.read_text()  # alive: declined, not OOM-killed

        (group.memory / "memory.limit_in_bytes").write_text(str(ROOMY))
        fits = one_round(job, broker.url, TIMEOUT_S * 10)  # closes when it replies
        assert fits.node.rounds.phase is Phase.DONE
        assert (fits.closed[0].accepted, fits.closed[0].declined) == (1, 0)
        assert "oom_kill 0" in (group.memory / "memory.oom_control").read_text()
    finally:
        proc.terminate()
        code = wait_process(proc)
        group.close()
        watcher.close()
    assert code == 0, log.read_text()
