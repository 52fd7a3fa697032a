"""Genetic-algorithm operators for population-based training: pure functions over plain dicts.

No Keras, no I/O: each takes an explicit numpy Generator, so a run is reproducible for a seed.
A member's hyper-parameters are a dict like {"lr": 1e-3, "dropout": 0.4, "optimizer": "Adam"};
the search space (lhccnn.hpo) gives each key's domain.
"""

from __future__ import annotations

import numpy as np

from .space import perturb, sample  # noqa: F401 (ga.sample)

__all__ = ["sample", "mutate", "crossover", "fitness", "select_parents", "elite", "breed"]


def mutate(
    hp: dict, space: dict, rate: float, rng: np.random.Generator, scale: float = 0.25
) -> dict:
    """Each hyper-parameter changes with probability `rate`: continuous and integer values by a
    multiplicative log-normal factor (sigma `scale`), choices by resampling; always clipped to
    the domain. Returns a new dict."""
    if not 0 <= rate <= 1:
        raise ValueError(f"mutation rate must be in [0, 1], got {rate}")
    out = dict(hp)
    for key, dim in space.items():
        if rng.random() >= rate:
            continue
        try:
            out[key] = perturb(dim, out[key], rng, scale)
        except TypeError as e:
            raise TypeError(f"{key}: {e}") from None
    return out


def crossover(a: dict, b: dict, rate: float, rng: np.random.Generator) -> dict:
    """A child that takes each hyper-parameter from parent `a`, or from `b` with probability
    `rate` (the paper's Fig. 6: pairs of hyper-parameters mixed between two parents)."""
    if not 0 <= rate <= 1:
        raise ValueError(f"crossover rate must be in [0, 1], got {rate}")
    if a.keys() != b.keys():
        raise ValueError(f"parents differ in their keys: {sorted(a.keys() ^ b.keys())}")
    return {k: (b[k] if rng.random() < rate else a[k]) for k in a}


def fitness(losses) -> np.ndarray:
    """Fitness from the figure of merit, validation loss (lower is better): 1 / loss.

    Positive and decreasing in the loss, so selection proportional to it favours good members
    without ever excluding the others; a NaN or infinite loss gets fitness 0.
    """
    losses = np.asarray(losses, dtype=float)
    with np.errstate(divide="ignore"):
        f = np.where(np.isfinite(losses) & (losses > 0), 1.0 / losses, 0.0)
    if not np.any(f > 0):
        raise ValueError("no member has a finite positive loss: nothing to select from")
    return f


def select_parents(fit, n_pairs: int, rng: np.random.Generator) -> list[tuple[int, int]]:
    """n_pairs of distinct parent indices, each drawn with probability proportional to fitness."""
    fit = np.asarray(fit, dtype=float)
    if np.any(fit < 0) or not np.any(fit > 0):
        raise ValueError("fitness must be >= 0 with at least one positive value")
    p = fit / fit.sum()
    pairs = []
    for _ in range(n_pairs):
        i = int(rng.choice(len(p), p=p))
        rest = p.copy()
        rest[i] = 0
        j = int(rng.choice(len(p), p=rest / rest.sum())) if rest.sum() > 0 else i
        pairs.append((i, j))
    return pairs


def elite(fit, k: int) -> list[int]:
    """Indices of the k fittest members (ties broken by index), carried over unchanged."""
    order = sorted(range(len(fit)), key=lambda i: (-fit[i], i))
    return order[:k]


def breed(
    population: list[dict],
    losses,
    space: dict,
    rng: np.random.Generator,
    mutation_rate: float = 0.05,
    crossover_rate: float = 0.33,
    n_elite: int = 1,
    size: int | None = None,
    n_parents: int | None = None,
) -> list[dict]:
    """The next generation: the elite unchanged, then children of fitness-selected pairs,
    crossed over and mutated. With `n_parents`, only that many of the fittest may be parents
    (truncation selection); None lets every member be drawn. Each entry says where it comes
    from: {"hp": ..., "parents": (i, j), "inherit": index whose weights the child starts from}."""
    size = size or len(population)
    if size < 2:
        raise ValueError(f"a population needs at least 2 members, got {size}")
    if n_parents is not None and not 1 <= n_parents <= len(population):
        raise ValueError(f"n_parents must be in [1, {len(population)}], got {n_parents}")
    fit = fitness(losses)
    nxt = [
        {"hp": dict(population[i]), "parents": (i, i), "inherit": i}
        for i in elite(fit, min(n_elite, size))
    ]
    pool = fit.copy()
    if n_parents is not None:  # the others cannot be drawn
        barred = np.ones(len(fit), dtype=bool)
        barred[elite(fit, n_parents)] = False
        pool[barred] = 0.0
    for i, j in select_parents(pool, size - len(nxt), rng):
        child = mutate(
            crossover(population[i], population[j], crossover_rate, rng), space, mutation_rate, rng
        )
        fitter = i if fit[i] >= fit[j] else j  # the child starts from the fitter parent's weights
        nxt.append({"hp": child, "parents": (i, j), "inherit": fitter})
    return nxt
