"""The coordinator: a sans-I/O round machine (:mod:`coordinator.rounds`) and its paho adapter."""

from coordinator.aggregate import Aggregate, AggregationError, Aggregator
from coordinator.checkpoint import Checkpoint, CheckpointError, load_checkpoint, save_checkpoint
from coordinator.config import RoundConfig
from coordinator.events import (
    Action,
    BrokerConnected,
    Evaluate,
    Evaluated,
    Event,
    MessageRejected,
    PartialArrived,
    PartialMerged,
    PresenceArrived,
    RoundClosed,
    RoundOpened,
    SaveCheckpoint,
    SecAggArrived,
    Stop,
    StopRequested,
    Tick,
    UpdateAccepted,
    UpdateArrived,
)
from coordinator.rounds import Rounds
from coordinator.strategy import AGGREGATORS, make_aggregator, parse_aggregator
from protocol import Publish

__all__ = [
    "AGGREGATORS",
    "Action",
    "Aggregate",
    "AggregationError",
    "Aggregator",
    "BrokerConnected",
    "Checkpoint",
    "CheckpointError",
    "Evaluate",
    "Evaluated",
    "Event",
    "MessageRejected",
    "PartialArrived",
    "PartialMerged",
    "PresenceArrived",
    "Publish",
    "RoundClosed",
    "RoundConfig",
    "RoundOpened",
    "Rounds",
    "SaveCheckpoint",
    "SecAggArrived",
    "Stop",
    "StopRequested",
    "Tick",
    "UpdateAccepted",
    "UpdateArrived",
    "load_checkpoint",
    "make_aggregator",
    "parse_aggregator",
    "save_checkpoint",
]
