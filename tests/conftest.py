"""Suite-wide fixtures: a real Mosquitto started from the project's mosquitto.conf.

The broker listens on a free loopback port and is stopped by PID. When it
cannot be had, integration tests fail under CI (CI=true) and are skipped with
the install hint elsewhere (tests/needs.py); pure tests never need it.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from fedmq.broker import LocalBroker
from tests.needs import require_mnist, require_mosquitto


@pytest.fixture(scope="session")
def broker() -> Iterator[LocalBroker]:
    """One broker for the session; tests isolate themselves by job name."""
    require_mosquitto()
    with LocalBroker() as b:
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
