"""GA operators: property-based tests (hypothesis) of domains, determinism, crossover origin,
and a statistical test that selection follows fitness."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lhccnn import ga
from lhccnn.space import Choice, IntRange, LogUniform, Uniform, default_space, validate_space

SPACE = {**default_space(), "batch_size": Choice((64, 128, 256))}
INT_SPACE = {
    "batch_size": IntRange(16, 512),
    "lr": LogUniform(1e-4, 1e-1),
    "dropout": Uniform(0.0, 0.7),
}
seeds = st.integers(0, 2**32 - 1)
rates = st.floats(0.0, 1.0)


def _in_domain(hp, space):
    for k, dim in space.items():
        v = hp[k]
        if isinstance(dim, Choice):
            assert v in dim.values, (k, v)
        else:
            assert dim.low <= v <= dim.high, (k, v)
            if isinstance(dim, IntRange):
                assert isinstance(v, int)


@settings(max_examples=200, deadline=None)
@given(seed=seeds, rate=rates, scale=st.floats(0.01, 3.0))
def test_mutate_keeps_values_in_domain(seed, rate, scale):
    rng = np.random.default_rng(seed)
    for space in (SPACE, INT_SPACE):
        hp = ga.sample(space, rng)
        for _ in range(5):
            hp = ga.mutate(hp, space, rate, rng, scale=scale)
            _in_domain(hp, space)


@settings(max_examples=100, deadline=None)
@given(seed=seeds, rate=rates)
def test_crossover_takes_each_value_from_one_of_the_parents(seed, rate):
    rng = np.random.default_rng(seed)
    a, b = ga.sample(SPACE, rng), ga.sample(SPACE, rng)
    child = ga.crossover(a, b, rate, rng)
    assert child.keys() == a.keys()
    assert all(child[k] == a[k] or child[k] == b[k] for k in a)


def test_crossover_rate_zero_and_one_copy_a_parent():
    rng = np.random.default_rng(0)
    a, b = ga.sample(SPACE, rng), ga.sample(SPACE, rng)
    assert ga.crossover(a, b, 0.0, rng) == a and ga.crossover(a, b, 1.0, rng) == b


@settings(max_examples=50, deadline=None)
@given(seed=seeds)
def test_breeding_is_deterministic_for_a_seed(seed):
    pop = [ga.sample(SPACE, np.random.default_rng(i)) for i in range(6)]
    losses = [0.3, 0.5, 0.25, 0.9, 0.4, 0.6]
    one = ga.breed(pop, losses, SPACE, np.random.default_rng(seed), 0.2, 0.5)
    two = ga.breed(pop, losses, SPACE, np.random.default_rng(seed), 0.2, 0.5)
    assert one == two


def test_selection_frequencies_follow_fitness():
    fit = np.array([1.0, 2.0, 3.0, 4.0])
    rng = np.random.default_rng(12345)
    n = 20_000
    counts = np.bincount([i for i, _ in ga.select_parents(fit, n, rng)], minlength=4)
    expected = n * fit / fit.sum()
    chi2 = float(np.sum((counts - expected) ** 2 / expected))
    assert chi2 < 16.27  # the 0.1 % quantile of chi-square with 3 degrees of freedom


def test_fitness_is_one_over_loss_and_zero_for_nan():
    f = ga.fitness([0.5, 0.25, float("nan")])
    assert f.tolist() == [2.0, 4.0, 0.0]
    with pytest.raises(ValueError, match="no member"):
        ga.fitness([float("nan"), float("inf")])


def test_breed_keeps_the_elite_and_children_inherit_the_fitter_parent():
    pop = [ga.sample(SPACE, np.random.default_rng(i)) for i in range(5)]
    losses = [0.4, 0.2, 0.6, 0.3, 0.5]
    nxt = ga.breed(pop, losses, SPACE, np.random.default_rng(1), n_elite=2)
    assert len(nxt) == 5
    assert [m["inherit"] for m in nxt[:2]] == [1, 3] and nxt[0]["hp"] == pop[1]
    for m in nxt[2:]:
        i, j = m["parents"]
        assert i != j and m["inherit"] == (i if losses[i] <= losses[j] else j)
        _in_domain(m["hp"], validate_space(SPACE))


@settings(max_examples=50, deadline=None)
@given(seed=seeds, n_parents=st.integers(1, 6))
def test_truncation_draws_parents_only_from_the_fittest(seed, n_parents):
    pop = [ga.sample(SPACE, np.random.default_rng(i)) for i in range(6)]
    losses = [0.3, 0.5, 0.25, 0.9, 0.4, 0.6]
    fittest = set(np.argsort(losses)[:n_parents].tolist())
    nxt = ga.breed(
        pop,
        losses,
        SPACE,
        np.random.default_rng(seed),
        0.2,
        0.5,
        n_elite=n_parents,
        n_parents=n_parents,
    )
    assert [m["inherit"] for m in nxt[:n_parents]] == sorted(fittest, key=losses.__getitem__)
    for m in nxt:
        assert set(m["parents"]) <= fittest and m["inherit"] in fittest


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: ga.mutate({}, SPACE, -0.1, np.random.default_rng(0)), "mutation rate"),
        (lambda: ga.crossover({"a": 1}, {"a": 2}, 1.5, np.random.default_rng(0)), "crossover rate"),
        (
            lambda: ga.crossover({"a": 1}, {"b": 2}, 0.5, np.random.default_rng(0)),
            "differ in their keys",
        ),
        (
            lambda: ga.breed(
                [{"lr": 1e-3}], [0.5], {"lr": LogUniform(1e-4, 1e-2)}, np.random.default_rng(0)
            ),
            "at least 2 members",
        ),
        (
            lambda: ga.breed(
                [{"lr": 1e-3}] * 3,
                [0.5] * 3,
                {"lr": LogUniform(1e-4, 1e-2)},
                np.random.default_rng(0),
                n_parents=0,
            ),
            "n_parents",
        ),
    ],
)
def test_bad_values_are_refused(call, message):
    with pytest.raises(ValueError, match=message):
        call()
