"""Bundles: a node's stored command-line flags (one TOML file) and the key files they name.

``fedmq provision`` writes one bundle per device and one for the coordinator.
A bundle's TOML keys are the flags of ``fedmq agent`` / ``fedmq coordinator``
with ``_`` for ``-`` (``agent_id`` is ``--agent-id``), so a bundle is nothing
but flags kept in a file: ``--bundle DIR`` inserts them right after the
sub-command, and any flag also given on the command line wins, because
argparse keeps the last value. Relative paths resolve against the TOML file's
directory, so a bundle works wherever it is copied.

This is the only place that reads keys and passwords from files; the cores get
them as values (:class:`~protocol.signing.SigningKey`, :class:`~protocol.signing.VerifyKey`).
"""

from __future__ import annotations

import logging
import stat
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from protocol import check_id
from protocol.keys import NEEDS_CRYPTOGRAPHY, SigningKey, VerifyKey

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

log = logging.getLogger("fedmq.bundle")

#: the sub-commands that take ``--bundle``, and the TOML file a bundle directory holds for each
BUNDLE_FILES = {"agent": "agent.toml", "coordinator": "coordinator.toml"}
#: keys whose values are paths, resolved against the bundle's directory
PATH_KEYS = frozenset(
    {"password_file", "ca_file", "signing_key", "coordinator_key", "agent_keys", "data",
     "state_dir", "run_dir"}
)
#: where a coordinator bundle keeps the agents' public keys, one ``AGENT_ID.pub`` each
PUBLIC_KEY_SUFFIX = ".pub"

Value = str | int | float | bool


def bundle_file(path: Path, command: str) -> Path:
    """The TOML file of a bundle given as its directory or as the file itself."""
    return path / BUNDLE_FILES[command] if path.is_dir() else path


def read_bundle(path: Path) -> dict[str, Value]:
    """The flags stored in a bundle's TOML file, with paths made absolute.

    Raises:
        ValueError: for a file that is not TOML or holds a value that is not a flag value.
        FileNotFoundError: if the file does not exist.
    """
    try:
        doc = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"{path}: not TOML: {exc}") from None
    flags: dict[str, Value] = {}
    for key, value in doc.items():
        if not isinstance(value, str | int | float | bool):
            raise ValueError(f"{path}: {key} must be a string, number or boolean")
        is_path = key in PATH_KEYS and isinstance(value, str)
        flags[key] = str((path.parent / str(value)).resolve()) if is_path else value
    return flags


def bundle_flags(values: Mapping[str, Value]) -> list[str]:
    """``{"agent_id": "pi-7", "mqtt311": True}`` as ``["--agent-id=pi-7", "--mqtt311"]``."""
    flags: list[str] = []
    for key, value in values.items():
        flag = "--" + key.replace("_", "-")
        if isinstance(value, bool):
            flags += [flag] if value else []
        else:
            flags.append(f"{flag}={value}")  # one token: a value may start with '-'
    return flags


def expand_bundle(argv: Sequence[str]) -> list[str]:
    """``argv`` with a ``--bundle``'s stored flags inserted right after the sub-command.

    Explicit flags come later on the line, so they override the bundle's.

    Raises:
        ValueError, FileNotFoundError: for an unreadable bundle.
    """
    args = list(argv)
    command = next((i for i, a in enumerate(args) if a in BUNDLE_FILES), None)
    if command is None:
        return args
    for i in range(command + 1, len(args)):
        token = args[i]
        if token == "--bundle" and i + 1 < len(args):
            where = args[i + 1]
        elif token.startswith("--bundle="):
            where = token.split("=", 1)[1]
        else:
            continue
        stored = read_bundle(bundle_file(Path(where), args[command]))
        return [*args[: command + 1], *bundle_flags(stored), *args[command + 1 :]]
    return args


def read_password(path: Path) -> str:
    """The MQTT password in ``path`` (one line); warns if others may read the file."""
    if path.stat().st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        log.warning("%s is readable by others: chmod 600 it", path)
    password = path.read_text().rstrip("\r\n")
    if not password:
        raise ValueError(f"{path} holds no password")
    return password


def load_signing_key(path: Path) -> SigningKey:
    """An Ed25519 private key from a PEM file.

    Raises:
        ValueError: for another kind of file, or without ``cryptography`` installed.
    """
    if path.stat().st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        log.warning("%s is readable by others: chmod 600 it", path)
    try:
        return SigningKey.from_pem(path.read_bytes())
    except ImportError:
        raise ValueError(NEEDS_CRYPTOGRAPHY) from None
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from None


def load_verify_key(path: Path) -> VerifyKey:
    """An Ed25519 public key from a PEM file.

    Raises:
        ValueError: for another kind of file, or without ``cryptography`` installed.
    """
    try:
        return VerifyKey.from_pem(path.read_bytes())
    except ImportError:
        raise ValueError(NEEDS_CRYPTOGRAPHY) from None
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from None


def load_agent_keys(directory: Path) -> dict[str, VerifyKey]:
    """Every agent's update key: ``AGENT_ID.pub`` files in ``directory``.

    Raises:
        ValueError: for a bad file name or key, or a directory with no keys (a
            coordinator that requires signatures from nobody would accept nothing).
    """
    keys: dict[str, VerifyKey] = {}
    for path in sorted(directory.glob(f"*{PUBLIC_KEY_SUFFIX}")):
        keys[check_id(path.name[: -len(PUBLIC_KEY_SUFFIX)], "agent")] = load_verify_key(path)
    if not keys:
        raise ValueError(f"no agent keys (AGENT_ID{PUBLIC_KEY_SUFFIX}) in {directory}")
    return keys
