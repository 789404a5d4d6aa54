"""Who is online, and how often the coordinator says so: the roll call, live presence only,
and a status paced however many updates arrive (pure: the round machine on a fake clock)."""

from __future__ import annotations

from typing import Any

from coordinator import BrokerConnected, PresenceArrived, RoundConfig, Rounds, Tick, UpdateArrived
from edge_agent.agent import AgentCore, RollCalled
from protocol import (
    Presence,
    Publish,
    RollCall,
    TopicKind,
    decode_presence,
    decode_rollcall,
    decode_status,
    encode_presence,
    encode_rollcall,
    parse_topic,
)
from tests.helpers import copy_weights, initial_weights, small_update

JOB = "job1"
W0 = initial_weights()


def config(**overrides: Any) -> RoundConfig:
    settings: dict[str, Any] = {"job": JOB, "task": "linreg", "rounds": 3, "deadline_s": 30.0,
                                "evaluate": False}
    settings.update(overrides)
    return RoundConfig(**settings)


def presence(agent: str, online: bool = True) -> bytes:
    return encode_presence(Presence(agent, online, samples=10))


def of_kind(actions: list[Any], kind: TopicKind) -> list[Publish]:
    return [a for a in actions if isinstance(a, Publish) and parse_topic(a.topic).kind is kind]


def test_every_connect_calls_the_roll_not_retained() -> None:
    rounds = Rounds(config(), copy_weights(W0), run="r1")
    for now in (0.0, 5.0):  # the first connect and a reconnect
        (call,) = of_kind(rounds.handle(BrokerConnected(), now), TopicKind.ROLLCALL)
        assert not call.retain and call.topic == "fedmq/v1/job1/rollcall"
        assert decode_rollcall(call.payload) == RollCall(job=JOB, run="r1", at=now)


def test_a_retained_presence_counts_for_nothing_a_live_one_does() -> None:
    # A broker's memory of an agent (possibly stale: NATS kept 500-700 agents "online"
    # after they exited) is not proof that it is there; its answer to the roll call is.
    rounds = Rounds(config(min_agents=1), copy_weights(W0), run="r1")
    assert rounds.handle(PresenceArrived("ghost", presence("ghost"), retained=True), 0.0) == []
    assert rounds.agents_online == frozenset() and rounds.phase.value == "waiting"
    rounds.handle(PresenceArrived("a0", presence("a0")), 0.0)
    assert rounds.agents_online == {"a0"} and rounds.phase.value == "training"


def test_an_agent_answers_the_roll_call_with_a_live_presence() -> None:
    core = AgentCore(JOB, "pi-07", samples=12, trainer="numpy", device="rpi4")
    call = encode_rollcall(RollCall(job=JOB, run="r1", at=1.0))
    (answer,) = core.handle(RollCalled(call), 0.0, wall=2.0)
    assert isinstance(answer, Publish) and not answer.retain
    assert answer.topic == "fedmq/v1/job1/agents/pi-07"
    assert decode_presence(answer.payload) == Presence("pi-07", True, samples=12,
                                                       device="rpi4", trainer="numpy", at=2.0,
                                                       kind="python", deltas=True)
    (refused,) = core.handle(RollCalled(b"{not json"), 0.0)
    assert type(refused).__name__ == "ModelRejected"  # logged; no model was refused


def test_the_status_is_paced_however_many_updates_arrive() -> None:
    agents = [f"a{k}" for k in range(1000)]
    rounds = Rounds(config(min_agents=len(agents), status_interval_s=0.5), copy_weights(W0),
                    run="r1")
    actions: list[Any] = []
    for agent in agents:  # 1000 presences at t=0: the first one's status, then the opening's
        actions += rounds.handle(PresenceArrived(agent, presence(agent)), 0.0)
    assert [decode_status(p.payload).phase.value for p in of_kind(actions, TopicKind.STATUS)] == [
        "waiting", "training"
    ]
    sent = []
    for k, agent in enumerate(agents[:999]):  # 999 updates over 1 s
        now = 0.001 * (k + 1)
        out = rounds.handle(UpdateArrived(agent, small_update(rounds, agent)), now)
        if (deadline := rounds.next_deadline()) is not None and now >= deadline:
            out += rounds.handle(Tick(), now)
        sent += [decode_status(p.payload) for p in of_kind(out, TopicKind.STATUS)]
    assert 1 <= len(sent) <= 3  # at 0.5 s and 1.0 s: not 999
    # A change held back is never lost: it is due at the end of the interval.
    due = rounds.next_deadline()
    assert due is not None and due <= 1.5
    (last,) = of_kind(rounds.handle(Tick(), due), TopicKind.STATUS)
    assert decode_status(last.payload).accepted == 999
    # A phase change goes out at once: the last update closes the round.
    out = rounds.handle(UpdateArrived(agents[-1], small_update(rounds, agents[-1])), due + 0.01)
    statuses = [decode_status(p.payload) for p in of_kind(out, TopicKind.STATUS)]
    assert statuses and statuses[-1].round == 2


def test_after_a_reconnect_the_next_round_waits_for_min_agents_to_announce_again() -> None:
    # A broker shutting down sends every agent's last will: the coordinator hears "offline"
    # from agents that come back a moment later. The round in progress goes on; the next
    # one waits, as after a resume, until --min-agents have announced themselves again.
    agents = ("a0", "a1", "a2")
    rounds = Rounds(config(min_agents=3), copy_weights(W0), run="r1")
    rounds.handle(BrokerConnected(), 0.0)
    for agent in agents:
        rounds.handle(PresenceArrived(agent, presence(agent)), 0.0)
    assert (rounds.phase.value, rounds.completed_rounds) == ("training", 0)
    rounds.handle(UpdateArrived("a0", small_update(rounds, "a0")), 1.0)
    for agent in agents:  # the broker goes down: wills, then the coordinator reconnects
        rounds.handle(PresenceArrived(agent, presence(agent, online=False)), 2.0)
    rounds.handle(BrokerConnected(), 3.0)
    rounds.handle(PresenceArrived("a1", presence("a1")), 3.1)
    rounds.handle(UpdateArrived("a1", small_update(rounds, "a1")), 3.2)
    closing = rounds.handle(UpdateArrived("a2", small_update(rounds, "a2")), 3.3)
    assert rounds.completed_rounds == 1 and rounds.phase.value == "waiting"
    assert decode_status(of_kind(closing, TopicKind.STATUS)[-1].payload).phase.value == "waiting"
    assert not of_kind(closing, TopicKind.MODEL)  # no round 2 announced to two agents
    rounds.handle(PresenceArrived("a0", presence("a0")), 4.0)  # the slowest comes back
    assert rounds.phase.value == "training"
    assert rounds.agents_online == set(agents)


def test_without_a_reconnect_a_round_opens_with_whoever_is_online() -> None:
    rounds = Rounds(config(min_agents=2), copy_weights(W0), run="r1")
    rounds.handle(BrokerConnected(), 0.0)
    for agent in ("a0", "a1"):
        rounds.handle(PresenceArrived(agent, presence(agent)), 0.0)
    rounds.handle(UpdateArrived("a0", small_update(rounds, "a0")), 1.0)
    rounds.handle(PresenceArrived("a0", presence("a0", online=False)), 1.5)  # a0 really leaves
    rounds.handle(UpdateArrived("a1", small_update(rounds, "a1")), 2.0)
    assert rounds.completed_rounds == 1 and rounds.phase.value == "training"
