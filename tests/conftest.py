"""Suite-wide fixtures: a real Mosquitto started from the project's mosquitto.conf.

The broker listens on a free loopback port and is stopped by PID. When it
cannot be had, integration tests fail under CI (CI=true) and are skipped with
the install hint elsewhere; pure tests never need it.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from fedmq.broker import BrokerError, LocalBroker, find_mosquitto


def _require_mosquitto() -> None:
    try:
        find_mosquitto()
    except BrokerError as exc:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"CI needs Mosquitto: {exc}", pytrace=False)
        pytest.skip(str(exc))


@pytest.fixture(scope="session")
def broker() -> Iterator[LocalBroker]:
    """One broker for the session; tests isolate themselves by job name."""
    _require_mosquitto()
    with LocalBroker() as b:
        yield b


@pytest.fixture
def own_broker() -> Iterator[LocalBroker]:
    """A broker of this test's own, for tests that restart or kill it."""
    _require_mosquitto()
    with LocalBroker() as b:
        yield b
