"""Mutations for fuzzing: byte-level edits, field-level edits of a decoded document, random bytes.

Pure functions of a seeded ``random.Random``, so a fuzz run is reproducible from its seed.
"""

from __future__ import annotations

import json
import random
from typing import Any

import msgpack


def mutate_bytes(rng: random.Random, payload: bytes) -> bytes:
    """One to four byte-level edits of ``payload``."""
    out = bytearray(payload)
    for _ in range(rng.randint(1, 4)):
        op = rng.choice(("flip", "set", "insert", "delete", "truncate", "splice"))
        i = rng.randrange(max(len(out), 1))
        if op == "flip" and out:
            out[i] ^= 1 << rng.randrange(8)
        elif op == "set" and out:
            out[i] = rng.randrange(256)
        elif op == "insert":
            out[i:i] = rng.randbytes(rng.randint(1, 8))
        elif op == "delete":
            del out[i : i + rng.randint(1, 8)]
        elif op == "truncate":
            del out[i:]
        elif op == "splice":
            j = rng.randrange(max(len(out), 1))
            out[i:i] = out[j : j + rng.randint(1, 16)]
    return bytes(out)


_ODD_VALUES: tuple[Any, ...] = (
    None, True, -1, 0, 1, 2**31, 2**63 - 1, -(2**63), 1e308, -0.0, float("nan"), float("inf"),
    "", "x" * 300, b"", b"\x00" * 9, [], {}, [1, 2], {"a": 1}, "fedmq", 1.5,
)


def mutate_fields(rng: random.Random, payload: bytes, is_json: bool) -> bytes:
    """Decode ``payload``, replace or drop one value somewhere in it, encode it again."""
    doc: Any = json.loads(payload) if is_json else msgpack.unpackb(payload, raw=False)
    paths: list[tuple[Any, str | int]] = []

    def walk(node: Any) -> None:
        items = node.items() if isinstance(node, dict) else enumerate(node)
        for key, value in items:
            paths.append((node, key))
            if isinstance(value, dict | list):
                walk(value)

    walk(doc)
    if paths:
        parent, key = rng.choice(paths)
        if rng.random() < 0.25:
            del parent[key]
        else:
            parent[key] = rng.choice(_ODD_VALUES)
    if is_json:
        return json.dumps(doc, default=lambda b: b.hex() if isinstance(b, bytes) else None).encode()
    out: bytes = msgpack.packb(doc, use_bin_type=True)
    return out


def mutate(rng: random.Random, payload: bytes, is_json: bool) -> bytes:
    """A mutation of ``payload``: byte edits mostly, field edits often, random bytes sometimes."""
    roll = rng.random()
    if roll < 0.1:
        return rng.randbytes(rng.randint(0, 512))
    if roll < 0.4:
        return mutate_fields(rng, payload, is_json)
    return mutate_bytes(rng, payload)
