"""An agent's configuration file (TOML): the ``fedmq agent`` flags a device keeps on disk.

Top-level keys are the flags' names with ``_`` for ``-`` (``agent_id`` is
``--agent-id``); a ``[policy]`` table holds the resource policy. Values become
the parser's defaults, so any flag given on the command line wins; a
``bundle`` key names a ``fedmq provision`` bundle whose values sit below the
file's own. Relative paths resolve against the file's directory. Unknown keys
and values of the wrong type are refused with the key's name, before anything
runs: a typo in a file read by a service must not be silently ignored.

Invariant: standard library only, so the agent's entry point can read the file
(for its thread budget) before importing numpy.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

Value = str | int | float | bool


@dataclass(frozen=True, slots=True)
class Key:
    """One key: the Python types it accepts, and whether it names a path."""

    types: tuple[type, ...]
    path: bool = False


_STR, _INT, _NUM, _BOOL = (str,), (int,), (int, float), (bool,)

#: top-level keys, each the dest of a ``fedmq agent`` flag
KEYS: dict[str, Key] = {
    "broker": Key(_STR),
    "username": Key(_STR),
    "password": Key(_STR),
    "password_file": Key(_STR, path=True),
    "ca_file": Key(_STR, path=True),
    "mqtt311": Key(_BOOL),
    "bundle": Key(_STR, path=True),
    "signing_key": Key(_STR, path=True),
    "coordinator_key": Key(_STR, path=True),
    "job": Key(_STR),
    "task": Key(_STR),
    "data": Key(_STR, path=True),
    "data_seed": Key(_INT),
    "partition": Key(_STR),
    "agent_id": Key(_STR),
    "shard": Key(_STR),
    "trainer": Key(_STR),
    "threads": Key(_INT),
    "device": Key(_STR),
    "state_dir": Key(_STR, path=True),
    "exit_when_done": Key(_BOOL),
    "finetune_epochs": Key(_INT),
    "log_level": Key(_STR),
}
#: ``[policy]`` keys (docs/EDGE.md), mapped to their flag's dest
POLICY_KEYS: dict[str, tuple[str, Key]] = {
    "windows": ("windows", Key((list,))),
    "max_threads": ("max_threads", Key(_INT)),
    "max_rss_mb": ("max_rss_mb", Key(_NUM)),
    "min_available_mb": ("min_available_mb", Key(_NUM)),
    "hook": ("policy_hook", Key(_STR)),
    "hook_timeout_s": ("hook_timeout_s", Key(_NUM)),
}
_SHARD = re.compile(r"^(\d+)/(\d+)$")
_PY_HOOK = re.compile(r"^[^\s:]+\.py:[A-Za-z_]\w*$")
#: keys whose value is one of a few words (argparse checks ``choices`` on flags only)
CHOICES = {"trainer": ("torch", "numpy"), "log_level": ("DEBUG", "INFO", "WARNING", "ERROR")}


def _type_name(types: tuple[type, ...]) -> str:
    names = {str: "a string", int: "an integer", float: "a number", bool: "true or false",
             list: "a list"}
    return " or ".join(names[t] for t in types)


def _check(where: str, key: str, value: Any, spec: Key) -> None:
    # bool is an int in Python; a TOML ``true`` is never a count
    ok = isinstance(value, spec.types) and not (isinstance(value, bool) and bool not in spec.types)
    if not ok:
        raise ValueError(f"{where}: {key} must be {_type_name(spec.types)}, got {value!r}")


def read_agent_config(path: Path) -> dict[str, Value]:
    """The file's values as ``fedmq agent`` parser defaults (dest -> value).

    A ``bundle`` key's stored flags are merged under the file's own values.

    Raises:
        ValueError: naming the file and key, for bad TOML, an unknown key or a bad value.
        FileNotFoundError: if the file (or its bundle) does not exist.
    """
    try:
        doc = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"{path}: not TOML: {exc}") from None
    base = path.parent
    values: dict[str, Value] = {}
    for key, value in doc.items():
        if key == "policy":
            values.update(_policy(path, value))
            continue
        spec = KEYS.get(key)
        if spec is None:
            raise ValueError(f"{path}: unknown key {key!r} (known: {', '.join(KEYS)}, [policy])")
        _check(str(path), key, value, spec)
        if key == "shard":
            _check_shard(path, value)
        if key in CHOICES and str(value).upper() not in (c.upper() for c in CHOICES[key]):
            raise ValueError(f"{path}: {key} must be one of {', '.join(CHOICES[key])}")
        values[key] = str((base / value).resolve()) if spec.path else value
    bundle = values.pop("bundle", None)
    if bundle is not None:
        from fedmq.bundle import bundle_file, read_bundle  # imports numpy: only when used

        values = {**read_bundle(bundle_file(Path(str(bundle)), "agent")), **values}
    return values


def _policy(path: Path, table: Any) -> dict[str, Value]:
    if not isinstance(table, dict):
        raise ValueError(f"{path}: policy must be a table ([policy])")
    out: dict[str, Value] = {}
    for key, value in table.items():
        entry = POLICY_KEYS.get(key)
        if entry is None:
            raise ValueError(
                f"{path}: unknown key 'policy.{key}' (known: {', '.join(POLICY_KEYS)})"
            )
        dest, spec = entry
        _check(str(path), f"policy.{key}", value, spec)
        if key == "hook" and _PY_HOOK.match(value):  # file.py:function, relative to the file
            where, name = value.rsplit(":", 1)
            out[dest] = f"{(path.parent / where).resolve()}:{name}"
        elif key == "windows":
            if not all(isinstance(w, str) for w in value):
                raise ValueError(f"{path}: policy.windows must be a list of strings")
            out[dest] = ",".join(value)
        else:
            out[dest] = value
    return out


def _check_shard(path: Path, value: str) -> None:
    match = _SHARD.match(value)
    if match is None or not int(match.group(1)) < int(match.group(2)):
        raise ValueError(f"{path}: shard must be 'I/N' with 0 <= I < N, got {value!r}")
