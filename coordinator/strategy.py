"""Which aggregator a spec string names, what it needs, and building it.

Spec strings are what ``--aggregator`` takes and what a run's config carries:
``fedavg``, ``mean``, ``median``, ``trimmed:B`` (a fraction, 0 < B < 0.5) or
``trimmed:K`` (a count), ``krum:F`` and ``multikrum:F:M``. Parsing checks the
parameters once, when the run is configured, so a round never meets a bad spec;
a round with too few updates for the aggregator is a different matter, refused
by the aggregator itself (:class:`coordinator.aggregate.AggregationError`).
"""

from __future__ import annotations

from dataclasses import dataclass

from coordinator.aggregate import Aggregator, WeightedMean
from coordinator.robust import (
    Krum,
    Median,
    NormClip,
    TrimmedMean,
    krum_min_updates,
    trimmed_min_updates,
)
from protocol.compress import Shapes

#: the aggregator kinds; all but the first two keep every update (docs/ROBUSTNESS.md)
AGGREGATORS = ("fedavg", "mean", "median", "trimmed", "krum", "multikrum")

AGGREGATOR_HELP = (
    "fedavg (sample-weighted, streaming; the default) | mean (unweighted, streaming) | "
    "median | trimmed:B (cut floor(B*n) from each end, 0<B<0.5) or trimmed:K (cut K) | "
    "krum:F (tolerates F hostile; needs n >= 2F+3) | multikrum:F:M (mean of the M best; "
    "needs n >= max(2F+3, M+F)). The robust ones keep every update and ignore sample "
    "counts; a round that cannot meet their requirement is retried or stopped "
    "(docs/ROBUSTNESS.md)"
)


@dataclass(frozen=True, slots=True)
class AggregatorSpec:
    """A parsed aggregator spec."""

    kind: str
    #: trimmed: a fraction in (0, 0.5) or a count >= 1
    trim: float = 0.0
    #: krum, multikrum: hostile updates tolerated
    f: int = 0
    #: multikrum: updates averaged
    m: int = 1

    @property
    def min_updates(self) -> int:
        """The fewest updates a round needs for this aggregator to give a result."""
        if self.kind == "trimmed":
            return trimmed_min_updates(self.trim)
        if self.kind in ("krum", "multikrum"):
            return krum_min_updates(self.f, self.m)
        return 1

    def build(self, shapes: Shapes) -> Aggregator:
        match self.kind:
            case "fedavg":
                return WeightedMean(shapes, by_samples=True)
            case "mean":
                return WeightedMean(shapes, by_samples=False)
            case "median":
                return Median(shapes)
            case "trimmed":
                return TrimmedMean(shapes, self.trim)
            case _:  # krum, multikrum: parse_aggregator admits nothing else
                return Krum(shapes, self.f, self.m)


def _number(text: str, spec: str) -> float:
    try:
        return int(text) if text.isdigit() else float(text)
    except ValueError:
        raise ValueError(f"aggregator {spec!r}: {text!r} is not a number") from None


def _count(text: str, spec: str, what: str, low: int) -> int:
    if not text.isdigit() or int(text) < low:
        raise ValueError(f"aggregator {spec!r}: {what} must be an integer >= {low}")
    return int(text)


def parse_aggregator(spec: str) -> AggregatorSpec:
    """Parse ``spec``.

    Raises:
        ValueError: for an unknown kind or bad parameters, saying what is allowed.
    """
    kind, *params = spec.strip().split(":")
    arity = {"fedavg": 0, "mean": 0, "median": 0, "trimmed": 1, "krum": 1, "multikrum": 2}
    if kind not in arity:
        raise ValueError(f"unknown aggregator {spec!r}; choose one of: {AGGREGATOR_HELP}")
    if len(params) != arity[kind]:
        raise ValueError(f"aggregator {spec!r}: {kind} takes {arity[kind]} parameter(s)")
    if kind == "trimmed":
        trim = _number(params[0], spec)
        if not (0 < trim < 0.5 or (isinstance(trim, int) and trim >= 1)):
            raise ValueError(
                f"aggregator {spec!r}: trimmed takes a fraction in (0, 0.5) or a count >= 1"
            )
        return AggregatorSpec(kind, trim=trim)
    if kind == "krum":
        return AggregatorSpec(kind, f=_count(params[0], spec, "F", 0))
    if kind == "multikrum":
        f = _count(params[0], spec, "F", 0)
        return AggregatorSpec(kind, f=f, m=_count(params[1], spec, "M", 1))
    return AggregatorSpec(kind)


def make_aggregator(spec: str, shapes: Shapes, *, clip_norm: float | None = None) -> Aggregator:
    """The aggregator ``spec`` names for a model of ``shapes``; with ``clip_norm``, each
    delta is first scaled down to that L2 norm (:class:`coordinator.robust.NormClip`).

    Raises:
        ValueError: for a bad spec or clip norm.
    """
    aggregator = parse_aggregator(spec).build(shapes)
    return aggregator if clip_norm is None else NormClip(aggregator, clip_norm)
