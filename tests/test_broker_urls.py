"""Broker URLs and credentials: what may be printed, and when a password may leave the host.

Pure, except the one test that runs ``fedmq agent`` as a user would (a child
process, no broker needed: it must refuse before it connects).
"""

from __future__ import annotations

import argparse
import logging
import subprocess
import sys
from pathlib import Path

import pytest

from fedmq.agent_cli import connection
from transport.connection import BrokerURL, redact


@pytest.mark.parametrize(
    ("url", "shown"),
    [("mqtts://dev:s3cret@broker:8883", "mqtts://dev:***@broker:8883"),
     ("mqtt://dev:p@ss:w0rd@host", "mqtt://dev:***@host"),
     ("mqtt://dev@host:1883", "mqtt://dev@host:1883"),
     ("host:1883", "host:1883"),
     ("u:pw@host", "u:***@host")],
)
def test_redact_hides_only_the_password(url: str, shown: str) -> None:
    assert redact(url) == shown


def test_a_bad_broker_url_is_reported_without_its_password() -> None:
    with pytest.raises(ValueError, match="scheme") as info:
        BrokerURL.parse("http://dev:s3cret@host")
    assert "s3cret" not in str(info.value)


def test_a_parsed_url_never_shows_its_password() -> None:
    assert "s3cret" not in str(BrokerURL.parse("mqtts://dev:s3cret@broker"))


def flags(broker: str, **extra: object) -> argparse.Namespace:
    values: dict[str, object] = {"broker": broker, "username": None, "password": None,
                                 "password_file": None, "ca_file": None, "mqtt311": False,
                                 "insecure": False}
    values.update(extra)
    return argparse.Namespace(**values)


@pytest.mark.parametrize(
    "args",
    [flags("mqtt://dev:s3cret@host"), flags("mqtt://host", username="dev", password="s3cret")],
)
def test_plain_mqtt_with_a_password_is_refused_and_says_why(args: argparse.Namespace) -> None:
    with pytest.raises(ValueError, match="cleartext") as info:
        connection(args, args.broker)
    assert "--insecure" in str(info.value) and "s3cret" not in str(info.value)


def test_insecure_allows_it_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        conn = connection(flags("mqtt://dev:s3cret@host", insecure=True), "mqtt://dev:s3cret@host")
    assert conn.broker.password == "s3cret" and not conn.broker.tls
    assert "cleartext" in caplog.text and "s3cret" not in caplog.text


def test_without_a_password_or_over_tls_nothing_is_refused() -> None:
    assert connection(flags("mqtt://host"), "mqtt://host").broker.password is None
    assert connection(flags("mqtts://dev:s3cret@host"), "mqtts://dev:s3cret@host").broker.tls


def test_a_tls_bundle_overridden_by_plain_mqtt_is_refused_before_connecting(
        tmp_path: Path) -> None:
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (bundle / "password").write_text("s3cret\n")
    (bundle / "password").chmod(0o600)
    (bundle / "ca.crt").write_text("not read: the agent must refuse first\n")
    (bundle / "agent.toml").write_text(
        'broker = "mqtts://broker.example:8883"\njob = "j"\ntask = "linreg"\n'
        'agent_id = "agent-0"\nshard = "0/1"\nusername = "agent-0"\n'
        'password_file = "password"\nca_file = "ca.crt"\n')
    done = subprocess.run(
        [sys.executable, "-m", "fedmq", "agent", "--bundle", str(bundle),
         "--broker", "mqtt://127.0.0.1:9", "--trainer", "numpy"],
        check=False, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2, done.stderr
    assert "cleartext" in done.stderr and "--insecure" in done.stderr
    assert "ca.crt" in done.stderr  # ... and that the bundle's CA would not be used
    assert "s3cret" not in done.stderr + done.stdout
