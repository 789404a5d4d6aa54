"""Who the coordinator counts: presence as trustworthy as updates, and devices that notice.

In the secure profile presence is signed with the agent's update key and bound
to the agent's session; a valid signed update establishes membership too. In
the unsigned profile a device the coordinator does not count is named in the
next announcement's roll call and announces itself again. Pure: real encoders,
a fake clock, every rejection checked for its reason.
"""

from __future__ import annotations

import numpy as np
import pytest

from coordinator import (
    Action,
    MessageRejected,
    PresenceArrived,
    Publish,
    RoundClosed,
    RoundConfig,
    RoundOpened,
    Rounds,
    UpdateAccepted,
    UpdateArrived,
)
from edge_agent.agent import AgentCore, Connected, ModelArrived, Train, TrainingDone
from edge_agent.trainer import TrainResult
from protocol import (
    Presence,
    RejectReason,
    TopicKind,
    TrainPlan,
    decode_model,
    encode_presence,
    parse_topic,
)
from protocol.keys import SigningKey
from protocol.signing import Purpose, seal
from tests.helpers import Fleet

COORDINATOR = SigningKey.from_seed(b"c" * 32)
AGENT_KEYS = {"a1": SigningKey.from_seed(b"1" * 32), "a2": SigningKey.from_seed(b"2" * 32)}
WEIGHTS = {"w": np.arange(12, dtype=np.float32).reshape(3, 4) / 12, "b": np.zeros(4, np.float32)}


def secure_config(**overrides: object) -> RoundConfig:
    settings: dict[str, object] = {
        "job": "j", "task": "t", "rounds": 3, "min_agents": 2, "plan": TrainPlan(),
        "evaluate": False, "signing_key": COORDINATOR,
        "agent_keys": {a: k.public for a, k in AGENT_KEYS.items()},
    }
    settings.update(overrides)
    return RoundConfig(**settings)  # type: ignore[arg-type]


def offline(agent: str) -> bytes:
    """What anyone holding only the device's MQTT password can publish as its presence."""
    return encode_presence(Presence(agent=agent, online=False))


def device(agent: str, session: str = "s1") -> AgentCore:
    return AgentCore("j", agent, samples=10, trainer="fake", signing_key=AGENT_KEYS[agent],
                     coordinator_key=COORDINATOR.public, session=session)


def presence_of(core: AgentCore) -> bytes:
    (publish,) = [a for a in core.handle(Connected()) if isinstance(a, Publish)]
    return publish.payload


class Secure:
    """A secure round machine and its two devices; models are delivered by hand."""

    def __init__(self, config: RoundConfig | None = None,
                 announced: tuple[str, ...] = tuple(AGENT_KEYS)) -> None:
        self.rounds = Rounds(config or secure_config(), WEIGHTS, run="run1")
        self.devices = {a: device(a) for a in AGENT_KEYS}
        self.models: list[bytes] = []
        self.now = 0.0
        for agent in announced:
            self.feed(PresenceArrived(agent, presence_of(self.devices[agent])))

    def feed(self, event: PresenceArrived | UpdateArrived) -> list[Action]:
        self.now += 1.0
        actions = self.rounds.handle(event, self.now)
        self.models += [a.payload for a in actions if isinstance(a, Publish)
                        and parse_topic(a.topic).kind is TopicKind.MODEL]
        return actions

    def answer(self, agent: str) -> list[Action]:
        """``agent`` trains on the latest model and its signed update is delivered."""
        core = self.devices[agent]
        trains = [a for a in core.handle(ModelArrived(self.models[-1])) if isinstance(a, Train)]
        assert trains, f"{agent} was not asked to train"
        local = {n: w + 0.5 for n, w in trains[0].model.weights.items()}
        result = TrainResult(local, 10, {"loss": 1.0})
        (update,) = [a for a in core.handle(TrainingDone(trains[0].key, result, 0.1))
                     if isinstance(a, Publish)]
        return self.feed(UpdateArrived(agent, update.payload))


def rejection(actions: list[Action]) -> RejectReason:
    (reject,) = [a for a in actions if isinstance(a, MessageRejected)]
    return reject.reason


def accepted(actions: list[Action]) -> list[str]:
    return [a.agent for a in actions if isinstance(a, UpdateAccepted)]


# --- the secure profile -----------------------------------------------------------------


def test_a_forged_offline_from_the_devices_password_alone_changes_nothing() -> None:
    fleet = Secure()
    assert fleet.rounds.agents_online == {"a1", "a2"}

    assert rejection(fleet.feed(PresenceArrived("a1", offline("a1")))) is RejectReason.UNSIGNED
    assert rejection(fleet.feed(PresenceArrived("a1", b""))) is RejectReason.UNSIGNED

    assert fleet.rounds.agents_online == {"a1", "a2"}
    assert accepted(fleet.answer("a1")) == ["a1"]
    closing = fleet.answer("a2")
    assert [a for a in closing if isinstance(a, RoundClosed)]
    (opened,) = [a for a in closing if isinstance(a, RoundOpened)]
    assert opened.round_no == 2 and opened.cohort_size == 2  # a1 is still asked
    assert accepted(fleet.answer("a1")) == ["a1"]


@pytest.mark.parametrize(
    ("signer", "key", "reason"),
    [("a1", AGENT_KEYS["a2"], RejectReason.BAD_SIGNATURE),
     ("a2", AGENT_KEYS["a2"], RejectReason.AGENT_MISMATCH),
     ("a3", SigningKey.from_seed(b"3" * 32), RejectReason.UNKNOWN_AGENT)],
)
def test_a_presence_signed_by_anyone_but_the_agent_is_refused(
    signer: str, key: SigningKey, reason: RejectReason
) -> None:
    fleet = Secure()
    topic_agent = "a3" if signer == "a3" else "a1"
    forged = seal(offline(topic_agent), Purpose.PRESENCE, job="j", run="s1", signer=signer,
                  key=key)
    assert rejection(fleet.feed(PresenceArrived(topic_agent, forged))) is reason
    assert fleet.rounds.agents_online == {"a1", "a2"}


def test_the_devices_signed_last_will_takes_it_offline() -> None:
    fleet = Secure()
    will = fleet.devices["a1"].will()
    actions = fleet.feed(PresenceArrived("a1", will.payload))
    assert not [a for a in actions if isinstance(a, MessageRejected)]
    assert fleet.rounds.agents_online == {"a2"}


def test_an_offline_from_an_earlier_session_is_stale_and_changes_nothing() -> None:
    fleet = Secure()
    first = fleet.devices["a1"]
    restarted = device("a1", session="s2")  # the device restarted: a new session
    fleet.feed(PresenceArrived("a1", presence_of(restarted)))
    # The broker publishes the first process's will late, or someone replays it.
    assert rejection(fleet.feed(PresenceArrived("a1", first.will().payload))) is RejectReason.STALE
    assert "a1" in fleet.rounds.agents_online
    fleet.feed(PresenceArrived("a1", restarted.will().payload))
    assert "a1" not in fleet.rounds.agents_online


def test_a_valid_signed_update_makes_its_agent_a_member() -> None:
    # a1's presence never arrived (lost, or held back by someone); its signed update does.
    fleet = Secure(secure_config(min_agents=1, quorum=2), announced=("a2",))
    assert fleet.rounds.agents_online == {"a2"}
    assert accepted(fleet.answer("a1")) == ["a1"]
    assert fleet.rounds.agents_online == {"a1", "a2"}


# --- the unsigned profile: the roll call ----------------------------------------------------


def test_a_device_the_coordinator_stopped_counting_is_named_and_announces_itself_again() -> None:
    config = RoundConfig(job="job1", task="linreg", rounds=4, min_agents=3, evaluate=False)
    fleet = Fleet(3, config)
    forged = encode_presence(Presence(agent="a1", online=False))

    def forge_once(f: Fleet, action: Action) -> None:
        if isinstance(action, UpdateAccepted) and action.agent == "a1" and action.round_no == 1:
            f.send(PresenceArrived("a1", forged))  # an anonymous client's retained offline

    fleet.on_action = forge_once
    fleet.start()
    fleet.run_to_end()

    by_round = {r: [a.agent for a in fleet.of_type(UpdateAccepted) if a.round_no == r]
                for r in range(1, 5)}
    refused = [a for a in fleet.rejections() if a.agent == "a1"]
    assert [r.reason for r in refused] == [RejectReason.UNKNOWN_AGENT]  # round 2 only
    assert "a1" not in by_round[2]
    announcements = [decode_model(p.payload) for p in fleet.of_type(Publish)
                     if parse_topic(p.topic).kind is TopicKind.MODEL]
    assert [m.round for m in announcements if "a1" in m.roll_call] == [3]
    assert "a1" in by_round[3] and "a1" in by_round[4]
    assert [h.accepted for h in fleet.history] == [3, 2, 2, 3]
