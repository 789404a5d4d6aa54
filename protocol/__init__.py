"""fedmq's wire contract: topics, messages, their encoding and validation.

Imports numpy, msgpack and the standard library only: never torch, never paho.
"""

from protocol.cohort_hash import CohortHash, asks
from protocol.compress import CODECS, check_codec, decode_delta, encode_delta, raw_size
from protocol.errors import RejectReason, WireError
from protocol.messages import (
    SCHEMA_VERSION,
    ClosedBy,
    ModelAnnouncement,
    ModelDelta,
    Phase,
    Presence,
    RollCall,
    RoundMetrics,
    Scalar,
    Status,
    TrainPlan,
    Update,
)
from protocol.publish import Publish
from protocol.reports import (
    decode_metrics,
    decode_presence,
    decode_rollcall,
    decode_status,
    encode_metrics,
    encode_presence,
    encode_rollcall,
    encode_status,
)
from protocol.tensors import Weights, decode_weights, encode_weights, weights_digest
from protocol.topics import (
    TopicKind,
    TopicRef,
    Topics,
    agent_topic_level,
    check_agent_level,
    check_id,
    parse_topic,
)
from protocol.wire import (
    decode_model,
    decode_model_delta,
    decode_update,
    encode_model,
    encode_model_delta,
    encode_update,
)

__all__ = [
    "CODECS",
    "CohortHash",
    "SCHEMA_VERSION",
    "ClosedBy",
    "ModelAnnouncement",
    "ModelDelta",
    "Phase",
    "Presence",
    "Publish",
    "RollCall",
    "RejectReason",
    "RoundMetrics",
    "Scalar",
    "Status",
    "TopicKind",
    "TopicRef",
    "Topics",
    "TrainPlan",
    "Update",
    "Weights",
    "WireError",
    "check_codec",
    "check_id",
    "decode_delta",
    "decode_metrics",
    "decode_model",
    "decode_model_delta",
    "decode_presence",
    "decode_rollcall",
    "decode_status",
    "decode_update",
    "decode_weights",
    "encode_delta",
    "encode_metrics",
    "encode_model",
    "encode_model_delta",
    "encode_presence",
    "encode_rollcall",
    "encode_status",
    "encode_update",
    "encode_weights",
    "agent_topic_level",
    "asks",
    "check_agent_level",
    "parse_topic",
    "raw_size",
    "weights_digest",
]
