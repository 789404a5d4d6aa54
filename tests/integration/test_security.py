"""The secure profile against a real Mosquitto started from `fedmq provision`'s own files.

Every broker here is the provisioned ``mosquitto.conf`` (TLS only, no anonymous
access, the password file and the ACL) on a free loopback port, one per test,
so no retained message leaks from one test into another. Clients verify the
broker with the provisioned CA. Waiting is on conditions with timeouts, never
a sleep.

"Never reaches" is proved with sentinels, not with a quiet period. Mosquitto
handles one client's packets in the order they arrive and appends each
accepted message to every subscriber's outgoing queue at once, in order. So
when a watcher receives a sentinel published *after* a forbidden message on the
same connection, the forbidden one, had the broker accepted it, would already
have been delivered to that watcher.
"""

from __future__ import annotations

import contextlib
import json
import shlex
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from harness import TIMEOUT_S, wait_process, wait_until, watching_logs

from coordinator import (
    Action,
    MessageRejected,
    RoundClosed,
    RoundConfig,
    RoundOpened,
    UpdateAccepted,
)
from coordinator.mqtt import CoordinatorNode
from edge_agent.agent import (
    AgentAction,
    AgentCore,
    Connected,
    ModelArrived,
    ModelRejected,
    Train,
    TrainingDone,
)
from edge_agent.mqtt import AgentNode, run_fleet
from edge_agent.torch_trainer import initial_weights
from edge_agent.trainer import TrainResult
from fedmq.broker import LocalBroker, find_mosquitto, free_port
from fedmq.bundle import load_agent_keys, load_signing_key, load_verify_key, read_password
from fedmq.credentials import mosquitto_hash
from fedmq.launch import AgentSettings, Connection, build_agent, build_coordinator
from fedmq.provision import Deployment, provision
from fedmq.tasks import DataConfig, get_task
from protocol import (
    ModelAnnouncement,
    Phase,
    Publish,
    RejectReason,
    Topics,
    encode_model,
)
from protocol.keys import SigningKey
from protocol.signing import COORDINATOR_SIGNER, Purpose, seal
from tests.needs import require_mosquitto
from transport.connection import BrokerURL, Session, make_client

pytestmark = pytest.mark.integration

JOB = "secure"
AGENTS = ("agent-0", "agent-1", "agent-2")
TASK = get_task("linreg")
TOPICS = Topics(JOB)


@pytest.fixture(scope="module")
def fleet_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One provisioned deployment for the module (key generation is the slow part)."""
    out = tmp_path_factory.mktemp("fleet") / "fleet"
    return provision(Deployment(job=JOB, agents=AGENTS, task="linreg"), out)


def private_broker(conf: Path, port: int | None = None) -> LocalBroker:
    """A private broker from ``conf``, to start with ``with``; without Mosquitto, fail under
    CI and skip elsewhere (as tests/conftest.py's fixtures do)."""
    require_mosquitto()
    return LocalBroker(conf, port=port)  # the config names its files' owner: root or not


@pytest.fixture
def secure_broker(fleet_dir: Path) -> Iterator[LocalBroker]:
    with private_broker(fleet_dir / "broker" / "mosquitto.conf") as broker:
        yield broker


def url(broker: LocalBroker) -> str:
    return f"mqtts://127.0.0.1:{broker.port}"


def password(fleet: Path, user: str) -> str:
    where = {"coordinator": fleet / "coordinator", "monitor": fleet / "monitor"}
    return read_password(where.get(user, fleet / "agents" / user) / "password")


# --- a raw client with the provisioned CA ---------------------------------------------------


@dataclass
class Client:
    """A paho client logged in as ``user`` over TLS, recording what it receives."""

    broker: LocalBroker
    fleet: Path
    user: str | None
    secret: str | None = None
    subscribe: tuple[str, ...] = ()
    messages: list[tuple[str, bytes]] = field(default_factory=list)
    cond: threading.Condition = field(default_factory=threading.Condition)
    connack: Any = None

    def __post_init__(self) -> None:
        secret = self.secret
        if secret is None and self.user is not None:
            secret = password(self.fleet, self.user)
        creds = BrokerURL.parse(url(self.broker)).with_credentials(self.user, secret)
        session = Session(client_id=f"test-{self.user}-{id(self)}",
                          ca_file=self.fleet / "broker" / "ca.crt")
        self.client = make_client(creds, session)
        self._subscribed = threading.Event()
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = lambda *_: self._subscribed.set()
        self.client.on_message = self._on_message
        self.client.connect(creds.host, creds.port)
        self.client.loop_start()
        wait_until(lambda: self.connack is not None, self.cond, TIMEOUT_S)
        subscribing = self.subscribe and not self.connack.is_failure
        if subscribing and not self._subscribed.wait(TIMEOUT_S):
            raise TimeoutError(f"{self.user} did not subscribe")

    def _on_connect(self, client: mqtt.Client, _u: Any, _f: Any, code: Any, _p: Any) -> None:
        if not code.is_failure and self.subscribe:
            client.subscribe([(t, 1) for t in self.subscribe])
        with self.cond:
            self.connack = code
            self.cond.notify_all()
        if code.is_failure:
            client.disconnect()  # or paho retries a refused login for ever

    def _on_message(self, _c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
        with self.cond:
            self.messages.append((msg.topic, bytes(msg.payload)))
            self.cond.notify_all()

    def publish(self, topic: str, payload: bytes, retain: bool = False) -> None:
        self.client.publish(topic, payload, qos=1, retain=retain).wait_for_publish(TIMEOUT_S)

    def payloads(self) -> list[bytes]:
        with self.cond:
            return [p for _, p in self.messages]

    def wait_for(self, payload: bytes) -> None:
        wait_until(lambda: any(p == payload for _, p in self.messages), self.cond, TIMEOUT_S)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


# --- who may connect --------------------------------------------------------------------------


def test_anonymous_and_wrong_password_logins_are_refused(secure_broker: LocalBroker,
                                                         fleet_dir: Path) -> None:
    anonymous = Client(secure_broker, fleet_dir, user=None)
    wrong = Client(secure_broker, fleet_dir, user="agent-0", secret="not-the-password")
    right = Client(secure_broker, fleet_dir, user="agent-0")
    try:
        assert anonymous.connack.is_failure and "not authorized" in str(anonymous.connack).lower()
        assert wrong.connack.is_failure
        assert not right.connack.is_failure
    finally:
        for c in (anonymous, wrong, right):
            c.close()


def test_an_agent_with_a_wrong_password_stops_with_the_brokers_reason(
        secure_broker: LocalBroker, fleet_dir: Path) -> None:
    broker = BrokerURL.parse(url(secure_broker)).with_credentials("agent-0", "wrong")
    node = build_agent(AgentSettings(job=JOB, task="linreg", agent_id="agent-0", shard=0,
                                     num_shards=1, threads=1),
                       Connection(broker, ca_file=fleet_dir / "broker" / "ca.crt"))
    thread = threading.Thread(target=node.run, daemon=True)
    thread.start()
    thread.join(TIMEOUT_S)
    assert not thread.is_alive()
    assert node.refused is not None and "refused" in node.refused


# --- who may publish what -------------------------------------------------------------------


def test_an_agent_cannot_publish_as_another_agent_or_as_the_coordinator(
        secure_broker: LocalBroker, fleet_dir: Path) -> None:
    everything = f"fedmq/v1/{JOB}/#"
    coordinator = Client(secure_broker, fleet_dir, "coordinator", subscribe=(everything,))
    # agent-1 subscribes to the whole job: the broker delivers only what it may read
    agent_1 = Client(secure_broker, fleet_dir, "agent-1", subscribe=(everything,))
    agent_0 = Client(secure_broker, fleet_dir, "agent-0")
    forged = {
        TOPICS.update("agent-1"): b"forged update as agent-1",
        TOPICS.model: b"forged model",
        TOPICS.model_chunk(0): b"forged model chunk",
        TOPICS.status: b"forged status",
        TOPICS.metrics: b"forged metrics",
        TOPICS.presence("agent-1"): b"forged presence of agent-1",
    }
    try:
        for topic, payload in forged.items():
            agent_0.publish(topic, payload, retain=True)
        sentinel = b"agent-0's own update, sent after the forgeries"
        agent_0.publish(TOPICS.update("agent-0"), sentinel)
        coordinator.wait_for(sentinel)
        # The coordinator's status is the second sentinel, for agent-1's queue.
        status = b"coordinator status, sent after agent-0's sentinel arrived"
        coordinator.publish(TOPICS.status, status)
        agent_1.wait_for(status)
        assert not set(forged.values()) & set(coordinator.payloads())
        assert not set(forged.values()) & set(agent_1.payloads())
        # ... nor does one agent read another's update: updates are private to the coordinator
        assert sentinel not in agent_1.payloads()
    finally:
        for c in (coordinator, agent_1, agent_0):
            c.close()


def test_refused_logins_are_in_the_brokers_log_and_denied_publishes_in_the_clients(
        secure_broker: LocalBroker, fleet_dir: Path) -> None:
    """What docs/SECURITY.md says each side logs, checked against a real Mosquitto: at the
    shipped log levels Mosquitto 2.0 logs a refused login but not a publish its ACL denies;
    over MQTT 5 it answers that publish with reason 135, which fedmq's clients log."""
    wrong = Client(secure_broker, fleet_dir, user="agent-0", secret="not-the-password")
    with watching_logs() as logs:
        agent_0 = Client(secure_broker, fleet_dir, "agent-0")
        try:
            agent_0.publish(TOPICS.model, b"forged model")
            line = logs.wait_for("refused publish")
        finally:
            agent_0.close()
            wrong.close()
    assert "Not authorized" in line and "agent-0" in line and "ACL" in line
    broker_log = secure_broker.log()
    assert "disconnected, not authorised" in broker_log  # the refused login
    assert "u'agent-0'" in broker_log and "Denied" not in broker_log


# --- forged models --------------------------------------------------------------------------


def rogue_broker(fleet: Path, tmp: Path) -> tuple[LocalBroker, str]:
    """The provisioned broker plus a user ``rogue`` allowed to publish models."""
    rogue_password = "rogue-password"
    broker = fleet / "broker"
    (tmp / "passwd").write_text((broker / "passwd").read_text()
                                + f"rogue:{mosquitto_hash(rogue_password)}\n")
    (tmp / "acl").write_text((broker / "acl").read_text()
                             + f"\nuser rogue\ntopic write fedmq/v1/{JOB}/model\n")
    conf = (broker / "mosquitto.conf").read_text()
    conf = conf.replace(str(broker / "passwd"), str(tmp / "passwd"))
    conf = conf.replace(str(broker / "acl"), str(tmp / "acl"))
    (tmp / "mosquitto.conf").write_text(conf)
    return private_broker(tmp / "mosquitto.conf"), rogue_password


def secure_agents(broker: LocalBroker, fleet: Path, agents: tuple[str, ...],
                  on_action: Callable[[str, AgentAction], None]) -> list[AgentNode]:
    ca = fleet / "broker" / "ca.crt"
    nodes = []
    for index, agent in enumerate(agents):
        bundle = fleet / "agents" / agent
        creds = BrokerURL.parse(url(broker)).with_credentials(agent, password(fleet, agent))
        settings = AgentSettings(
            job=JOB, task="linreg", agent_id=agent, shard=index, num_shards=len(agents),
            threads=1, signing_key=load_signing_key(bundle / "signing.key"),
            coordinator_key=load_verify_key(bundle / "coordinator.pub"))
        nodes.append(build_agent(settings, Connection(creds, ca_file=ca),
                                 on_action=lambda a, agent=agent: on_action(agent, a)))
    return nodes


def test_a_forged_model_from_a_client_with_publish_rights_is_refused_by_every_agent(
        fleet_dir: Path, tmp_path: Path) -> None:
    broker, rogue_password = rogue_broker(fleet_dir, tmp_path)
    seen: dict[str, list[AgentAction]] = {a: [] for a in AGENTS}
    cond = threading.Condition()

    def record(agent: str, action: AgentAction) -> None:
        with cond:
            seen[agent].append(action)
            cond.notify_all()

    genuine = ModelAnnouncement(
        job=JOB, run="run-1", round=1, model_id="m1", task="linreg", plan=TASK.plan,
        codec="none", deadline_s=30.0, weights=initial_weights(TASK.model, 0), issued_at=1.0)
    coordinator_key = load_signing_key(fleet_dir / "coordinator" / "signing.key")
    signed = seal(encode_model(genuine), Purpose.MODEL, job=JOB, run="run-1",
                  signer=COORDINATOR_SIGNER, key=coordinator_key)
    altered = bytearray(signed)
    altered[-100] ^= 0x01  # a weight, as a compromised broker might change it
    forgeries = {
        "signed by another key": seal(encode_model(genuine), Purpose.MODEL, job=JOB,
                                      run="run-1", signer=COORDINATOR_SIGNER,
                                      key=SigningKey.generate()),
        "unsigned": encode_model(genuine),
        "altered": bytes(altered),
    }
    with broker:
        rogue = Client(broker, fleet_dir, "rogue", secret=rogue_password)
        presence = Client(broker, fleet_dir, "coordinator", subscribe=(TOPICS.all_presence,))
        nodes = secure_agents(broker, fleet_dir, AGENTS, record)
        threads = run_fleet(nodes)
        try:
            # An agent subscribes to the model before it announces itself on the same
            # connection, so once its presence is through, so is its subscription.
            wait_until(lambda: {t for t, _ in presence.messages}
                       == {TOPICS.presence(a) for a in AGENTS}, presence.cond, TIMEOUT_S)
            for payload in forgeries.values():
                rogue.publish(TOPICS.model, payload, retain=True)

            def refusals(agent: str) -> list[RejectReason]:
                return [a.reason for a in seen[agent] if isinstance(a, ModelRejected)]

            wait_until(lambda: all(len(refusals(a)) == len(forgeries) for a in AGENTS),
                       cond, TIMEOUT_S)
            for agent in AGENTS:
                assert refusals(agent) == [RejectReason.BAD_SIGNATURE, RejectReason.UNSIGNED,
                                           RejectReason.BAD_SIGNATURE]
                assert not any(isinstance(a, Train) for a in seen[agent])
            # The same bytes, correctly signed, are trained on: the signature made the difference.
            rogue.publish(TOPICS.model, signed, retain=True)
            wait_until(lambda: all(any(isinstance(a, Train) for a in seen[ag]) for ag in AGENTS),
                       cond, TIMEOUT_S)
        finally:
            rogue.close()
            presence.close()
            for node in nodes:
                node.stop()
            for thread in threads:
                thread.join(TIMEOUT_S)


# --- replayed and altered updates -----------------------------------------------------------


class CoordinatorRun:
    """A coordinator node on a thread, with its actions recorded."""

    def __init__(self, node_for: Callable[[Callable[[Action], None]], CoordinatorNode]) -> None:
        self.actions: list[Action] = []
        self.cond = threading.Condition()
        self.node = node_for(self._record)
        self.thread = threading.Thread(target=self.node.run, daemon=True)
        self.thread.start()

    def _record(self, action: Action) -> None:
        with self.cond:
            self.actions.append(action)
            self.cond.notify_all()

    def wait(self, predicate: Callable[[list[Action]], bool]) -> None:
        wait_until(lambda: predicate(self.actions), self.cond, TIMEOUT_S)

    def rejections(self) -> list[MessageRejected]:
        with self.cond:
            return [a for a in self.actions if isinstance(a, MessageRejected)]


def secure_coordinator(broker: LocalBroker, fleet: Path, **overrides: Any) -> CoordinatorRun:
    bundle = fleet / "coordinator"
    settings: dict[str, Any] = {
        "job": JOB, "task": "linreg", "rounds": 2, "plan": TASK.plan, "min_agents": 2,
        "deadline_s": 120.0, "evaluate": False,
        "signing_key": load_signing_key(bundle / "signing.key"),
        "agent_keys": load_agent_keys(bundle / "agents"),
    }
    settings.update(overrides)
    creds = BrokerURL.parse(url(broker)).with_credentials("coordinator",
                                                          password(fleet, "coordinator"))
    conn = Connection(creds, ca_file=bundle / "ca.crt")
    return CoordinatorRun(lambda observe: build_coordinator(
        RoundConfig(**settings), conn, data=DataConfig(), run_dir=None, on_action=observe))


class HandPlayed:
    """agent-1, played by the test: its core reads models from a tap and answers when told."""

    def __init__(self, broker: LocalBroker, fleet: Path, tap: Client) -> None:
        bundle = fleet / "agents" / "agent-1"
        self.core = AgentCore(JOB, "agent-1", samples=10, trainer="test",
                              signing_key=load_signing_key(bundle / "signing.key"),
                              coordinator_key=load_verify_key(bundle / "coordinator.pub"))
        self.login = Client(broker, fleet, "agent-1")
        self.tap = tap

    def announce(self) -> None:
        """Publish agent-1's presence once the coordinator listens (its roll call is out): it
        counts live presence only, and this hand-played agent answers no roll call."""
        wait_until(lambda: any(t == TOPICS.rollcall for t, _ in self.tap.messages),
                   self.tap.cond, TIMEOUT_S)
        (presence,) = [a for a in self.core.handle(Connected()) if isinstance(a, Publish)]
        self.login.publish(presence.topic, presence.payload, retain=True)

    def answer(self, round_no: int) -> None:
        """Train (weights unchanged) on the tap's latest model and send the signed update."""
        with self.tap.cond:
            model = [p for t, p in self.tap.messages if t == TOPICS.model][-1]
        (train,) = [a for a in self.core.handle(ModelArrived(model)) if isinstance(a, Train)]
        assert train.model.round == round_no
        result = TrainResult(train.model.weights, 10)
        for action in self.core.handle(TrainingDone(train.key, result, 0.0)):
            if isinstance(action, Publish):
                self.login.publish(action.topic, action.payload)


def opened(n: int) -> Callable[[list[Action]], bool]:
    return lambda acts: any(isinstance(a, RoundOpened) and a.round_no == n for a in acts)


def accepted(agent: str, n: int) -> Callable[[list[Action]], bool]:
    return lambda acts: any(isinstance(a, UpdateAccepted) and (a.agent, a.round_no) == (agent, n)
                            for a in acts)


def test_replayed_altered_and_misrouted_updates_are_rejected_with_their_reasons(
        secure_broker: LocalBroker, fleet_dir: Path) -> None:
    # agent-0 is a real agent; the test plays agent-1 by hand, so round 2 stays open
    # (waiting for agent-1) while the test replays agent-0's updates.
    tap = Client(secure_broker, fleet_dir, "coordinator", subscribe=(f"fedmq/v1/{JOB}/#",))
    run = secure_coordinator(secure_broker, fleet_dir)
    agent_1 = HandPlayed(secure_broker, fleet_dir, tap)
    as_agent_0 = Client(secure_broker, fleet_dir, "agent-0")
    nodes = secure_agents(secure_broker, fleet_dir, ("agent-0",), lambda _a, _x: None)
    threads = run_fleet(nodes)

    def updates_of_agent_0() -> list[bytes]:
        return [p for t, p in tap.messages if t == TOPICS.update("agent-0")]

    try:
        agent_1.announce()
        run.wait(opened(1))
        wait_until(lambda: any(t == TOPICS.model for t, _ in tap.messages), tap.cond, TIMEOUT_S)
        agent_1.answer(1)
        run.wait(accepted("agent-0", 2))
        # agent-0 answered round 2 after the broker had sent round 2's model, so once the
        # tap holds both of agent-0's updates it holds that model too
        wait_until(lambda: len(updates_of_agent_0()) >= 2, tap.cond, TIMEOUT_S)
        with tap.cond:
            round1, round2 = updates_of_agent_0()[:2]
        altered = bytearray(round2)
        altered[len(altered) // 2] ^= 0x01
        as_agent_0.publish(TOPICS.update("agent-0"), round1)  # replayed from round 1
        as_agent_0.publish(TOPICS.update("agent-0"), bytes(altered))
        as_agent_0.publish(TOPICS.update("agent-0"), round2)  # replayed in its own round
        agent_1.login.publish(TOPICS.update("agent-1"), round2)  # agent-0's, as agent-1's
        run.wait(lambda _acts: len(run.rejections()) >= 4)
        assert [(r.agent, r.reason) for r in run.rejections()] == [
            ("agent-0", RejectReason.STALE),
            ("agent-0", RejectReason.BAD_SIGNATURE),
            ("agent-0", RejectReason.DUPLICATE),
            ("agent-1", RejectReason.AGENT_MISMATCH),
        ]
        agent_1.answer(2)
        run.thread.join(TIMEOUT_S)
        assert run.node.rounds.phase is Phase.DONE
        closed = [a.metrics for a in run.actions if isinstance(a, RoundClosed)]
        assert [m.accepted for m in closed] == [2, 2]
        assert closed[1].rejected == {"stale": 1, "bad_signature": 1, "duplicate": 1,
                                      "agent_mismatch": 1}
    finally:
        for node in nodes:
            node.stop()
        for thread in threads:
            thread.join(TIMEOUT_S)
        if run.thread.is_alive():
            run.node.stop("test over")
            run.thread.join(TIMEOUT_S)
        for c in (tap, as_agent_0, agent_1.login):
            c.close()


def test_an_agent_whose_tls_handshake_fails_logs_why_with_a_hint(
        secure_broker: LocalBroker, fleet_dir: Path) -> None:
    creds = BrokerURL.parse(url(secure_broker)).with_credentials("agent-0",
                                                                 password(fleet_dir, "agent-0"))
    # no --ca-file: the system's CAs, which never signed the provisioned broker certificate
    node = build_agent(AgentSettings(job=JOB, task="linreg", agent_id="agent-0", shard=0,
                                     num_shards=1, threads=1), Connection(creds))
    with watching_logs() as logs:
        (thread,) = run_fleet([node])
        try:
            line = logs.wait_for("TLS handshake")
        finally:
            node.stop()
            thread.join(TIMEOUT_S)
    assert "agent-0" in line and "CERTIFICATE_VERIFY_FAILED" in line
    assert "ca.crt" in line and "--host" in line  # the hint


# --- forged presence -------------------------------------------------------------------------


def test_a_forged_offline_from_a_devices_password_does_not_remove_it_from_aggregation(
        secure_broker: LocalBroker, fleet_dir: Path) -> None:
    # agent-0 is a real agent; the test plays agent-1, so round 2 stays open while a
    # retained `offline` for agent-0 is published with agent-0's password (not its key).
    tap = Client(secure_broker, fleet_dir, "coordinator", subscribe=(f"fedmq/v1/{JOB}/#",))
    run = secure_coordinator(secure_broker, fleet_dir, rounds=3)
    agent_1 = HandPlayed(secure_broker, fleet_dir, tap)
    with_password = Client(secure_broker, fleet_dir, "agent-0")
    nodes = secure_agents(secure_broker, fleet_dir, ("agent-0",), lambda _a, _x: None)
    threads = run_fleet(nodes)
    forged = json.dumps({"v": 1, "type": "presence", "agent": "agent-0",
                         "state": "offline"}).encode()
    try:
        agent_1.announce()
        run.wait(opened(1))
        wait_until(lambda: any(t == TOPICS.model for t, _ in tap.messages), tap.cond, TIMEOUT_S)
        agent_1.answer(1)
        run.wait(accepted("agent-0", 2))
        with_password.publish(TOPICS.presence("agent-0"), forged, retain=True)
        run.wait(lambda _acts: len(run.rejections()) >= 1)
        assert [(r.agent, r.reason) for r in run.rejections()] == [
            ("agent-0", RejectReason.UNSIGNED)]
        assert run.node.rounds.agents_online == {"agent-0", "agent-1"}
        agent_1.answer(2)
        run.wait(accepted("agent-0", 3))  # still asked, and still counted
        agent_1.answer(3)
        run.thread.join(TIMEOUT_S)
        closed = [a.metrics for a in run.actions if isinstance(a, RoundClosed)]
        assert [m.accepted for m in closed] == [2, 2, 2]
    finally:
        for node in nodes:
            node.stop()
        for thread in threads:
            thread.join(TIMEOUT_S)
        if run.thread.is_alive():
            run.node.stop("test over")
            run.thread.join(TIMEOUT_S)
        for c in (tap, with_password, agent_1.login):
            c.close()


# --- what the command line says -------------------------------------------------------------


def test_a_coordinator_stopped_before_round_one_exits_cleanly_and_never_prints_the_password(
        secure_broker: LocalBroker, fleet_dir: Path, tmp_path: Path) -> None:
    secret = password(fleet_dir, "coordinator")
    broker_url = f"mqtts://coordinator:{secret}@127.0.0.1:{secure_broker.port}"
    log = tmp_path / "coordinator.log"
    status = Client(secure_broker, fleet_dir, "monitor", subscribe=(TOPICS.status,))
    proc = subprocess.Popen(
        [sys.executable, "-m", "fedmq", "--log-level", "DEBUG", "coordinator", "--bundle",
         str(fleet_dir / "coordinator"), "--broker", broker_url, "--min-agents", "3",
         "--run-dir", str(tmp_path / "run"), "--no-eval"],
        stdout=log.open("wb"), stderr=subprocess.STDOUT)
    try:
        # connected and waiting for agents: its status says so
        wait_until(lambda: bool(status.messages), status.cond, TIMEOUT_S)
        proc.terminate()  # SIGTERM, as systemd stops it
        code = wait_process(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        status.close()
    out = log.read_text()
    assert code == 0, out
    assert "waiting for 3 agent(s) on mqtts://coordinator@127.0.0.1" in out
    assert "stopped: stopped (SIGTERM) after round 0: resumable" in out
    assert secret not in out
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["rounds_completed"] == 0


def test_the_broker_command_provision_prints_starts_the_broker_as_whoever_ran_it(
        tmp_path: Path) -> None:
    """Run as root, Mosquitto drops to its own user before it reads the password file: the
    printed command must work anyway (this machine's tests run as root)."""
    require_mosquitto()
    port, ws_port, fleet = free_port(), free_port(), tmp_path / "fleet"
    printed = subprocess.run(
        [sys.executable, "-m", "fedmq", "provision", "--job", "cmd", "--agents", "1", "--out",
         str(fleet), "--port", str(port), "--ws-port", str(ws_port), "--bind", "127.0.0.1"],
        check=True, capture_output=True, text=True, timeout=TIMEOUT_S).stdout
    (command,) = [line.split(None, 1)[1] for line in printed.splitlines()
                  if line.split()[:1] == ["broker"]]
    argv = shlex.split(command)
    assert argv[0] == "mosquitto"
    log = tmp_path / "broker.log"
    broker = subprocess.Popen([find_mosquitto(), *argv[1:]], stdout=log.open("wb"),
                              stderr=subprocess.STDOUT)
    try:
        wait_listening(broker, port)
        creds = BrokerURL.parse(f"mqtts://127.0.0.1:{port}").with_credentials(
            "agent-0", read_password(fleet / "agents" / "agent-0" / "password"))
        client = make_client(creds, Session("printed-command", ca_file=fleet / "broker" / "ca.crt"))
        connected = threading.Event()
        client.on_connect = lambda _c, _u, _f, code, _p: None if code.is_failure else (
            connected.set())
        client.connect(creds.host, creds.port)
        client.loop_start()
        try:
            assert connected.wait(TIMEOUT_S), log.read_text()
        finally:
            client.disconnect()
            client.loop_stop()
    finally:
        broker.terminate()
        broker.wait(10)


def wait_listening(proc: subprocess.Popen[bytes], port: int) -> None:
    """Until ``proc`` accepts TCP connections on ``port``; fails at once if it exits."""
    deadline = time.monotonic() + TIMEOUT_S
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"the broker exited with {proc.returncode}"
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)  # polling a port that is still being bound, as LocalBroker does
    raise TimeoutError(f"nothing listens on {port}")


# --- the documented steps, end to end over TLS ------------------------------------------------


def test_the_provisioned_cli_run_completes_over_tls(tmp_path: Path) -> None:
    """docs/SECURITY.md's steps: provision; broker, coordinator and two agents from the files."""
    port = free_port()
    fleet = tmp_path / "fleet"
    fedmq = [sys.executable, "-m", "fedmq"]
    subprocess.run([*fedmq, "provision", "--job", "tls-job", "--agents", "2", "--out", str(fleet),
                    "--port", str(port), "--bind", "127.0.0.1", "--task", "linreg"],
                   check=True, capture_output=True, timeout=TIMEOUT_S)
    logs = {name: tmp_path / f"{name}.log" for name in ("coordinator", "agent-0", "agent-1")}
    with private_broker(fleet / "broker" / "mosquitto.conf", port=port) as broker:
        coordinator = subprocess.Popen(
            [*fedmq, "coordinator", "--bundle", str(fleet / "coordinator"), "--rounds", "2",
             "--min-agents", "2", "--run-dir", str(tmp_path / "run")],
            stdout=logs["coordinator"].open("wb"), stderr=subprocess.STDOUT)
        agents = [subprocess.Popen([*fedmq, "agent", "--bundle", str(fleet / "agents" / a),
                                    "--exit-when-done", "--threads", "1"],
                                   stdout=logs[a].open("wb"), stderr=subprocess.STDOUT)
                  for a in ("agent-0", "agent-1")]
        try:
            code = wait_process(coordinator, timeout=3 * TIMEOUT_S)
            assert code == 0, logs["coordinator"].read_text()
            assert [wait_process(a) for a in agents] == [0, 0]
        finally:
            for proc in (coordinator, *agents):
                if proc.poll() is None:
                    proc.kill()
                    proc.wait(10)
        broker_log = broker.log()
    out = {name: log.read_text() for name, log in logs.items()}
    assert "done: completed 2 rounds" in out["coordinator"], out["coordinator"]
    assert not any("unsigned" in text for text in out.values()), out
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert (summary["rounds_completed"], summary["updates_rejected"]) == (2, 0)
    assert "u'coordinator'" in broker_log and "u'agent-1'" in broker_log
