"""Pure test helpers: a numpy fake trainer, an independent FedAvg oracle, and the Fleet.

The :class:`Fleet` wires one coordinator core (:class:`coordinator.Rounds`) and N
agent cores (:class:`edge_agent.agent.AgentCore`) back to back through the real
encoders and decoders, as h11's ``ConnectionPair`` does for two connections
(STYLE.md section 6). A dictionary plays the broker (retained messages, QoS 1
delivery), a float plays the clock, and each agent's link can lose, duplicate,
reorder or hold messages, or die. Nothing here opens a socket, starts a thread,
reads a clock or sleeps, so a many-round run takes milliseconds.
"""

from __future__ import annotations

import dataclasses
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import numpy as np
import numpy.typing as npt
from typing_extensions import assert_never

from coordinator import (
    Action,
    BrokerConnected,
    Checkpoint,
    Evaluate,
    Evaluated,
    Event,
    MessageRejected,
    PartialMerged,
    PresenceArrived,
    RoundClosed,
    RoundConfig,
    RoundOpened,
    Rounds,
    SaveCheckpoint,
    SecAggArrived,
    Stop,
    Tick,
    UpdateAccepted,
    UpdateArrived,
    save_checkpoint,
)
from edge_agent.agent import (
    AgentAction,
    AgentCore,
    AgentEvent,
    Connected,
    KeepModel,
    ModelRejected,
    RoundKey,
    RunFinished,
    SaveResidual,
    ShutdownRequested,
    Subscribe,
    Train,
    TrainingDone,
    TrainingFailed,
    Unsubscribe,
    UpdateSent,
)
from edge_agent.downlink import HeldModel
from edge_agent.feedback import ErrorFeedback
from edge_agent.trainer import TrainResult
from protocol import (
    ModelAnnouncement,
    Publish,
    RoundMetrics,
    TopicKind,
    TrainPlan,
    Update,
    Weights,
    decode_model,
    encode_delta,
    encode_update,
    parse_topic,
    weights_digest,
)

ActionT = TypeVar("ActionT", bound=Action)

#: The coordinator's address in the fake broker (agent ids never contain ':').
COORDINATOR = ":coordinator"

IN_DIM, OUT_DIM = 4, 2


def initial_weights(seed: int = 0, in_dim: int = IN_DIM, out_dim: int = OUT_DIM) -> Weights:
    """A small linear model ``y = x @ w + b``: ``w`` (in_dim, out_dim), ``b`` (out_dim,)."""
    rng = np.random.default_rng([seed, 12345])
    return {
        "w": rng.normal(0.0, 0.1, size=(in_dim, out_dim)).astype(np.float32),
        "b": np.zeros(out_dim, dtype=np.float32),
    }


def copy_weights(weights: Mapping[str, npt.NDArray[np.float32]]) -> Weights:
    return {name: np.array(arr, dtype=np.float32, copy=True) for name, arr in weights.items()}


def small_update(rounds: Rounds, agent: str, job: str = "job1") -> bytes:
    """``agent``'s update for ``rounds``' next round: every weight moved by 0.01, 10 samples."""
    delta = {n: np.full(a.shape, 0.01, np.float32) for n, a in rounds.weights.items()}
    return encode_update(Update(job=job, agent=agent, round=rounds.completed_rounds + 1,
                                model_id=weights_digest(rounds.weights), samples=10, codec="none",
                                tensors=tuple(encode_delta(delta, "none"))))


def announced(actions: Sequence[object]) -> list[ModelAnnouncement]:
    """The model announcements among ``actions``, in order."""
    return [decode_model(a.payload) for a in actions
            if isinstance(a, Publish) and parse_topic(a.topic).kind is TopicKind.MODEL]


def assert_weights_close(
    actual: Mapping[str, npt.NDArray[np.float32]],
    expected: Mapping[str, npt.NDArray[np.float32]],
) -> None:
    """Same names, shapes and dtype; values equal up to float32 rounding.

    Streaming float64 sums and ``np.average`` add in different orders, so after the
    cast to float32 a value may differ in its last bit; nothing else is allowed.
    """
    assert list(actual) == list(expected)
    for name, want in expected.items():
        assert actual[name].dtype == np.float32 and actual[name].shape == want.shape
        np.testing.assert_allclose(actual[name], want, rtol=1e-6, atol=1e-7)


def weights_equal(
    a: Mapping[str, npt.NDArray[np.float32]], b: Mapping[str, npt.NDArray[np.float32]]
) -> bool:
    """Same names in the same order, same shapes, same dtype, same bits."""
    return list(a) == list(b) and all(
        a[n].dtype == b[n].dtype and a[n].shape == b[n].shape and np.array_equal(a[n], b[n])
        for n in a
    )


class LinearTrainer:
    """A deterministic numpy trainer (the ``Trainer`` protocol) for a linear regression.

    Agent ``index`` holds ``samples`` rows of ``y = x @ W* + 0.5 + noise`` (one
    shared ``W*``). ``train`` runs ``plan.epochs`` epochs of minibatch gradient
    descent on the squared error, shuffling round ``r`` with
    ``default_rng([plan.seed, r, index])`` as the protocol asks, so the result
    depends on the weights, the plan and the round number, and on nothing else.
    """

    name = "numpy-linreg"

    def __init__(self, index: int, samples: int, *, data_seed: int = 0) -> None:
        if samples < 1:
            raise ValueError("samples must be >= 1")
        self.index = index
        self.samples = samples
        truth = np.random.default_rng([data_seed, 0])
        true_w = truth.normal(size=(IN_DIM, OUT_DIM))
        rng = np.random.default_rng([data_seed, 1, index])
        self._x = rng.normal(size=(samples, IN_DIM))  # (n, in) float64
        noise = rng.normal(scale=0.1, size=(samples, OUT_DIM))
        self._y = self._x @ true_w + 0.5 + noise  # (n, out) float64
        self.calls: list[int] = []

    def _mse(self, w: npt.NDArray[np.float64], b: npt.NDArray[np.float64]) -> float:
        err = self._x @ w + b - self._y
        return float(np.mean(err**2))

    def train(self, weights: Weights, plan: TrainPlan, round_no: int) -> TrainResult:
        self.calls.append(round_no)
        w = weights["w"].astype(np.float64)
        b = weights["b"].astype(np.float64)
        loss = self._mse(w, b)
        rng = np.random.default_rng([plan.seed, round_no, self.index])
        for _ in range(plan.epochs):
            order = rng.permutation(self.samples)
            for start in range(0, self.samples, plan.batch_size):
                rows = order[start : start + plan.batch_size]
                x, y = self._x[rows], self._y[rows]
                err = x @ w + b - y  # (batch, out)
                w = w - plan.lr * 2.0 * (x.T @ err) / len(rows)
                b = b - plan.lr * 2.0 * err.mean(axis=0)
        local = {"w": w.astype(np.float32), "b": b.astype(np.float32)}
        return TrainResult(local, self.samples, {"loss": loss})

    def evaluate(self, weights: Weights) -> dict[str, float]:
        mse = self._mse(weights["w"].astype(np.float64), weights["b"].astype(np.float64))
        return {"loss": mse, "accuracy": 1.0 / (1.0 + mse)}


def fedavg_step(
    weights: Weights, results: Sequence[TrainResult], *, by_samples: bool = True
) -> Weights:
    """One FedAvg step computed independently of ``coordinator.aggregate``: ``np.average``."""
    deltas = [{n: r.weights[n] - weights[n] for n in weights} for r in results]
    counts = [r.samples if by_samples else 1 for r in results]
    out: Weights = {}
    for name, w in weights.items():
        avg = np.average(np.stack([d[name] for d in deltas]), axis=0, weights=counts)
        out[name] = (w + avg.astype(np.float32)).astype(np.float32)
    return out


def expected_fedavg(
    weights: Weights,
    trainers: Mapping[str, LinearTrainer],
    plan: TrainPlan,
    participants: Sequence[Sequence[str]],
) -> Weights:
    """The global model after ``len(participants)`` rounds; ``participants[r-1]`` train round r."""
    current = copy_weights(weights)
    for round_no, agents in enumerate(participants, start=1):
        results = [trainers[a].train(current, plan, round_no) for a in agents]
        current = fedavg_step(current, results)
    return current


@dataclass(slots=True)
class Link:
    """The network between the broker and one agent, both directions.

    ``drop_up``/``drop_down`` lose that many next messages; ``loss`` loses each
    message with that probability (from the fleet's seeded generator);
    ``duplicate`` delivers everything twice (QoS 1 redelivery); ``reorder``
    lets everything else in flight overtake this link's messages; ``paused``
    holds messages until it is cleared; ``dead`` means the device is gone.
    """

    loss: float = 0.0
    drop_up: int = 0
    drop_down: int = 0
    duplicate: bool = False
    reorder: bool = False
    paused: bool = False
    dead: bool = False


@dataclass(slots=True)
class _Message:
    to: str
    topic: str
    payload: bytes
    via: str
    deferred: bool = False


@dataclass(slots=True)
class FleetStats:
    lost: int = 0
    delivered: int = 0
    trained: list[tuple[str, RoundKey]] = field(default_factory=list)
    #: payload bytes each agent received on the model and delta topics
    received: dict[str, int] = field(default_factory=dict)


def topic_matches(pattern: str, topic: str) -> bool:
    """MQTT topic filter matching: ``+`` one level, ``#`` the rest."""
    want, got = pattern.split("/"), topic.split("/")
    for i, level in enumerate(want):
        if level == "#":
            return True
        if i >= len(got) or (level != "+" and level != got[i]):
            return False
    return len(want) == len(got)


class Fleet:
    """One ``Rounds`` and ``n_agents`` ``AgentCore`` driven through real bytes on a fake clock.

    Agents are ``a0 .. a{n-1}``; agent ``k`` holds ``samples[k]`` rows (default
    ``10 * (k + 1)``). Every public method that injects something runs the
    network until it is quiet. Time moves only through :meth:`advance` and
    :meth:`advance_to_deadline`.

    The status goes out on every change (``status_interval_s=0``), so that a deadline
    is a round's: tests of the paced status drive :class:`Rounds` themselves.
    """

    def __init__(
        self,
        n_agents: int,
        config: RoundConfig,
        *,
        weights: Weights | None = None,
        samples: Sequence[int] | None = None,
        run: str = "run1",
        seed: int = 0,
        resume: Checkpoint | None = None,
        evaluate: Callable[[int, Weights], dict[str, float]] | None = None,
        checkpoint_path: Path | None = None,
    ) -> None:
        config = dataclasses.replace(config, status_interval_s=0.0)
        self.config = config
        #: where SaveCheckpoint actions are written, as the coordinator's adapter does
        self.checkpoint_path = checkpoint_path
        self.run_id = run
        self.initial_weights = copy_weights(weights if weights is not None else initial_weights())
        self.now = 0.0
        self.rng = np.random.default_rng(seed)
        self.agent_ids = [f"a{k}" for k in range(n_agents)]
        counts = list(samples) if samples is not None else [10 * (k + 1) for k in range(n_agents)]
        self.trainers = {a: LinearTrainer(k, counts[k]) for k, a in enumerate(self.agent_ids)}
        self.agents = {
            a: AgentCore(config.job, a, samples=counts[k], trainer=LinearTrainer.name,
                         random_bytes=np.random.default_rng([seed, k]).bytes)
            for k, a in enumerate(self.agent_ids)
        }
        self.links = {a: Link() for a in self.agent_ids}
        #: each agent's topic filters at the fake broker (its session's subscriptions)
        self.subscribed: dict[str, set[str]] = {a: set() for a in self.agent_ids}
        #: the version each agent last asked to keep (what its state directory holds)
        self.kept: dict[str, HeldModel] = {}
        #: agents whose trainer fails (the core then declines)
        self.failing: set[str] = set()
        self._holdout = LinearTrainer(10_000, 64)
        self.evaluate = evaluate or (lambda _round, w: self._holdout.evaluate(w))
        self.rounds = Rounds(config, copy_weights(self.initial_weights), run=run, resume=resume)
        self.coordinator_up = True
        self.retained: dict[str, bytes] = {}
        self.in_flight: deque[_Message] = deque()
        #: every action the coordinator produced, in order (across restarts)
        self.actions: list[Action] = []
        self.agent_actions: dict[str, list[AgentAction]] = {a: [] for a in self.agent_ids}
        self.checkpoints: list[Checkpoint] = []
        self.stop: Stop | None = None
        self.stats = FleetStats()
        #: called with each coordinator action after it is carried out; it may call back
        #: into the fleet (kill an agent, crash the coordinator): events it causes are
        #: queued and handled after the current event, as in the real adapters
        self.on_action: Callable[[Fleet, Action], None] | None = None
        self._inbox: deque[Event] = deque()
        self._feeding = False
        self._pumping = False

    # --- views ------------------------------------------------------------------------

    @property
    def weights(self) -> Weights:
        return self.rounds.weights

    @property
    def history(self) -> tuple[RoundMetrics, ...]:
        return self.rounds.history

    def of_type(self, kind: type[ActionT]) -> list[ActionT]:
        """The coordinator's actions of one kind, in order."""
        return [a for a in self.actions if isinstance(a, kind)]

    def rejections(self) -> list[MessageRejected]:
        return [a for a in self.actions if isinstance(a, MessageRejected)]

    def closed(self) -> list[RoundMetrics]:
        return [a.metrics for a in self.actions if isinstance(a, RoundClosed)]

    def retained_model(self) -> ModelAnnouncement:
        return decode_model(self.retained[self.rounds.topics.model])

    def trains_of(self, agent: str) -> list[RoundKey]:
        return [key for who, key in self.stats.trained if who == agent]

    # --- driving ----------------------------------------------------------------------

    def start(self) -> None:
        """The coordinator connects, then every live agent connects and announces itself."""
        self._feed_coordinator(BrokerConnected())
        for agent in self.agent_ids:
            if not self.links[agent].dead:
                self._connect(agent)
        self.pump()

    def advance(self, seconds: float) -> None:
        """Move the clock, give the coordinator a Tick (as its adapter's timer does), settle."""
        if seconds < 0:
            raise ValueError("time does not go backwards")
        self.now += seconds
        self._feed_coordinator(Tick())
        self.pump()

    def advance_to_deadline(self) -> float:
        """Jump to the coordinator's next deadline and tick there; returns that time."""
        deadline = self.rounds.next_deadline()
        if deadline is None:
            raise AssertionError(f"no deadline pending (phase {self.rounds.phase.value})")
        self.advance(max(0.0, deadline - self.now))
        return deadline

    def run_to_end(self, max_deadlines: int = 100) -> None:
        """Settle, then pass deadlines until the run is finished."""
        self.pump()
        for _ in range(max_deadlines):
            if self.rounds.finished or not self.coordinator_up:
                return
            self.advance_to_deadline()
        raise AssertionError("run did not finish")

    def send(self, event: Event) -> list[Action]:
        """Feed the coordinator one event directly (an operator stop, raw bytes); settle."""
        produced = self._feed_coordinator(event)
        self.pump()
        return produced

    def kill(self, agent: str, *, will: bool = True) -> None:
        """The device dies; with ``will`` the broker publishes its last will (offline)."""
        self.links[agent].dead = True
        if will:
            self._broker_publish(agent, self.agents[agent].will())
        self.pump()

    def shutdown(self, agent: str) -> None:
        """The agent stops cleanly: it says it is offline, then disconnects."""
        self._feed_agent(agent, ShutdownRequested())
        self.links[agent].dead = True
        self.pump()

    def reconnect(self, agent: str) -> None:
        """The agent's session comes back (a revived device or a dropped TCP connection)."""
        self.links[agent].dead = False
        self._connect(agent)
        self.pump()

    def restart_agent(self, agent: str) -> None:
        """The agent's process restarts: a new core from what its state directory kept (the
        last version it held and its residual), then it connects again."""
        old = self.agents[agent]
        self.links[agent].dead = True
        self.agents[agent] = AgentCore(
            self.config.job, agent, samples=self.trainers[agent].samples,
            trainer=LinearTrainer.name, feedback=ErrorFeedback(old.residual),
            held=self.kept.get(agent),
            random_bytes=np.random.default_rng([self.agent_ids.index(agent), 99]).bytes,
        )
        self.reconnect(agent)

    def release(self, agent: str) -> None:
        """Stop holding this agent's messages and deliver what was held."""
        self.links[agent].paused = False
        self.pump()

    def reconnect_coordinator(self) -> None:
        """The coordinator's broker session was re-established."""
        self._feed_coordinator(BrokerConnected())
        self.pump()

    def crash_coordinator(self) -> None:
        """The coordinator process dies: what it had not carried out is lost."""
        self.coordinator_up = False
        self._inbox.clear()
        self.in_flight = deque(m for m in self.in_flight if m.to != COORDINATOR)

    def restart_coordinator(self, *, resume: Checkpoint | None = None) -> None:
        """A new coordinator process on the same run: resumes from ``resume`` if given."""
        self.rounds = Rounds(
            self.config, copy_weights(self.initial_weights), run=self.run_id, resume=resume
        )
        self.coordinator_up = True
        self._feed_coordinator(BrokerConnected())
        # Subscribing to .../agents/+ hands the new process every retained presence (some
        # brokers do not); the coordinator learns who is online from its roll call instead.
        for agent in self.agent_ids:
            payload = self.retained.get(self.rounds.topics.presence(agent))
            if payload is not None:
                self._feed_coordinator(PresenceArrived(agent, payload, retained=True))
        self.pump()

    def pump(self, max_steps: int = 100_000) -> None:
        """Deliver messages until nothing deliverable is in flight."""
        if self._pumping or self._feeding:
            return  # called from a hook: the loop already running delivers it
        self._pumping = True
        try:
            for _ in range(max_steps):
                message = self._next_message()
                if message is None:
                    return
                self.stats.delivered += 1
                if message.to == COORDINATOR:
                    self._deliver_to_coordinator(message)
                    continue
                received = self.stats.received
                received[message.to] = received.get(message.to, 0) + len(message.payload)
                core = self.agents[message.to]
                self._feed_agent(message.to, core.arrived(message.topic, message.payload))
            raise AssertionError("the fleet did not settle")
        finally:
            self._pumping = False

    # --- the fake broker ----------------------------------------------------------------

    def _next_message(self) -> _Message | None:
        for _ in range(2 * len(self.in_flight) + 1):
            if not self.in_flight:
                return None
            message = self.in_flight.popleft()
            link = self.links[message.via]
            if message.to != COORDINATOR and link.dead:
                self.stats.lost += 1
                continue
            if link.paused:
                self.in_flight.append(message)
                continue
            if link.reorder and not message.deferred:
                message.deferred = True  # let everything now in flight overtake it, once
                self.in_flight.append(message)
                continue
            return message
        return None

    def _lose(self, link: Link, direction: str) -> bool:
        if direction == "up" and link.drop_up > 0:
            link.drop_up -= 1
            return True
        if direction == "down" and link.drop_down > 0:
            link.drop_down -= 1
            return True
        return link.loss > 0 and bool(self.rng.random() < link.loss)

    def _enqueue(self, to: str, topic: str, payload: bytes, via: str) -> None:
        link = self.links[via]
        if to != COORDINATOR and self._lose(link, "down"):
            self.stats.lost += 1
            return
        copies = 2 if link.duplicate else 1
        for _ in range(copies):
            self.in_flight.append(_Message(to, topic, payload, via))

    def _broker_publish(self, agent: str, publish: Publish) -> None:
        """An agent's message reached the broker (or the broker sends its will)."""
        if publish.retain:
            self._retain(publish)
        kind = parse_topic(publish.topic).kind
        if kind in (TopicKind.UPDATE, TopicKind.AGENTS, TopicKind.SECAGG) and self.coordinator_up:
            self._enqueue(COORDINATOR, publish.topic, publish.payload, via=agent)

    def _retain(self, publish: Publish) -> None:
        if publish.payload:
            self.retained[publish.topic] = publish.payload
        else:
            self.retained.pop(publish.topic, None)

    def _connect(self, agent: str) -> None:
        # Subscribing (as the adapter's connect callback does) hands the agent what is retained.
        self.subscribed[agent] = set()
        self._subscribe(agent, [topic for topic, _ in self.agents[agent].subscriptions])
        self._feed_agent(agent, Connected())

    def _subscribe(self, agent: str, filters: Sequence[str]) -> None:
        """Add ``filters`` to the agent's session; the broker sends what they retain."""
        self.subscribed[agent].update(filters)
        for topic, payload in list(self.retained.items()):
            if any(topic_matches(f, topic) for f in filters):
                self._enqueue(agent, topic, payload, via=agent)

    # --- the two adapters ------------------------------------------------------------------

    def _deliver_to_coordinator(self, message: _Message) -> None:
        ref = parse_topic(message.topic)
        assert ref.agent is not None
        if ref.kind is TopicKind.UPDATE:
            self._feed_coordinator(UpdateArrived(ref.agent, message.payload))
        elif ref.kind is TopicKind.AGENTS:
            self._feed_coordinator(PresenceArrived(ref.agent, message.payload))
        elif ref.kind is TopicKind.SECAGG:
            self._feed_coordinator(SecAggArrived(ref.agent, message.payload))

    def _feed_coordinator(self, event: Event) -> list[Action]:
        """What the coordinator's adapter does: feed, then carry out each action in order."""
        if not self.coordinator_up:
            return []
        self._inbox.append(event)
        if self._feeding:
            return []  # from a hook: handled once the current event's actions are done
        produced: list[Action] = []
        self._feeding = True
        try:
            while self._inbox and self.coordinator_up:
                pending: deque[Action] = deque(self.rounds.handle(self._inbox.popleft(), self.now))
                while pending and self.coordinator_up:
                    action = pending.popleft()
                    produced.append(action)
                    self.actions.append(action)
                    follow_up = self._carry_out(action)
                    if follow_up is not None:
                        pending.extend(self.rounds.handle(follow_up, self.now))
                    if self.on_action is not None:
                        self.on_action(self, action)
        finally:
            self._feeding = False
        return produced

    def _carry_out(self, action: Action) -> Event | None:
        match action:
            case Publish():
                if action.retain:
                    self._retain(action)
                if parse_topic(action.topic).kind in (TopicKind.MODEL, TopicKind.DELTA,
                                                       TopicKind.ROLLCALL,
                                                       TopicKind.SECAGG):  # secagg: only "down"
                    for agent in self.agent_ids:
                        if any(topic_matches(f, action.topic) for f in self.subscribed[agent]):
                            self._enqueue(agent, action.topic, action.payload, via=agent)
            case Evaluate(round_no=round_no, weights=weights):
                return Evaluated(round_no, self.evaluate(round_no, weights))
            case SaveCheckpoint(checkpoint=ckpt):
                self.checkpoints.append(ckpt)
                if self.checkpoint_path is not None:
                    save_checkpoint(self.checkpoint_path, ckpt)
            case Stop():
                self.stop = action
            case MessageRejected() | RoundOpened() | UpdateAccepted() | RoundClosed():
                pass  # reports: self.actions keeps them for the tests to read
            case PartialMerged():
                pass  # reports: self.actions keeps them for the tests to read
            case _:
                assert_never(action)
        return None

    def _feed_agent(self, agent: str, event: AgentEvent) -> None:
        """What an agent's adapter does; training runs at once, taking no fake time."""
        if self.links[agent].dead:
            return
        core = self.agents[agent]
        pending: deque[AgentAction] = deque(core.handle(event, self.now))
        while pending:
            action = pending.popleft()
            self.agent_actions[agent].append(action)
            match action:
                case Publish():
                    if self._lose(self.links[agent], "up"):
                        self.stats.lost += 1
                    else:
                        self._broker_publish(agent, action)
                case Train(key=key, model=model):
                    self.kept[agent] = HeldModel.of(model)  # the adapter keeps what it trains on
                    self.stats.trained.append((agent, key))
                    pending.extend(core.handle(self._train(agent, key, model), self.now))
                case Subscribe(topics=topics):
                    self._subscribe(agent, topics)
                case Unsubscribe(topics=topics):
                    self.subscribed[agent].difference_update(topics)
                case KeepModel(held=held):
                    self.kept[agent] = held
                case RunFinished(model=model):
                    self.kept[agent] = HeldModel.of(model)
                case ModelRejected() | UpdateSent() | SaveResidual():
                    pass  # reports: agent_actions keeps them for the tests to read
                case _:
                    assert_never(action)

    def _train(self, agent: str, key: RoundKey, model: ModelAnnouncement) -> AgentEvent:
        if agent in self.failing:
            return TrainingFailed(key, "no usable data")
        result = self.trainers[agent].train(model.weights, model.plan, model.round)
        return TrainingDone(key, result, 0.0)
