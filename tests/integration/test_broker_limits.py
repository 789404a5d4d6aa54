"""A broker's packet cap, said clearly: the coordinator stops with the ``--max-payload``
that fits instead of reconnecting for ever (before: 28 reconnects in 20 s, "Unspecified
error", on a Mosquitto with ``max_packet_size 65536``)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from harness import CoordinatorThread, FakeAgent

from coordinator import RoundConfig
from fedmq.broker import LocalBroker
from fedmq.tasks import get_task
from tests.needs import require_mosquitto
from transport.link import PacketTooLargeError

pytestmark = pytest.mark.integration

CAP = 64 * 1024


@pytest.fixture
def capped_broker() -> Iterator[LocalBroker]:
    require_mosquitto()
    with LocalBroker(extra_config=f"max_packet_size {CAP}\n") as broker:
        yield broker


def config(job: str) -> RoundConfig:
    # mnist-2nn's model is 797 kB; no MNIST is read with evaluation off
    return RoundConfig(job=job, task="mnist-2nn", rounds=1, plan=get_task("mnist-2nn").plan,
                       min_agents=1, deadline_s=30.0, evaluate=False)


def test_mqtt5_reads_the_cap_from_connack_and_names_the_max_payload_that_fits(
    capped_broker: LocalBroker, tmp_path: Path
) -> None:
    agent = FakeAgent(capped_broker.url, "capped5", "a0")
    coord = CoordinatorThread(config("capped5"), capped_broker.url, tmp_path).start()
    began = time.monotonic()
    with pytest.raises(PacketTooLargeError, match=r"65536 bytes \(from its CONNACK\): pass "
                                                  r"--max-payload 63k"):
        coord.join(timeout=30)
    assert time.monotonic() - began < 10  # at once, not after reconnecting
    agent.close()


def test_mqtt311_gives_up_after_repeated_drops_with_a_hint(
    capped_broker: LocalBroker, tmp_path: Path
) -> None:
    agent = FakeAgent(capped_broker.url, "capped311", "a0")
    coord = CoordinatorThread(config("capped311"), capped_broker.url, tmp_path,
                              mqtt5=False).start()
    hint = r"closed the connection 3 times right after a publish of \d+ bytes.*--max-payload"
    with pytest.raises(ConnectionRefusedError, match=hint):
        coord.join(timeout=60)
    agent.close()
