"""The agent's side of membership: signed presence, the roll call, and implausible models.

Pure: an agent core, real encoders, no broker and no clock.
"""

from __future__ import annotations

import numpy as np
import pytest

from edge_agent.agent import (
    AgentCore,
    Connected,
    MessagesLost,
    ModelArrived,
    ModelRejected,
    ShutdownRequested,
    Train,
    TrainingDone,
)
from edge_agent.trainer import TrainResult
from protocol import (
    ModelAnnouncement,
    Publish,
    RejectReason,
    TopicKind,
    TrainPlan,
    decode_presence,
    encode_model,
    parse_topic,
    weights_digest,
)
from protocol.keys import SigningKey
from protocol.signing import COORDINATOR_SIGNER, Purpose, decode_signed, seal

JOB, AGENT = "j", "a1"
KEY = SigningKey.from_seed(b"1" * 32)
COORDINATOR = SigningKey.from_seed(b"c" * 32)
W0 = {"w": np.zeros((2, 2), np.float32), "b": np.zeros(2, np.float32)}


def announce(round_no: int, *, run: str = "run1", roll_call: tuple[str, ...] = (),
             done: bool = False) -> bytes:
    w = {n: a + np.float32(round_no) for n, a in W0.items()}
    return encode_model(ModelAnnouncement(
        job=JOB, run=run, round=round_no, model_id=weights_digest(w), task="t",
        plan=TrainPlan(), codec="none", deadline_s=30.0, weights=w, roll_call=roll_call,
        done=done, issued_at=1000.0 + round_no))


def trains(actions: list[object]) -> list[int]:
    return [a.model.round for a in actions if isinstance(a, Train)]


def answer(core: AgentCore, actions: list[object]) -> None:
    """Finish the training ``actions`` asked for, so the core is free for the next model."""
    for train in (a for a in actions if isinstance(a, Train)):
        core.handle(TrainingDone(train.key, TrainResult(dict(train.model.weights), 5), 0.0))


def presences(actions: list[object]) -> list[Publish]:
    return [a for a in actions if isinstance(a, Publish)
            and parse_topic(a.topic).kind is TopicKind.AGENTS]


# --- signed presence ------------------------------------------------------------------------


def test_with_a_signing_key_every_presence_is_signed_for_the_agents_session() -> None:
    core = AgentCore(JOB, AGENT, samples=5, trainer="t", signing_key=KEY, session="p42")
    for publish in (core.will(), *presences(core.handle(Connected())),
                    *presences(core.handle(ShutdownRequested()))):
        envelope = decode_signed(publish.payload, 65536)
        assert (envelope.purpose, envelope.job, envelope.run, envelope.signer) == (
            Purpose.PRESENCE, JOB, "p42", AGENT)
        assert KEY.public.verify(envelope.sig, envelope.signed_bytes())
        assert decode_presence(envelope.body).agent == AGENT
        assert publish.retain


def test_without_a_key_presence_stays_the_plain_json_document() -> None:
    core = AgentCore(JOB, AGENT, samples=5, trainer="t")
    (online,) = presences(core.handle(Connected()))
    assert decode_presence(online.payload).online


# --- the roll call ---------------------------------------------------------------------------


def test_an_agent_named_in_the_roll_call_announces_itself_before_it_trains() -> None:
    core = AgentCore(JOB, AGENT, samples=5, trainer="t")
    core.handle(Connected())
    actions = core.handle(ModelArrived(announce(1, roll_call=("a0", AGENT))), wall=5.0)
    (again,) = presences(actions)
    assert decode_presence(again.payload).online and decode_presence(again.payload).at == 5.0
    assert actions.index(again) < next(i for i, a in enumerate(actions) if isinstance(a, Train))


def test_an_agent_not_named_in_the_roll_call_says_nothing() -> None:
    core = AgentCore(JOB, AGENT, samples=5, trainer="t")
    core.handle(Connected())
    assert not presences(core.handle(ModelArrived(announce(1, roll_call=("a0",)))))


# --- implausible unsigned models -------------------------------------------------------------


def connected_at_round(round_no: int, key: SigningKey | None = None) -> AgentCore:
    core = AgentCore(JOB, AGENT, samples=5, trainer="t",
                     coordinator_key=key.public if key is not None else None)
    core.handle(Connected())
    payload = announce(round_no)
    if key is not None:
        payload = seal(payload, Purpose.MODEL, job=JOB, run="run1", signer=COORDINATOR_SIGNER,
                       key=key)
    answer(core, core.handle(ModelArrived(payload)))
    return core


@pytest.mark.parametrize(("run", "round_no"), [("run1", 10**6), ("run1", 5), ("run2", 7)])
def test_a_connected_agent_refuses_an_unsigned_model_that_jumps_ahead(
    run: str, round_no: int
) -> None:
    core = connected_at_round(3)
    (refused,) = core.handle(ModelArrived(announce(round_no, run=run)))
    assert isinstance(refused, ModelRejected) and refused.reason is RejectReason.FUTURE_ROUND
    # ... so the genuine next round is not taken for a late delivery: the fleet goes on
    assert trains(core.handle(ModelArrived(announce(4)))) == [4]
    assert core.models_rejected == 1


@pytest.mark.parametrize(("run", "round_no"), [("run1", 3), ("run1", 4), ("run2", 1)])
def test_the_next_round_a_retry_and_a_new_run_from_round_one_are_plausible(
    run: str, round_no: int
) -> None:
    core = connected_at_round(3)
    actions = core.handle(ModelArrived(announce(round_no, run=run)))
    assert not [a for a in actions if isinstance(a, ModelRejected)]


@pytest.mark.parametrize("event", [Connected(), MessagesLost()])
def test_after_a_reconnect_or_a_loss_the_retained_model_may_be_any_round(
    event: Connected | MessagesLost,
) -> None:
    core = connected_at_round(3)
    core.handle(event)
    assert trains(core.handle(ModelArrived(announce(40)))) == [40]


def test_a_signed_model_is_the_coordinators_whatever_its_round() -> None:
    core = connected_at_round(3, key=COORDINATOR)
    ahead = seal(announce(40), Purpose.MODEL, job=JOB, run="run1", signer=COORDINATOR_SIGNER,
                 key=COORDINATOR)
    assert trains(core.handle(ModelArrived(ahead))) == [40]
