"""Wiring: a task and a few settings in, a ready coordinator or agent node out.

The CLI, the demo, the benchmarks and the integration tests all build their
nodes here, so "what a coordinator for task X is" has one definition. The torch
trainer is imported only when an agent or evaluator actually needs it.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from coordinator import Action, CheckpointError, RoundConfig, Rounds, load_checkpoint
from coordinator.mqtt import CoordinatorNode, Evaluator
from edge_agent.agent import AgentAction, AgentCore
from edge_agent.connection import BrokerURL, Session
from edge_agent.feedback import ErrorFeedback, load_residual
from edge_agent.mqtt import AgentNode
from fedmq.tasks import DataConfig, Task, agent_data, get_task, test_data
from protocol import Weights
from protocol.signing import SigningKey, VerifyKey

CHECKPOINT_NAME = "checkpoint.msgpack"
#: an agent's error-feedback residual, under ``{state_dir}/{agent_id}/``
RESIDUAL_NAME = "residual.msgpack"

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
) -> CoordinatorNode:
    """A coordinator for ``config.task``; ``resume`` continues from ``run_dir``'s checkpoint.

    Raises:
        CheckpointError: if ``resume`` is set and the checkpoint is unusable.
    """
    task = get_task(config.task)
    ckpt_path = run_dir / CHECKPOINT_NAME if run_dir is not None else None
    checkpoint = None
    if resume:
        if ckpt_path is None or not ckpt_path.exists():
            raise CheckpointError(f"--resume: no checkpoint at {ckpt_path}")
        checkpoint = load_checkpoint(ckpt_path)
    weights = checkpoint.weights if checkpoint else initial_weights(task, model_seed)
    rounds = Rounds(
        config,
        weights,
        run=checkpoint.run if checkpoint else new_run_id(),
        wall_offset=time.time() - time.monotonic(),
        resume=checkpoint,
    )
    session = Session(
        client_id=f"fedmq-coordinator-{config.job}",
        mqtt5=conn.mqtt5,
        persistent=True,
        resume_session=resume,
        ca_file=conn.ca_file,
    )
    return CoordinatorNode(
        rounds,
        conn.broker,
        session,
        evaluator=evaluator_for(task, data) if config.evaluate else None,
        checkpoint_path=ckpt_path,
        on_action=on_action,
    )


def build_agent(
    settings: AgentSettings,
    conn: Connection,
    on_action: Callable[[AgentAction], None] | None = None,
) -> AgentNode:
    """An agent holding shard ``settings.shard`` of the task's training data."""
    from edge_agent.torch_trainer import TorchTrainer

    task = get_task(settings.task)
    x, y = agent_data(task, settings.data, settings.shard, settings.num_shards, settings.partition)
    trainer = TorchTrainer(task.model, task.kind, x, y, settings.shard, threads=settings.threads)
    residual_path = None
    feedback = ErrorFeedback()
    if settings.state_dir is not None:
        residual_path = settings.state_dir / settings.agent_id / RESIDUAL_NAME
        try:
            feedback = ErrorFeedback(load_residual(residual_path))
        except ValueError as exc:  # a torn or foreign file: start from zero, say so
            log.warning("%s: ignoring the saved residual: %s", settings.agent_id, exc)
    core = AgentCore(
        settings.job,
        settings.agent_id,
        samples=trainer.samples,
        trainer=trainer.name,
        device=settings.device,
        feedback=feedback,
        signing_key=settings.signing_key,
        coordinator_key=settings.coordinator_key,
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
    )
