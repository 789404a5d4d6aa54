"""The round machine and the agent core fed mutated and random bytes (hypothesis), checked as
the soak (fedmq_tools.bench.soak) checks them: no exception escapes, nothing is accepted that an
independent check refuses, and the model becomes exactly what the accepted updates make it."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from coordinator import RoundConfig, validation
from fedmq_tools.bench import soak
from fedmq_tools.bench.mutations import mutate
from protocol import RejectReason, Update, WireError


@settings(max_examples=40, deadline=None)
@given(
    rng=st.randoms(use_true_random=False),
    codec=st.sampled_from(soak.CODEC_SPECS),
    chunked=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_the_round_machine_takes_mutated_updates_and_presences_in_its_stride(
    rng: random.Random, codec: str, chunked: bool, seed: int
) -> None:
    tally = soak.Tally()
    batch = soak.RoundsBatch(seed, codec, chunked)
    for _ in range(30):
        batch.feed(rng, tally)
    batch.close(tally)
    assert tally.crashes == 0, tally.crash_reports
    assert (tally.wrongly_accepted, tally.model_changed) == (0, 0)


@settings(max_examples=60, deadline=None)
@given(rng=st.randoms(use_true_random=False))
def test_the_agent_core_takes_mutated_models_in_its_stride(rng: random.Random) -> None:
    tally = soak.Tally()
    model = soak.message_seeds(0)["model"]
    for _ in range(10):
        soak.fuzz_agent(mutate(rng, model, is_json=False), tally)
    assert tally.crashes == 0, tally.crash_reports


def test_a_short_soak_covers_every_target_and_is_clean() -> None:
    tally, _ = soak.run_soak(4000, seed=1)
    assert tally.clean, tally.crash_reports
    assert tally.updates_accepted > 0  # mutations that stay valid are accepted, and checked
    targets = {"agent", "chunk", "rounds:update", "rounds:presence", *soak.DECODERS}
    targets |= {f"delta[{spec}]" for spec in soak.CODEC_SPECS}
    assert set(tally.cases) == targets


def test_the_soak_catches_a_round_machine_that_skips_a_check(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    check = validation.check_round

    def lax(config: RoundConfig, view: validation.RunView, agent: str, update: Update) -> None:
        try:  # forgets duplicates
            check(config, view, agent, update)
        except WireError as exc:
            if exc.reason is not RejectReason.DUPLICATE:
                raise

    monkeypatch.setattr(validation, "check_round", lax)
    tally, _ = soak.run_soak(4000, seed=1)
    assert tally.wrongly_accepted > 0 and tally.model_changed > 0
