"""Topic names: ``fedmq/v1/{job}/{kind}[/{agent}]``.

One job per prefix, one purpose per topic (docs/PROTOCOL.md, "Topics"). Job and
agent ids are restricted to characters that are never MQTT wildcards or level
separators, so a topic always parses back to the ids that built it. fedmq's commands
take a stricter, portable alphabet (:func:`check_portable_id`): no ``.``, which NATS
refuses in topics and RabbitMQ turns into a level separator (docs/BROKERS.md).
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass

from protocol.errors import RejectReason, WireError

PREFIX = "fedmq/v1"

_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$")
#: ASCII digits only: str.isdigit() also takes "²" and "٣" (the first crashes int())
_CHUNK_INDEX = re.compile(r"[0-9]{1,6}")


class TopicKind(str, enum.Enum):
    """The last fixed level of a topic. See docs/PROTOCOL.md."""

    #: the current round's global model (retained, coordinator)
    MODEL = "model"
    #: the current version of the broadcast model as a delta from the previous one, or a
    #: notice that it travels whole only (retained, coordinator; docs/PROTOCOL.md §15)
    DELTA = "delta"
    #: one agent's update (agent)
    UPDATE = "update"
    #: the coordinator's live state (retained, coordinator)
    STATUS = "status"
    #: one document per closed round (coordinator)
    METRICS = "metrics"
    #: one agent's presence (retained, agent and its last will)
    AGENTS = "agents"
    #: secure aggregation: ``secagg/up/{agent}`` (agent) and ``secagg/down[/{agent}]``
    #: (retained, coordinator); docs/PROTOCOL.md §14
    SECAGG = "secagg"
    #: the coordinator asks every agent connected to announce its presence (not retained;
    #: docs/PROTOCOL.md §16.5)
    ROLLCALL = "rollcall"
    #: one site aggregator's or ingest worker's partial aggregate of a round (that aggregator)
    PARTIAL = "partial"
    #: the coordinator's answer to one aggregator's partial: merged, or refused and why
    VERDICT = "verdict"


_PER_AGENT = {TopicKind.UPDATE, TopicKind.AGENTS, TopicKind.PARTIAL, TopicKind.VERDICT}
#: kinds whose payloads may be retained as ``{kind}/chunk/{i}``
_CHUNKED = {TopicKind.MODEL, TopicKind.DELTA}


def check_id(value: str, what: str = "id") -> str:
    """Return ``value`` if it is a valid job or agent id.

    Raises:
        ValueError: for an id with wildcards, separators or odd characters.
    """
    if not isinstance(value, str) or not _ID.fullmatch(value):
        raise ValueError(
            f"invalid {what} {value!r}: use 1-64 of A-Z a-z 0-9 _ . - starting alphanumeric"
        )
    return value


#: what a non-portable id is told, and why
PORTABLE_ID_RULE = (
    "use 1-64 of A-Z a-z 0-9 _ - starting with a letter or digit (no '.': NATS refuses it "
    "in topics and RabbitMQ turns it into a topic level)"
)


def check_portable_id(value: str, what: str = "id") -> str:
    """Return ``value`` if it is a valid id every tested broker carries unchanged.

    The commands check ids with this, so a user learns at once, not from a broker that
    drops the connection or mangles the topic.

    Raises:
        ValueError: for an invalid id, or one with ``.``.
    """
    if not isinstance(value, str) or not _ID.fullmatch(value) or "." in value:
        raise ValueError(f"invalid {what} {value!r}: {PORTABLE_ID_RULE}")
    return value


@dataclass(frozen=True, slots=True)
class TopicRef:
    """A parsed topic: which job, which kind, and the agent for per-agent kinds."""

    job: str
    kind: TopicKind
    agent: str | None = None
    #: for ``model/chunk/{i}`` and ``delta/chunk/{i}``: the chunk's index (docs/PROTOCOL.md,
    #: "Chunked transfer")
    chunk: int | None = None
    #: for ``secagg``: ``"up"`` (agent to coordinator) or ``"down"`` (coordinator to agents)
    direction: str | None = None


class Topics:
    """Topic names for one job."""

    def __init__(self, job: str) -> None:
        self.job = check_id(job, "job")
        self.base = f"{PREFIX}/{job}"

    @property
    def model(self) -> str:
        return f"{self.base}/model"

    def model_chunk(self, index: int) -> str:
        """Where chunk ``index`` of a chunked model is retained."""
        return f"{self.base}/model/chunk/{index}"

    @property
    def all_model_chunks(self) -> str:
        return f"{self.base}/model/chunk/+"

    @property
    def agent_subscriptions(self) -> list[tuple[str, int]]:
        """What an agent that takes no deltas subscribes to on connecting (QoS 1): the
        model and the roll call.

        Exact topics only: a broker need not deliver retained messages to wildcard
        subscriptions (RabbitMQ does not). Chunk topics are subscribed one by one as a
        manifest names them (docs/PROTOCOL.md, "Chunked transfer").
        """
        return [(self.model, 1), (self.rollcall, 1)]

    @property
    def rollcall(self) -> str:
        return f"{self.base}/rollcall"

    @property
    def delta(self) -> str:
        return f"{self.base}/delta"

    def delta_chunk(self, index: int) -> str:
        """Where chunk ``index`` of a chunked delta is retained."""
        return f"{self.base}/delta/chunk/{index}"

    @property
    def model_family(self) -> tuple[str, ...]:
        """The topic that carries the whole model (an agent's fallback); its chunk topics
        are subscribed exactly as a manifest names them."""
        return (self.model,)

    @property
    def delta_family(self) -> tuple[str, ...]:
        """The topic that carries deltas and version notices (chunks: as for the model)."""
        return (self.delta,)

    @property
    def status(self) -> str:
        return f"{self.base}/status"

    @property
    def metrics(self) -> str:
        return f"{self.base}/metrics"

    def update(self, agent: str) -> str:
        return f"{self.base}/update/{check_id(agent, 'agent')}"

    def presence(self, agent: str) -> str:
        return f"{self.base}/agents/{check_id(agent, 'agent')}"

    def partial(self, aggregator: str) -> str:
        return f"{self.base}/partial/{check_id(aggregator, 'aggregator')}"

    def verdict(self, aggregator: str) -> str:
        return f"{self.base}/verdict/{check_id(aggregator, 'aggregator')}"

    @property
    def all_partials(self) -> str:
        return f"{self.base}/partial/+"

    @property
    def all_updates(self) -> str:
        return f"{self.base}/update/+"

    @property
    def all_presence(self) -> str:
        return f"{self.base}/agents/+"

    def secagg_up(self, agent: str) -> str:
        """Where ``agent`` sends its SecAgg messages."""
        return f"{self.base}/secagg/up/{check_id(agent, 'agent')}"

    @property
    def all_secagg_up(self) -> str:
        return f"{self.base}/secagg/up/+"

    @property
    def secagg_down(self) -> str:
        """The SecAgg messages for every participant (roster, survivors), retained."""
        return f"{self.base}/secagg/down"

    def secagg_down_to(self, agent: str) -> str:
        """The SecAgg messages for one agent (its relay of shares), retained."""
        return f"{self.base}/secagg/down/{check_id(agent, 'agent')}"

    @property
    def everything(self) -> str:
        return f"{self.base}/#"


def parse_topic(topic: str) -> TopicRef:
    """Split a fedmq topic into its parts.

    Raises:
        WireError: MALFORMED for a topic that is not a fedmq v1 topic.
    """
    parts = topic.split("/")
    if len(parts) < 4 or f"{parts[0]}/{parts[1]}" != PREFIX:
        raise WireError(RejectReason.MALFORMED, f"not a {PREFIX} topic: {topic!r}")
    job, kind_name, rest = parts[2], parts[3], parts[4:]
    try:
        kind = TopicKind(kind_name)
        check_id(job, "job")
    except ValueError as exc:
        raise WireError(RejectReason.MALFORMED, f"bad topic {topic!r}: {exc}") from None
    if kind in _PER_AGENT:
        if len(rest) != 1:
            raise WireError(RejectReason.MALFORMED, f"{kind.value} topic needs one agent level")
        try:
            return TopicRef(job, kind, check_id(rest[0], "agent"))
        except ValueError as exc:
            raise WireError(RejectReason.MALFORMED, str(exc)) from None
    if kind is TopicKind.SECAGG:
        return _secagg_topic(job, rest, topic)
    if kind in _CHUNKED and len(rest) == 2 and rest[0] == "chunk":
        if _CHUNK_INDEX.fullmatch(rest[1]) is None:
            raise WireError(RejectReason.MALFORMED, f"bad chunk index in {topic!r}")
        return TopicRef(job, kind, chunk=int(rest[1]))
    if rest:
        raise WireError(RejectReason.MALFORMED, f"unexpected levels after {kind.value}")
    return TopicRef(job, kind)


def _secagg_topic(job: str, rest: list[str], topic: str) -> TopicRef:
    """``secagg/up/{agent}``, ``secagg/down`` or ``secagg/down/{agent}``."""
    direction, agent = (rest[0], rest[1:]) if rest else ("", [])
    shape_ok = (direction == "up" and len(agent) == 1) or (direction == "down" and len(agent) < 2)
    if not shape_ok:
        raise WireError(RejectReason.MALFORMED, f"bad secagg topic {topic!r}")
    try:
        who = check_id(agent[0], "agent") if agent else None
    except ValueError as exc:
        raise WireError(RejectReason.MALFORMED, str(exc)) from None
    return TopicRef(job, TopicKind.SECAGG, who, direction=direction)


def agent_topic_level(topic: str, job: str) -> tuple[TopicKind, str]:
    """The kind (``update``, ``agents``, ``secagg`` or ``partial``) of one of ``job``'s topics
    an agent or aggregator publishes on, and its last level as it stands: what the
    subscriptions ``update/+``, ``agents/+``, ``secagg/up/+`` and ``partial/+`` deliver.
    The level is not checked here: whoever validates the message checks it
    (:func:`check_agent_level`), so a bad id is refused and counted like a bad payload.

    Raises:
        WireError: MALFORMED for a topic of another shape, prefix or job.
    """
    parts = topic.split("/")
    shape = tuple(parts[3:-1])
    if parts[:3] != [*PREFIX.split("/"), job] or shape not in _AGENT_SHAPES:
        raise WireError(RejectReason.MALFORMED, f"not an agent topic of job {job}: {topic[:200]!r}")
    return _AGENT_SHAPES[shape], parts[-1]


#: the levels between the job and the agent of the topics agents publish on
_AGENT_SHAPES = {
    ("update",): TopicKind.UPDATE, ("agents",): TopicKind.AGENTS,
    ("secagg", "up"): TopicKind.SECAGG, ("partial",): TopicKind.PARTIAL,
}


def check_agent_level(level: str) -> str:
    """``level``, the agent named by a per-agent topic, if it is a valid agent id.

    Raises:
        WireError: MALFORMED for anything else (``update/bad id``, ``agents/-x``).
    """
    try:
        return check_id(level, "agent")
    except ValueError as exc:
        raise WireError(RejectReason.MALFORMED, f"topic level: {exc}") from None
