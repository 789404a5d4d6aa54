"""Suite-wide fixtures: a real Mosquitto started from the project's mosquitto.conf, and for
the broker matrix (``any_broker``) a NATS and a RabbitMQ too.

Each broker listens on free loopback ports and is stopped by PID, started once per
session (RabbitMQ takes about 10 s to start). When one cannot be had, its tests fail
under CI (CI=true) and are skipped with the install hint elsewhere (tests/needs.py);
pure tests never need one.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from fedmq.broker import LocalBroker
from fedmq_tools.brokers import KINDS, PrivateBroker, private_broker
from tests.needs import require_broker, require_mnist, require_mosquitto


@pytest.fixture(scope="session")
def broker() -> Iterator[LocalBroker]:
    """One broker for the session; tests isolate themselves by job name."""
    require_mosquitto()
    with LocalBroker() as b:
        yield b


@pytest.fixture(scope="session", params=KINDS)
def any_broker(request: pytest.FixtureRequest) -> Iterator[PrivateBroker]:
    """Each tested broker in turn, one instance per session: tests marked ``brokers``
    take this and run against Mosquitto, NATS and RabbitMQ (docs/BROKERS.md)."""
    kind: str = request.param
    require_broker(kind)
    if kind == "mosquitto":
        yield request.getfixturevalue("broker")
        return
    with private_broker(kind) as b:
        yield b


@pytest.fixture
def own_broker() -> Iterator[LocalBroker]:
    """A broker of this test's own, for tests that restart or kill it."""
    require_mosquitto()
    with LocalBroker() as b:
        yield b


@pytest.fixture(scope="session")
def real_mnist() -> Path:
    """The shared real MNIST directory; its absence fails under CI (tests/needs.py)."""
    return require_mnist()
