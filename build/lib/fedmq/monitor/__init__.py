"""``fedmq monitor``: watch jobs from their MQTT topics alone.

:mod:`~fedmq.monitor.state` is the pure state model, :mod:`~fedmq.monitor.view`
its rich rendering and :mod:`~fedmq.monitor.run` the paho subscriber.
"""

from fedmq.monitor.events import (
    AgentChanged,
    AgentView,
    Malformed,
    ModelHeader,
    ModelSeen,
    MonitorEvent,
    RoundSeen,
    RunFinished,
    StatusChanged,
    describe,
    to_json,
)
from fedmq.monitor.state import JobView, MonitorState, peek_model_header

__all__ = [
    "AgentChanged",
    "AgentView",
    "JobView",
    "Malformed",
    "ModelHeader",
    "ModelSeen",
    "MonitorEvent",
    "MonitorState",
    "RoundSeen",
    "RunFinished",
    "StatusChanged",
    "describe",
    "peek_model_header",
    "to_json",
]
