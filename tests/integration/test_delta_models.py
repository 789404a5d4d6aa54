"""Delta-coded models over a real Mosquitto (docs/PROTOCOL.md §15): agents that join late
and agents that restart mid-run from their state directory.

Three agents start with the run; a fourth joins once round 2 has closed and fetches the
whole model once; one of the first three is stopped after round 3 and started again from
its state directory, and goes on with deltas without fetching the whole model. Every
model any agent trained on hashed to its announced id, and the run ends with every agent
in every round it was online for.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest
from harness import TIMEOUT_S, CoordinatorThread, TopicWatcher

from coordinator import Action, RoundClosed, RoundConfig
from edge_agent.agent import AgentAction, Subscribe, Train, Unsubscribe
from edge_agent.mqtt import AgentNode, run_fleet
from fedmq.broker import LocalBroker
from fedmq.launch import AgentSettings, Connection, build_agent
from fedmq.tasks import get_task
from protocol import Phase, Topics, decode_model_delta, weights_digest
from transport.connection import BrokerURL

pytestmark = pytest.mark.integration

JOB = "delta-models"
ROUNDS = 6


class Agent:
    """One in-process agent with a state directory; every action it took, kept."""

    def __init__(self, url: str, index: int, state: Path) -> None:
        self.actions: list[AgentAction] = []
        settings = AgentSettings(job=JOB, task="digits", agent_id=f"agent-{index}", shard=index,
                                 num_shards=4, threads=1, state_dir=state)
        self.node: AgentNode = build_agent(settings, Connection(BrokerURL.parse(url)),
                                           on_action=self.actions.append)
        (self.thread,) = run_fleet([self.node])

    def stop(self) -> None:
        self.node.stop()
        self.thread.join(10)
        assert not self.thread.is_alive()

    def of(self, kind: Any) -> list[AgentAction]:
        return [a for a in self.actions if isinstance(a, kind)]

    def trains(self) -> list[Train]:
        return [a for a in self.actions if isinstance(a, Train)]


def test_late_and_restarted_agents_follow_the_deltas(broker: LocalBroker, tmp_path: Path) -> None:
    state = tmp_path / "state"
    watcher = TopicWatcher(broker.url, JOB)
    agents: dict[str, Agent] = {}
    restarted: list[Agent] = []
    events = {2: threading.Event(), 3: threading.Event()}

    def on_action(action: Action) -> None:
        if isinstance(action, RoundClosed) and action.metrics.round in events:
            events[action.metrics.round].set()

    config = RoundConfig(job=JOB, task="digits", rounds=ROUNDS, plan=get_task("digits").plan,
                         codec="int8+zstd", downlink_delta="qsgd:2+zstd:9", deadline_s=30.0,
                         min_agents=3)
    coord = CoordinatorThread(config, broker.url, tmp_path / "run", on_action=on_action)
    for i in range(3):
        agents[f"agent-{i}"] = Agent(broker.url, i, state)
    coord.start()
    try:
        assert events[2].wait(TIMEOUT_S)
        agents["agent-3"] = Agent(broker.url, 3, state)  # a newcomer, mid-run
        assert events[3].wait(TIMEOUT_S)
        agents["agent-1"].stop()  # the process restarts, with its state directory
        restarted.append(Agent(broker.url, 1, state))
        coord.join(timeout=120)
    finally:
        for agent in [*agents.values(), *restarted]:
            agent.stop()
    assert coord.node.rounds.phase is Phase.DONE
    closed = coord.closed
    assert [m.round for m in closed] == list(range(1, ROUNDS + 1))
    assert closed[-1].accepted == 4  # the newcomer and the restarted agent took part

    family = Topics(JOB).model_family
    everyone = [*agents.values(), *restarted]
    for agent in everyone:  # never trained on a model whose digest it had not checked
        for train in agent.trains():
            assert weights_digest(train.model.weights) == train.model.model_id
    # the first three and the newcomer fetched the whole model once, then took deltas
    for agent in agents.values():
        assert agent.of(Subscribe | Unsubscribe) == [Unsubscribe(family)]
    # the restarted agent continued from its state directory: no whole model at all
    (again,) = restarted
    assert again.of(Subscribe) == [] and again.of(Unsubscribe) == []
    assert again.trains() and all(t.model.round >= 4 for t in again.trains())

    # from round 2 on, what went down per agent was mostly a delta, far below the whole model
    # (the coordinator counts the whole model for an agent whose last answer it refused)
    first = closed[0].bytes_down / closed[0].addressed
    later = sum(m.bytes_down for m in closed[1:]) / sum(m.addressed or 0 for m in closed[1:])
    assert later < first / 4
    # the broker still holds the last delta (for agents that come back) and the whole model
    delta = decode_model_delta(watcher.on(f"{JOB}/delta")[-1])
    assert delta.done and delta.base_id is not None
    watcher.close()
