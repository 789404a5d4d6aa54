"""Reading a few fields of a msgpack map without decoding the rest.

The coordinator asks of every update whether it is a signed envelope and whether
it is a chunk frame, and the monitor wants a model announcement's round, not its
tensors: for an 800 kB message, decoding (or even copying) the whole payload
would cost more than everything else about it. Values of other keys are skipped
undecoded, and the payload is read as a file, never copied whole.
"""

from __future__ import annotations

import io
from collections.abc import Collection
from typing import Any

import msgpack

#: bytes read at a time: enough for the header fields every message puts first
_READ_SIZE = 4096


def peek_fields(payload: bytes, keys: Collection[str]) -> dict[str, Any]:
    """The values of those of ``keys`` that the map ``payload`` holds.

    Stops reading once every key is found.

    Raises:
        ValueError: if ``payload`` is not a msgpack map (or is cut short).
    """
    unpacker = msgpack.Unpacker(io.BytesIO(payload), raw=False, strict_map_key=True,
                                read_size=_READ_SIZE,
                                max_buffer_size=max(len(payload), _READ_SIZE))
    found: dict[str, Any] = {}
    try:
        for _ in range(unpacker.read_map_header()):
            key = unpacker.unpack()
            if key in keys:
                found[key] = unpacker.unpack()
                if len(found) == len(keys):
                    break
            else:
                unpacker.skip()
    except Exception as exc:  # msgpack raises several unrelated types for bad input
        raise ValueError(f"not a msgpack map ({type(exc).__name__}: {exc})") from None
    return found
