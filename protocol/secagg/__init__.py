"""Secure aggregation (SecAgg, SecAgg+): the maths and the messages both sides share.

The coordinator learns only the sum of the agents' inputs; dropouts up to the
threshold do not stop it. The phase machines are ``coordinator.secagg`` and
``edge_agent.secagg``; the protocol is docs/PROTOCOL.md §14, what it protects
docs/SECURITY.md. Needs ``cryptography`` only when a primitive runs.
"""

from protocol.secagg.fixedpoint import RingSpec, RingSum, choose_frac_bits, ring_length
from protocol.secagg.messages import (
    DownMessage,
    KeysAdvert,
    MaskedInput,
    Participant,
    Relay,
    Revealed,
    Roster,
    Sealed,
    SecAggConfig,
    SecAggPhase,
    Session,
    SharesOut,
    Survivors,
    UnmaskShares,
    UpMessage,
)
from protocol.secagg.wire import (
    decode_config,
    decode_down,
    decode_up,
    encode_config,
    encode_down,
    encode_up,
)

__all__ = [
    "DownMessage",
    "KeysAdvert",
    "MaskedInput",
    "Participant",
    "Relay",
    "Revealed",
    "RingSpec",
    "RingSum",
    "Roster",
    "Sealed",
    "SecAggConfig",
    "SecAggPhase",
    "Session",
    "SharesOut",
    "Survivors",
    "UnmaskShares",
    "UpMessage",
    "choose_frac_bits",
    "decode_config",
    "decode_down",
    "decode_up",
    "encode_config",
    "encode_down",
    "encode_up",
    "ring_length",
]
