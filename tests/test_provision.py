"""`fedmq provision` and bundles: what is written, with which permissions, and how it loads.

No broker here (tests/integration/test_security.py runs one from these files);
the checks are on the files themselves: modes, hashes Mosquitto accepts,
certificates a strict TLS client accepts, keys that pair up, and bundles that
are exactly the CLI's flags.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import hashlib
import logging
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography import x509

from fedmq.bundle import (
    expand_bundle,
    load_agent_keys,
    load_signing_key,
    load_verify_key,
    read_bundle,
    read_password,
)
from fedmq.cli import UNSIGNED_NOTICE, _signed_config, main, parser
from fedmq.credentials import mosquitto_hash
from fedmq.provision import Deployment, provision
from tests.needs import require_program

AGENTS = ("pi-0", "pi-1", "pi-2")
SECRETS = {"ca.key", "server.key", "signing.key", "password", "passwd"}


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Path:
    deployment = Deployment(job="farm", agents=AGENTS, hosts=("broker.example.org", "10.0.0.5"),
                            port=18883, task="mnist-2nn")
    return provision(deployment, tmp_path_factory.mktemp("p") / "fleet")


def test_secrets_are_owner_only_and_every_directory_is_private(fleet: Path):
    files = [p for p in fleet.rglob("*") if p.is_file()]
    assert {p.name for p in files} >= SECRETS | {"agent.toml", "coordinator.toml", "acl"}
    for path in files:
        mode = stat.S_IMODE(path.stat().st_mode)
        assert mode == (0o600 if path.name in SECRETS else 0o644), path
    for path in [fleet, *(p for p in fleet.rglob("*") if p.is_dir())]:
        assert stat.S_IMODE(path.stat().st_mode) == 0o700, path


def test_the_layout_has_one_bundle_per_agent(fleet: Path):
    assert sorted(p.name for p in (fleet / "agents").iterdir()) == list(AGENTS)
    assert sorted(p.name for p in (fleet / "coordinator" / "agents").iterdir()) == [
        f"{a}.pub" for a in AGENTS]
    assert sorted(p.name for p in (fleet / "broker").iterdir()) == [
        "acl", "ca.crt", "mosquitto.conf", "passwd", "server.crt", "server.key"]


def test_provisioning_never_overwrites(fleet: Path, tmp_path: Path):
    with pytest.raises(ValueError, match="not empty"):
        provision(Deployment(job="farm", agents=("x",)), fleet)
    (tmp_path / "empty").mkdir()
    assert provision(Deployment(job="j", agents=("x",)), tmp_path / "empty").is_dir()


@pytest.mark.parametrize(("agents", "match"), [
    ((), "at least one"),
    (("a", "a"), "unique"),
    (("coordinator",), "fedmq's own broker users"),
    (("bad/id",), "invalid agent"),
])
def test_bad_deployments_are_refused(agents: tuple[str, ...], match: str):
    with pytest.raises(ValueError, match=match):
        Deployment(job="j", agents=agents)


# --- broker files ---------------------------------------------------------------------------


def passwd_entries(fleet: Path) -> dict[str, str]:
    lines = (fleet / "broker" / "passwd").read_text().splitlines()
    return dict(line.split(":", 1) for line in lines)


def test_every_user_has_a_pbkdf2_hash_of_its_own_password(fleet: Path):
    entries = passwd_entries(fleet)
    assert sorted(entries) == sorted(["coordinator", "monitor", *AGENTS])
    where = {"coordinator": fleet / "coordinator", "monitor": fleet / "monitor"}
    for user, entry in entries.items():
        _, seven, rounds, salt, digest = entry.split("$")
        secret = read_password(where.get(user, fleet / "agents" / user) / "password")
        expected = hashlib.pbkdf2_hmac("sha512", secret.encode(), base64.b64decode(salt),
                                       int(rounds))
        assert seven == "7" and base64.b64decode(digest) == expected
    assert len({e.split("$")[3] for e in entries.values()}) == len(entries)  # fresh salts


def test_the_hash_matches_mosquitto_passwd(tmp_path: Path):
    path = tmp_path / "pw"
    passwd = require_program("mosquitto_passwd")
    subprocess.run([passwd, "-c", "-b", str(path), "alice", "s3cret"], check=True)
    _, theirs = path.read_text().strip().split(":", 1)
    salt = base64.b64decode(theirs.split("$")[3])
    assert mosquitto_hash("s3cret", salt) == theirs


def test_the_acl_lets_each_agent_write_only_its_own_topics(fleet: Path):
    blocks: dict[str, list[str]] = {}
    user = ""
    for line in (fleet / "broker" / "acl").read_text().splitlines():
        if line.startswith("user "):
            user = line.split()[1]
            blocks[user] = []
        elif line.startswith(("topic", "pattern")):
            assert user, "every grant belongs to a user: nothing is granted to all"
            blocks[user].append(line)
    assert blocks["coordinator"] == ["topic readwrite fedmq/v1/farm/#"]
    assert not any("write" in line or "update" in line for line in blocks["monitor"])
    for agent in AGENTS:
        writes = sorted(line.split()[2] for line in blocks[agent] if " write " in line)
        assert writes == [f"fedmq/v1/farm/agents/{agent}", f"fedmq/v1/farm/secagg/up/{agent}",
                          f"fedmq/v1/farm/update/{agent}"]
        reads = {line.split()[2] for line in blocks[agent] if " read " in line}
        assert reads == {"fedmq/v1/farm/model", "fedmq/v1/farm/model/chunk/+",
                         "fedmq/v1/farm/status", "fedmq/v1/farm/metrics", "fedmq/v1/farm/rollcall",
                         "fedmq/v1/farm/secagg/down", f"fedmq/v1/farm/secagg/down/{agent}"}


def test_the_broker_config_is_the_secure_profile(fleet: Path):
    conf = (fleet / "broker" / "mosquitto.conf").read_text()
    settings = [line.split(None, 1) for line in conf.splitlines()
                if line.strip() and not line.startswith("#")]
    values = {key: value for key, value in settings}
    assert values["allow_anonymous"] == "false"
    # TLS only, no plain listener: MQTT over TLS, and wss for browsers (docs/WEB.md)
    listeners = [i for i, (k, _) in enumerate(settings) if k == "listener"]
    assert [settings[i][1] for i in listeners] == ["18883", "8884"]
    assert settings[listeners[1] + 1] == ["protocol", "websockets"]
    for start, end in zip(listeners, [*listeners[1:], len(settings)], strict=True):
        block = dict(settings[start:end])
        assert {"cafile", "certfile", "keyfile"} <= block.keys()
        assert block["tls_version"] == "tlsv1.2"
    for key in ("password_file", "acl_file", "cafile", "certfile", "keyfile"):
        assert Path(values[key]).is_file() and Path(values[key]).parent == fleet / "broker"
    assert "${" not in conf


def conf_values(fleet: Path) -> dict[str, str]:
    conf = (fleet / "broker" / "mosquitto.conf").read_text()
    return dict(line.split(None, 1) for line in conf.splitlines()  # type: ignore[misc]
                if line.strip() and not line.startswith("#"))


def test_the_broker_caps_payloads_at_what_the_jobs_model_needs(fleet: Path):
    # the 2NN announcement is 797,464 bytes as float32; the broker refuses much more
    cap = int(conf_values(fleet)["max_packet_size"])
    assert 800_000 < cap < 2 * 2**20
    coordinator = read_bundle(fleet / "coordinator" / "coordinator.toml")
    assert coordinator["max_update_bytes"] + 1024 == cap  # the coordinator refuses it too


def test_with_a_payload_cap_the_broker_takes_one_chunk_and_the_coordinator_chunks(
        tmp_path: Path):
    fleet = provision(Deployment(job="j", agents=("a",), task="mnist-2nn", max_payload=131072),
                      tmp_path / "fleet")
    assert int(conf_values(fleet)["max_packet_size"]) == 131072 + 1024
    assert read_bundle(fleet / "coordinator" / "coordinator.toml")["max_payload"] == 131072


def test_without_a_task_the_cap_is_the_coordinators_default_update_limit(tmp_path: Path):
    fleet = provision(Deployment(job="j", agents=("a",)), tmp_path / "fleet")
    assert int(conf_values(fleet)["max_packet_size"]) == 64 * 2**20 + 1024


def test_the_server_certificate_names_every_host_and_chains_to_the_ca(fleet: Path):
    ca = x509.load_pem_x509_certificate((fleet / "broker" / "ca.crt").read_bytes())
    server = x509.load_pem_x509_certificate((fleet / "broker" / "server.crt").read_bytes())
    server.verify_directly_issued_by(ca)
    san = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    names = {str(n.value) for n in san}
    assert names == {"broker.example.org", "10.0.0.5", "localhost", "127.0.0.1"}
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert not server.extensions.get_extension_for_class(x509.BasicConstraints).value.ca


def test_a_strict_tls_client_accepts_the_chain(fleet: Path):
    import ssl

    context = ssl.create_default_context(cafile=str(fleet / "broker" / "ca.crt"))
    context.verify_flags |= ssl.VERIFY_X509_STRICT
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(fleet / "broker" / "server.crt", fleet / "broker" / "server.key")
    client_in, client_out, server_in, server_out = (ssl.MemoryBIO() for _ in range(4))
    client = context.wrap_bio(client_in, client_out, server_hostname="127.0.0.1")
    peer = server.wrap_bio(server_in, server_out, server_side=True)
    for _ in range(10):  # an in-memory handshake: no socket, no thread
        for side in (client, peer):
            with contextlib.suppress(ssl.SSLWantReadError):  # waiting for the other side
                side.do_handshake()
        server_in.write(client_out.read())
        client_in.write(server_out.read())
    assert client.version() is not None and client.getpeercert()["subject"]


# --- keys and bundles -----------------------------------------------------------------------


def test_keys_pair_up_across_bundles(fleet: Path):
    coordinator = load_signing_key(fleet / "coordinator" / "signing.key")
    agent_keys = load_agent_keys(fleet / "coordinator" / "agents")
    assert sorted(agent_keys) == list(AGENTS)
    for agent in AGENTS:
        bundle = fleet / "agents" / agent
        assert load_signing_key(bundle / "signing.key").public == agent_keys[agent]
        assert load_verify_key(bundle / "coordinator.pub") == coordinator.public
    assert len({k.raw for k in agent_keys.values()} | {coordinator.public.raw}) == 4


def test_an_agent_bundle_is_the_agent_commands_flags(fleet: Path):
    bundle = fleet / "agents" / "pi-1"
    args = parser().parse_args(expand_bundle(["agent", "--bundle", str(bundle)]))
    assert (args.broker, args.job, args.task) == ("mqtts://broker.example.org:18883", "farm",
                                                  "mnist-2nn")
    assert (args.agent_id, args.shard, args.username) == ("pi-1", (1, 3), "pi-1")
    assert args.password_file == bundle / "password"
    assert (args.ca_file, args.signing_key) == (bundle / "ca.crt", bundle / "signing.key")
    assert args.coordinator_key == bundle / "coordinator.pub"
    assert len(read_password(args.password_file)) == 32  # 24 random bytes, URL-safe base64


def test_flags_on_the_command_line_win_over_the_bundle(fleet: Path):
    bundle = fleet / "agents" / "pi-1" / "agent.toml"
    argv = ["--log-level", "INFO", "agent", "--job", "other", f"--bundle={bundle}",
            "--broker", "mqtts://127.0.0.1:1"]
    args = parser().parse_args(expand_bundle(argv))
    assert (args.job, args.broker, args.agent_id) == ("other", "mqtts://127.0.0.1:1", "pi-1")


def test_a_coordinator_bundle_loads_its_keys(fleet: Path, capsys: pytest.CaptureFixture[str]):
    argv = expand_bundle(["coordinator", "--bundle", str(fleet / "coordinator")])
    args = parser().parse_args(argv)
    assert args.username == "coordinator" and args.agent_keys == fleet / "coordinator" / "agents"
    from fedmq.round_flags import round_config

    config = _signed_config(round_config(args, args.job), args)
    assert config.allowed_agents == frozenset(AGENTS) and config.signing_key is not None
    assert capsys.readouterr().err == ""


def test_without_keys_the_coordinator_says_it_runs_unsigned(capsys: pytest.CaptureFixture[str]):
    args = parser().parse_args(["coordinator", "--job", "j", "--task", "linreg",
                                "--broker", "mqtt://127.0.0.1:1"])
    from fedmq.round_flags import round_config

    config = _signed_config(round_config(args, args.job), args)
    assert config.agent_keys is None and config.signing_key is None
    assert UNSIGNED_NOTICE in capsys.readouterr().err


def test_bundle_paths_resolve_against_the_bundle_wherever_it_is_copied(fleet: Path,
                                                                      tmp_path: Path):
    copy = tmp_path / "device"
    shutil.copytree(fleet / "agents" / "pi-0", copy)
    flags = read_bundle(copy / "agent.toml")
    assert flags["signing_key"] == str(copy / "signing.key")
    assert load_signing_key(Path(str(flags["signing_key"])))


def test_a_password_file_others_can_read_is_used_with_a_warning(tmp_path: Path,
                                                                caplog: pytest.LogCaptureFixture):
    path = tmp_path / "password"
    path.write_text("s3cret\n")
    path.chmod(0o644)
    with caplog.at_level(logging.WARNING, logger="fedmq.bundle"):
        assert read_password(path) == "s3cret"
    assert "chmod 600" in caplog.text


def test_a_missing_or_broken_bundle_is_a_clear_error(tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]):
    assert main(["agent", "--bundle", str(tmp_path / "nowhere")]) == 2
    assert "--bundle" in capsys.readouterr().err
    (tmp_path / "agent.toml").write_text("job = [1, 2]\n")
    assert main(["agent", "--bundle", str(tmp_path)]) == 2
    assert "must be a string" in capsys.readouterr().err


def test_the_provision_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    out = tmp_path / "fleet"
    assert main(["provision", "--job", "j", "--agents", "2", "--out", str(out)]) == 0
    assert "fedmq agent --bundle" in capsys.readouterr().out
    assert sorted(p.name for p in (out / "agents").iterdir()) == ["agent-0", "agent-1"]
    assert "task" not in read_bundle(out / "agents" / "agent-0" / "agent.toml")
    assert main(["provision", "--job", "j", "--agents", "2", "--out", str(out)]) == 2


def test_cli_parser_knows_every_bundle_key(fleet: Path):
    flags = {a.dest for a in _subparser("agent")._actions}
    assert set(read_bundle(fleet / "agents" / "pi-0" / "agent.toml")) <= flags
    flags = {a.dest for a in _subparser("coordinator")._actions}
    assert set(read_bundle(fleet / "coordinator" / "coordinator.toml")) <= flags


def _subparser(name: str) -> argparse.ArgumentParser:
    sub = next(a for a in parser()._actions if isinstance(a, argparse._SubParsersAction))
    found: argparse.ArgumentParser = sub.choices[name]
    return found


BLOCK_CRYPTOGRAPHY = """
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "cryptography":
            raise ImportError("cryptography is not installed")
sys.meta_path.insert(0, Block())
"""


def test_an_unsigned_agent_needs_no_cryptography(fleet: Path):
    # A torch-free, crypto-free device imports the protocol, the agent core and the CLI;
    # only loading a key asks for the `secure` extra, and says so.
    script = BLOCK_CRYPTOGRAPHY + f"""
import protocol, edge_agent.agent, edge_agent.mqtt, fedmq.cli
from fedmq.bundle import load_signing_key
assert "cryptography" not in sys.modules
try:
    load_signing_key(__import__("pathlib").Path({str(fleet / "agents/pi-0/signing.key")!r}))
except ValueError as exc:
    print(exc)
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          check=True, timeout=60)
    assert "pip install 'fedmq[secure]'" in done.stdout
