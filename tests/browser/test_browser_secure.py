"""The secure profile for browsers: wss with the provisioned certificate, per-device
credentials and Ed25519-signed models and updates, in real headless Chromium.

The broker is `fedmq provision`'s own mosquitto.conf (its TLS listener and its wss
listener) on free ports. Chromium trusts exactly the provisioned server key
(``--ignore-certificate-errors-spki-list`` pins its SubjectPublicKeyInfo hash), as a
phone trusts the CA it was given. Waiting is on conditions with timeouts.
"""

from __future__ import annotations

import base64
import hashlib
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from web_harness import Browser, pages_server

from coordinator import Action, MessageRejected, RoundConfig, UpdateAccepted
from fedmq.broker import LocalBroker
from fedmq.bundle import load_agent_keys, load_signing_key, load_verify_key, read_password
from fedmq.launch import AgentSettings, Connection, build_agent, build_coordinator
from fedmq.provision import Deployment, provision
from fedmq.tasks import DataConfig, get_task
from fedmq.web.cli import bundle_link
from tests.needs import require_mosquitto
from transport.connection import BrokerURL

pytestmark = pytest.mark.integration

JOB = "websec"
AGENTS = ("agent-0", "agent-1")
REFUSED = "document.querySelector('#connection').dataset.state === 'refused'"
TIMEOUT_S = 120.0


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return provision(Deployment(job=JOB, agents=AGENTS, task="digits"),
                     tmp_path_factory.mktemp("webfleet") / "fleet")


@pytest.fixture(scope="module")
def broker(fleet: Path) -> Iterator[LocalBroker]:
    require_mosquitto()
    # the provisioned config names its files' owner, so it starts as root too
    with LocalBroker(fleet / "broker" / "mosquitto.conf", websockets=True) as b:
        yield b


@pytest.fixture(scope="module")
def browser(fleet: Path) -> Iterator[Browser]:
    cert = x509.load_pem_x509_certificate((fleet / "broker" / "server.crt").read_bytes())
    spki = cert.public_key().public_bytes(serialization.Encoding.DER,
                                          serialization.PublicFormat.SubjectPublicKeyInfo)
    pin = base64.b64encode(hashlib.sha256(spki).digest()).decode()
    b = Browser((f"--ignore-certificate-errors-spki-list={pin}",))
    try:
        yield b
    finally:
        b.quit()


def wss(broker: LocalBroker) -> str:
    return f"wss://localhost:{broker.ws_port}"


def test_a_browser_agent_with_a_wrong_password_is_refused_over_wss(
    fleet: Path, broker: LocalBroker, browser: Browser
) -> None:
    with pages_server(wss(broker), JOB, "digits") as base:
        _, link = bundle_link(fleet / "agents" / "agent-1", base, wss(broker), JOB)
        right = read_password(fleet / "agents" / "agent-1" / "password")
        assert f"pass={right}" in link
        browser.open("wrong", link.replace(f"pass={right}", "pass=not-the-password"), 390, 844)
        browser.wait("wrong", REFUSED, TIMEOUT_S)
        note = browser.text("wrong", "#note")
        browser.close_page("wrong")
    assert "refused" in note and "authori" in note.lower()


def test_the_right_password_trains_signed_chunked_rounds_over_wss_and_the_monitor_watches(
    fleet: Path, broker: LocalBroker, browser: Browser
) -> None:
    accepted: list[tuple[str, int]] = []
    rejected: list[MessageRejected] = []
    lock = threading.Lock()

    def observe(action: Action) -> None:
        with lock:
            if isinstance(action, UpdateAccepted):
                accepted.append((action.agent, action.round_no))
            elif isinstance(action, MessageRejected):
                rejected.append(action)

    ca = fleet / "broker" / "ca.crt"
    mqtts = f"mqtts://localhost:{broker.port}"
    coordinator_dir = fleet / "coordinator"
    # under a payload cap (8 KiB; the model is 20 kB): models and updates travel as chunks,
    # signed first (docs/PROTOCOL.md §4.6, §11)
    config = RoundConfig(job=JOB, task="digits", rounds=2, plan=get_task("digits").plan,
                         min_agents=2, deadline_s=TIMEOUT_S, max_payload=8192,
                         signing_key=load_signing_key(coordinator_dir / "signing.key"),
                         agent_keys=load_agent_keys(coordinator_dir / "agents"))
    creds = BrokerURL.parse(mqtts).with_credentials("coordinator",
                                                    read_password(coordinator_dir / "password"))
    node = build_coordinator(config, Connection(creds, ca_file=ca), data=DataConfig(),
                             run_dir=None, on_action=observe)
    bundle = fleet / "agents" / "agent-0"
    python_agent = build_agent(
        AgentSettings(job=JOB, task="digits", agent_id="agent-0", shard=0, num_shards=2,
                      threads=1, signing_key=load_signing_key(bundle / "signing.key"),
                      coordinator_key=load_verify_key(bundle / "coordinator.pub")),
        Connection(BrokerURL.parse(mqtts).with_credentials(
            "agent-0", read_password(bundle / "password")), ca_file=ca))
    with pages_server(wss(broker), JOB, "digits") as base:
        _, agent_url = bundle_link(fleet / "agents" / "agent-1", base, wss(broker), JOB)
        kind, monitor_url = bundle_link(fleet / "monitor", base, wss(broker), JOB)
        assert kind == "monitor" and "user=monitor" in monitor_url
        browser.open("monitor", monitor_url, 1280, 800)
        browser.open("agent", agent_url, 390, 844)
        threads = [threading.Thread(target=n.run, daemon=True) for n in (node, python_agent)]
        for t in threads:
            t.start()
        threads[0].join(TIMEOUT_S * 2)
        python_agent.stop()
        threads[1].join(30)
        browser.wait("monitor", "document.querySelector('#phase').dataset.phase === 'done' && "
                                "document.querySelectorAll('#rounds-table tbody tr').length === 2")
        browser.wait("agent", "document.querySelector('#updates').dataset.rounds === '1,2'")
        kinds = browser.text("monitor", "#agents-table")
        for page in ("monitor", "agent"):
            browser.close_page(page)
    assert not threads[0].is_alive()
    assert rejected == []
    assert sorted(accepted) == [("agent-0", 1), ("agent-0", 2), ("agent-1", 1), ("agent-1", 2)]
    assert "browser" in kinds and "python" in kinds
