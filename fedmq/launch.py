"""Wiring: a task and a few settings in, a ready coordinator or agent node out.

The CLI, the demo, the benchmarks and the integration tests all build their
nodes here, so "what a coordinator for task X is" has one definition. The torch
trainer is imported only when an agent or evaluator actually needs it, and the
coordinator package only when a coordinator is built, so ``fedmq agent`` on a
small device loads neither.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edge_agent.agent import AgentAction, AgentCore
from edge_agent.device_model import load_device_model
from edge_agent.feedback import ErrorFeedback
from edge_agent.mqtt import AgentNode
from edge_agent.personal import DeviceTrainer, LocalModel, local_layers, shared_weights
from edge_agent.policy import ResourcePolicy
from edge_agent.state import DEVICE_MODEL_NAME, RESIDUAL_NAME, StateDir
from fedmq.tasks import DataConfig, Task, agent_data, get_task, test_data
from protocol import Weights
from protocol.keys import SigningKey, VerifyKey
from transport.connection import BrokerURL, Session, packet_bound

if TYPE_CHECKING:
    from coordinator import Action, RoundConfig, Rounds
    from coordinator.mqtt import CoordinatorNode, Evaluator
    from coordinator.staleness import BufferConfig

CHECKPOINT_NAME = "checkpoint.msgpack"

log = logging.getLogger("fedmq.launch")


@dataclass(frozen=True, slots=True)
class Connection:
    """How a node reaches the broker."""

    broker: BrokerURL
    mqtt5: bool = True
    ca_file: Path | None = None


@dataclass(frozen=True, slots=True)
class AgentSettings:
    """One agent: which shard of which task, and how it trains."""

    job: str
    task: str
    agent_id: str
    shard: int
    num_shards: int
    partition: str | None = None
    data: DataConfig = field(default_factory=DataConfig)
    threads: int | None = None
    exit_when_done: bool = True
    device: str | None = None
    #: where the agent keeps state across restarts (the codec residual); None: memory only
    state_dir: Path | None = None
    #: signs the agent's updates (docs/SECURITY.md); None: updates go out unsigned
    signing_key: SigningKey | None = None
    #: when set, only models signed with this key are trained on
    coordinator_key: VerifyKey | None = None
    #: epochs of local fine-tuning of the run's final model (the device model; never sent)
    finetune_epochs: int = 0
    #: ``torch``, or ``numpy`` for devices without torch (linear and mlp models)
    trainer: str = "torch"
    #: when this device may train (None: always)
    policy: ResourcePolicy | None = None
    #: seconds of artificial delay after each training: a simulated slow device
    train_delay_s: float = 0.0


def new_run_id() -> str:
    return uuid.uuid4().hex[:12]


def initial_weights(task: Task, seed: int) -> Weights:
    from edge_agent.torch_trainer import initial_weights as torch_initial_weights

    return torch_initial_weights(task.model, seed)


def evaluator_for(task: Task, data: DataConfig, threads: int | None = None) -> Evaluator:
    """Server-side evaluation on the task's held-out test set."""
    from edge_agent.torch_trainer import TorchEvaluator

    x, y = test_data(task, data)
    return TorchEvaluator(task.model, task.kind, x, y, threads=threads).evaluate


def build_coordinator(
    config: RoundConfig,
    conn: Connection,
    *,
    data: DataConfig,
    run_dir: Path | None,
    resume: bool = False,
    model_seed: int = 0,
    on_action: Callable[[Action], None] | None = None,
    buffer: BufferConfig | None = None,
    take_updates: bool = True,
) -> CoordinatorNode:
    """A coordinator for ``config.task``; ``resume`` continues from ``run_dir``'s checkpoint;
    ``buffer`` makes it a buffered asynchronous (FedBuff) one; ``take_updates`` False leaves
    the updates to ingest workers.

    Raises:
        CheckpointError: if ``resume`` is set and the checkpoint is unusable.
    """
    from coordinator import CheckpointError, load_checkpoint
    from coordinator import Rounds as SyncRounds
    from coordinator.buffered import BufferedRounds
    from coordinator.mqtt import CoordinatorNode

    task = get_task(config.task)
    ckpt_path = run_dir / CHECKPOINT_NAME if run_dir is not None else None
    checkpoint = None
    if resume:
        if ckpt_path is None or not ckpt_path.exists():
            raise CheckpointError(f"--resume: no checkpoint at {ckpt_path}")
        checkpoint = load_checkpoint(ckpt_path)
    # Personal layers (FedPer) never leave the devices: the global model is the rest.
    personal = local_layers(config.plan)
    weights = checkpoint.weights if checkpoint else initial_weights(task, model_seed)
    if personal and not checkpoint:
        weights = shared_weights(weights, personal)
    run = checkpoint.run if checkpoint else new_run_id()
    wall_offset = time.time() - time.monotonic()
    rounds: Rounds | BufferedRounds = (
        SyncRounds(config, weights, run=run, wall_offset=wall_offset, resume=checkpoint)
        if buffer is None
        else BufferedRounds(
            config, buffer, weights, run=run, wall_offset=wall_offset, resume=checkpoint
        )
    )
    session = Session(
        client_id=f"fedmq-coordinator-{config.job}",
        mqtt5=conn.mqtt5,
        persistent=True,
        resume_session=resume,
        ca_file=conn.ca_file,
        # an MQTT 5 broker then drops anything larger instead of handing it over
        max_packet_size=packet_bound(config.max_message_bytes),
    )
    return CoordinatorNode(
        rounds,
        conn.broker,
        session,
        # A personalised model has no one global head to test: agents report their own
        # training metrics instead (docs/STRATEGIES.md, "Personalisation").
        evaluator=evaluator_for(task, data) if config.evaluate and not personal else None,
        checkpoint_path=ckpt_path,
        on_action=on_action,
        take_updates=take_updates,
    )


def build_agent(
    settings: AgentSettings,
    conn: Connection,
    on_action: Callable[[AgentAction], None] | None = None,
) -> AgentNode:
    """An agent holding shard ``settings.shard`` of the task's training data."""
    task = get_task(settings.task)
    x, y = agent_data(task, settings.data, settings.shard, settings.num_shards, settings.partition)
    model = make_trainer(settings, task, x, y)
    residual_path = device_model_path = None
    feedback = ErrorFeedback()
    saved = None
    state = None
    held = None
    if settings.state_dir is not None:
        state = StateDir(settings.state_dir, settings.agent_id)  # drops torn temporaries
        residual_path = state.path / RESIDUAL_NAME
        device_model_path = state.path / DEVICE_MODEL_NAME
        try:  # personal layers carry over a restart
            saved = load_device_model(device_model_path)
        except ValueError as exc:
            log.warning("%s: ignoring the saved device model: %s", settings.agent_id, exc)
        feedback = ErrorFeedback(state.load_residual())  # a bad file is set aside, logged
        kept = state.load_model()  # deltas apply to it after a restart (docs/PROTOCOL.md §15)
        held = kept.held() if kept is not None and kept.job == settings.job else None
    trainer = DeviceTrainer(model, finetune_epochs=settings.finetune_epochs, saved=saved)
    core = AgentCore(
        settings.job,
        settings.agent_id,
        samples=trainer.samples,
        trainer=trainer.name,
        device=settings.device,
        feedback=feedback,
        signing_key=settings.signing_key,
        coordinator_key=settings.coordinator_key,
        held=held,
        # one per process: the coordinator tells this process's last will from a late one
        # of an earlier process (coordinator/roster.py)
        session=uuid.uuid4().hex[:12],
    )
    session = Session(
        client_id=f"fedmq-{settings.job}-{settings.agent_id}",
        mqtt5=conn.mqtt5,
        ca_file=conn.ca_file,
    )
    return AgentNode(
        core,
        trainer,
        conn.broker,
        session,
        exit_when_done=settings.exit_when_done,
        on_action=on_action,
        residual_path=residual_path,
        device=trainer,
        device_model_path=device_model_path,
        state=state,
        policy=settings.policy,
        train_delay_s=settings.train_delay_s,
    )


def make_trainer(settings: AgentSettings, task: Task, x: Any, y: Any) -> LocalModel:
    """``settings.trainer`` over these rows; torch is imported only when it is the choice.

    Raises:
        ValueError: for another trainer name, or a model the numpy trainer cannot build.
    """
    if settings.trainer == "numpy":
        from edge_agent.numpy_trainer import NumpyTrainer

        return NumpyTrainer(task.model, task.kind, x, y, settings.shard)
    if settings.trainer != "torch":
        raise ValueError(f"trainer must be torch or numpy, got {settings.trainer!r}")
    from edge_agent.torch_trainer import TorchTrainer

    return TorchTrainer(task.model, task.kind, x, y, settings.shard, threads=settings.threads)
