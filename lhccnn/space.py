"""Search spaces: domain types, validation of spaces and of single values, sampling, defaults."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .config import MAX_CONV_BLOCKS, OPTIMIZERS


@dataclass(frozen=True)
class Choice:
    """One of `values`, each equally likely. Values may be tuples (e.g. layer sizes)."""

    values: tuple

    def __post_init__(self):
        if len(self.values) == 0:
            raise ValueError("Choice needs at least one value")

    def sample(self, rng):
        return self.values[rng.integers(len(self.values))]


@dataclass(frozen=True)
class IntRange:
    """An integer in the closed range [low, high], both ends included, uniformly."""

    low: int
    high: int

    def __post_init__(self):
        if self.low > self.high:
            raise ValueError(f"empty IntRange [{self.low}, {self.high}]")

    def sample(self, rng):
        return int(rng.integers(self.low, self.high + 1))


@dataclass(frozen=True)
class Uniform:
    """A float in the half-open range [low, high), uniformly."""

    low: float
    high: float

    def __post_init__(self):
        if not self.low < self.high:
            raise ValueError(f"empty Uniform range [{self.low}, {self.high})")

    def sample(self, rng):
        return float(rng.uniform(self.low, self.high))


@dataclass(frozen=True)
class LogUniform:
    """A float in the half-open range [low, high), 0 < low, uniform in its logarithm (each decade
    equally likely): the usual prior for a learning rate."""

    low: float
    high: float

    def __post_init__(self):
        if not 0 < self.low < self.high:
            raise ValueError(f"LogUniform needs 0 < low < high, got [{self.low}, {self.high})")

    def sample(self, rng):
        return float(math.exp(rng.uniform(math.log(self.low), math.log(self.high))))


DOMAINS = (Choice, IntRange, Uniform, LogUniform)


def _values(dim):
    """Every value a dimension can give (the bounds for ranges), for validation."""
    return dim.values if isinstance(dim, Choice) else (dim.low, dim.high)


# The hyper-parameters a trial understands, and what each value must be.
def _check_sizes(v):
    return isinstance(v, (tuple, list)) and len(v) > 0 and all(int(x) >= 1 for x in v)


def _check_conv(v):
    return _check_sizes(v) and len(v) <= MAX_CONV_BLOCKS


CHECKS = {
    "conv_sizes": (
        _check_conv,
        f"a tuple of 1 to {MAX_CONV_BLOCKS} positive ints (each conv block halves the 64x64 image)",
    ),
    "dense_sizes": (_check_sizes, "a non-empty tuple of positive ints"),
    "dropout": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "optimizer": (lambda v: v in OPTIMIZERS, f"one of {', '.join(OPTIMIZERS)}"),
    "lr": (lambda v: v > 0, "> 0"),
    "batch_size": (lambda v: int(v) >= 1, ">= 1"),
}


def check_value(name: str, value) -> None:
    """Refuse one hyper-parameter value (from a form, a restart, a space's bound), naming it."""
    if name not in CHECKS:
        raise ValueError(f"unknown hyper-parameter {name!r}; valid: {', '.join(CHECKS)}")
    check, expected = CHECKS[name]
    if not check(value):
        raise ValueError(f"search space {name}: value {value!r} is invalid, expected {expected}")


def validate_values(hp: dict) -> dict:
    """Check single values, e.g. a trial's hyper-parameters edited in the dashboard."""
    for name, value in hp.items():
        check_value(name, value)
    return hp


def validate_space(space: dict) -> dict:
    """Check every dimension before anything is submitted; a clear error names the bad one."""
    if not space:
        raise ValueError("the search space is empty")
    for name, dim in space.items():
        if not isinstance(dim, DOMAINS):
            raise ValueError(
                f"search space {name}: {dim!r} is not one of Choice, IntRange, Uniform, LogUniform"
            )
        for v in _values(dim):
            check_value(name, v)
    return space


# what may change along a PBT lineage: not the architecture, whose weights are inherited
LINEAGE = ("lr", "dropout", "optimizer")


def default_space(names: tuple[str, ...] | None = None) -> dict:
    """Around the paper's model: conv and dense sizes, dropout, optimizer, lr, batch size; or only
    the dimensions in `names` (e.g. LINEAGE, PBT's space)."""
    space = {
        "conv_sizes": Choice(((4, 8, 16), (8, 16, 32), (16, 32, 64), (8, 16), (16, 32))),
        "dense_sizes": Choice(((32,), (64,), (128,), (64, 32))),
        "dropout": Uniform(0.0, 0.7),
        "optimizer": Choice(("Adam", "Nadam", "RMSprop", "SGD")),
        "lr": LogUniform(1e-4, 3e-2),
        "batch_size": Choice((64, 128, 256)),
    }
    if names is None:
        return space
    unknown = [n for n in names if n not in space]
    if unknown:
        raise ValueError(f"no default for {', '.join(unknown)}; defaults: {', '.join(space)}")
    return {n: space[n] for n in names}


def space_to_dict(space: dict) -> dict:
    """A search space as plain JSON-able data (to keep it beside a study in the store)."""
    return {name: {"type": type(dim).__name__, **dim.__dict__} for name, dim in space.items()}


def space_from_dict(d: dict) -> dict:
    """The inverse of space_to_dict."""
    types = {t.__name__: t for t in DOMAINS}
    space = {}
    for name, spec in d.items():
        spec = dict(spec)
        kind = spec.pop("type")
        if kind not in types:
            raise ValueError(f"search space {name}: unknown dimension type {kind!r}")
        if kind == "Choice":  # JSON made the tuples lists
            spec["values"] = tuple(tuple(v) if isinstance(v, list) else v for v in spec["values"])
        space[name] = types[kind](**spec)
    return space


def sample(space: dict, rng: np.random.Generator) -> dict:
    """One point of the space, a value per dimension."""
    return {name: dim.sample(rng) for name, dim in space.items()}


def clip(dim, value):
    """A number brought inside a range dimension (IntRange: rounded; half-open ranges: kept just
    below `high`)."""
    if isinstance(dim, IntRange):
        return int(min(max(round(value), dim.low), dim.high))
    return float(min(max(value, dim.low), np.nextafter(dim.high, dim.low)))


def perturb(dim, value, rng: np.random.Generator, scale: float = 0.25):
    """A value near `value`: a range's value times a log-normal factor (sigma `scale`; from zero,
    which no factor can leave, a fresh sample), clipped into the range; a choice resampled."""
    if isinstance(dim, Choice):
        return dim.sample(rng)
    if not isinstance(dim, (Uniform, LogUniform, IntRange)):
        raise TypeError(f"unknown dimension type {type(dim).__name__}")
    v = value * math.exp(scale * rng.standard_normal())
    if isinstance(dim, Uniform) and value == 0:
        v = dim.sample(rng)
    return clip(dim, v)


def near(hp: dict, space: dict, rng: np.random.Generator, keys=("lr", "dropout"), scale=0.25):
    """A new point beside `hp`: the `keys` perturbed within their domains in `space`, every other
    value (the architecture, say) kept. Returns a new dict."""
    return {**hp, **{k: perturb(space[k], hp[k], rng, scale) for k in keys}}
