"""A broker the matrix needs and cannot have fails the run under CI, and is skipped elsewhere."""

from __future__ import annotations

import pytest

from fedmq.broker import BrokerError
from tests import needs


def _missing() -> str:
    raise BrokerError("nats-server is not installed")


def test_a_missing_broker_fails_under_ci_and_is_skipped_elsewhere(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(needs, "find_nats", _missing)
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI needs it: nats-server is not installed"):
        needs.require_broker("nats")
    monkeypatch.setenv("CI", "false")
    with pytest.raises(pytest.skip.Exception, match="nats-server is not installed"):
        needs.require_broker("nats")
