"""The codec spec string: its grammar, and the parsed pipeline it names.

Grammar (docs/CODECS.md)::

    spec  := stage ("+" stage)*
    stage := name [":" arg ("," arg)*]
    arg   := [key "="] value

Stages come in a fixed order: a sparsifier (``topk``), then a value quantiser
(``fp16``, ``int8``, ``qsgd``), then an entropy coder (``zstd``); each at most
once. ``none`` (raw float32) stands alone. Positional arguments fill a stage's
parameters in the order listed in :data:`STAGES`. Examples: ``none``, ``fp16``,
``int8:block=256``, ``qsgd:16``, ``topk:0.01+int8+zstd``.

Invariants: parsing is pure and strict (no whitespace, no case folding, no
NaN, every value range-checked), so a spec either means exactly one pipeline
or raises ``ValueError``. The spec string itself, not a canonical form, is what
travels: agents echo the announced string and the coordinator compares strings.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from functools import lru_cache

#: longest spec accepted (the model announcement carries it as a <= 256-char string)
MAX_SPEC_LEN = 256
#: one block or per-tensor scale covers at most this many values (keeps scale arrays sane)
MAX_BLOCK = 1 << 24
#: integer quantisers write signed bytes: at most 127 levels each side of zero
MAX_LEVELS = 127

_INT = re.compile(r"0|[1-9][0-9]{0,9}")
_FLOAT = re.compile(r"(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][-+]?[0-9]{1,3})?")
_NAME = re.compile(r"[a-z][a-z0-9]*")


@dataclass(frozen=True, slots=True)
class _Param:
    key: str
    kind: type[int] | type[float]
    default: int | float
    lo: float
    hi: float
    #: ``lo`` itself is allowed
    lo_closed: bool = True


#: stage name -> (role, parameters in positional order)
STAGES: dict[str, tuple[str, tuple[_Param, ...]]] = {
    "none": ("raw", ()),
    "topk": ("sparsifier", (_Param("fraction", float, 0.01, 0.0, 1.0, lo_closed=False),)),
    "fp16": ("quantiser", ()),
    # block=0: one scale per tensor
    "int8": ("quantiser", (_Param("block", int, 0, 0, MAX_BLOCK),)),
    "qsgd": (
        "quantiser",
        (_Param("levels", int, 16, 1, MAX_LEVELS), _Param("block", int, 0, 0, MAX_BLOCK)),
    ),
    "zstd": ("entropy", (_Param("level", int, 3, 1, 22),)),
}
_ROLE_ORDER = ("sparsifier", "quantiser", "entropy")


@dataclass(frozen=True, slots=True)
class Quantiser:
    """How values are written: ``f4``/``f2`` floats, or signed integers times a step.

    For the integer kinds, ``levels`` is the largest |q| and ``block`` the number
    of values sharing one step (0: the whole tensor); ``stochastic`` rounds
    up or down at random so that the expectation is the input (QSGD).
    """

    kind: str
    levels: int = 0
    block: int = 0
    stochastic: bool = False

    @property
    def float_dtype(self) -> str | None:
        return {"f4": "<f4", "f2": "<f2"}.get(self.kind)


RAW = Quantiser("f4")


@dataclass(frozen=True, slots=True)
class Pipeline:
    """A parsed spec: optional top-k, one value quantiser, optional zstd."""

    topk: float | None = None
    quantiser: Quantiser = RAW
    zstd_level: int | None = None

    @property
    def lossless(self) -> bool:
        """True if decode(encode(x)) == x exactly, so no residual is ever left."""
        return self.topk is None and self.quantiser == RAW

    @property
    def biased(self) -> bool:
        """True if E[decode(encode(x))] != x: top-k, or deterministic rounding.

        Error feedback applies to biased pipelines only. An unbiased one (``qsgd``
        without top-k) needs none, and a residual would flatten the values it
        quantises, raising the share of non-zero levels and so the bytes after zstd
        (docs/CODECS.md has the measurement).
        """
        return not self.lossless and not (self.topk is None and self.quantiser.stochastic)

    @property
    def stochastic(self) -> bool:
        """True if encoding draws random numbers (the caller should pass a seeded rng)."""
        return self.quantiser.stochastic

    def kept(self, numel: int) -> int:
        """How many values of a tensor of ``numel`` the sparsifier keeps: ceil(f * n), >= 1."""
        if self.topk is None or numel == 0:
            return numel
        return min(numel, max(1, math.ceil(self.topk * numel)))


def _value(param: _Param, text: str, where: str) -> int | float:
    pattern = _INT if param.kind is int else _FLOAT
    if pattern.fullmatch(text) is None:
        raise ValueError(f"{where}: {param.key}={text!r} is not a plain {param.kind.__name__}")
    value = param.kind(text)
    too_low = value < param.lo if param.lo_closed else value <= param.lo
    if too_low or value > param.hi or not math.isfinite(value):
        span = f"{'[' if param.lo_closed else '('}{param.lo:g}, {param.hi:g}]"
        raise ValueError(f"{where}: {param.key}={text} outside {span}")
    return value


def _stage(text: str) -> tuple[str, dict[str, int | float]]:
    name, _, arg_text = text.partition(":")
    if _NAME.fullmatch(name) is None or name not in STAGES:
        raise ValueError(f"unknown codec stage {name!r}; stages: {', '.join(STAGES)}")
    params = STAGES[name][1]
    values: dict[str, int | float] = {p.key: p.default for p in params}
    if not arg_text:
        if text.endswith(":"):
            raise ValueError(f"{name}: empty argument list")
        return name, values
    by_key = {p.key: p for p in params}
    given: set[str] = set()
    keywords = False
    for i, arg in enumerate(arg_text.split(",")):
        key, eq, raw = arg.partition("=")
        if not eq:  # positional: the i-th parameter, and only before any key=value
            if keywords or i >= len(params):
                raise ValueError(f"{name}: unexpected positional argument {arg!r}")
            key, raw = params[i].key, arg
        keywords = keywords or bool(eq)
        if key not in by_key or key in given:
            raise ValueError(f"{name}: unknown or repeated parameter {key!r}")
        given.add(key)
        values[key] = _value(by_key[key], raw, name)
    return name, values


@lru_cache(maxsize=64)
def parse_codec(spec: str) -> Pipeline:
    """Parse a codec spec string.

    Raises:
        ValueError: for anything outside the grammar, out of order, or out of range.
    """
    if not isinstance(spec, str) or not spec or len(spec) > MAX_SPEC_LEN:
        raise ValueError(f"codec spec must be a non-empty string of <= {MAX_SPEC_LEN} chars")
    stages = [_stage(part) for part in spec.split("+")]
    if stages[0][0] == "none":
        if len(stages) > 1:
            raise ValueError("'none' (raw float32) stands alone; use 'zstd' for lossless packing")
        return Pipeline()
    roles = [STAGES[name][0] for name, _ in stages]
    if "raw" in roles or roles != sorted(set(roles), key=_ROLE_ORDER.index):
        raise ValueError(
            f"codec {spec!r}: stages go sparsifier, quantiser, entropy, each at most once"
        )
    topk, quantiser, level = None, RAW, None
    for name, v in stages:
        if name == "topk":
            topk = float(v["fraction"])
        elif name == "fp16":
            quantiser = Quantiser("f2")
        elif name == "int8":
            quantiser = Quantiser("int", MAX_LEVELS, int(v["block"]))
        elif name == "qsgd":
            quantiser = Quantiser("int", int(v["levels"]), int(v["block"]), stochastic=True)
        else:
            level = int(v["level"])
    return Pipeline(topk, quantiser, level)
