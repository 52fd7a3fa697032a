"""The search space module: values checked as spaces are, one default space and its subsets."""

import numpy as np
import pytest

from lhccnn import pbt
from lhccnn.space import (
    LINEAGE,
    Choice,
    LogUniform,
    default_space,
    near,
    sample,
    validate_space,
    validate_values,
)


def test_single_values_are_checked_with_the_spaces_rules():
    assert validate_values({"lr": 1e-3, "conv_sizes": (8, 16), "optimizer": "SGD"})
    assert validate_values({}) == {}
    with pytest.raises(ValueError, match=r"dropout: value 1.0 is invalid, expected in \[0, 1\)"):
        validate_values({"dropout": 1.0})
    with pytest.raises(ValueError, match="unknown hyper-parameter 'momentum'"):
        validate_values({"momentum": 0.9})
    with pytest.raises(ValueError, match="conv_sizes: value"):
        validate_values({"conv_sizes": (4,) * 7})  # more blocks than the 64x64 image allows


def test_a_dimension_that_is_not_a_domain_is_refused_by_name():
    with pytest.raises(ValueError, match="lr: 0.001 is not one of Choice, IntRange"):
        validate_space({"lr": 1e-3})


def test_pbt_space_is_the_lineage_part_of_the_one_default_space():
    full = default_space()
    assert pbt.default_space() == {k: full[k] for k in LINEAGE}
    assert list(pbt.default_space()) == list(LINEAGE)  # the sampling order, hence reproducibility
    with pytest.raises(ValueError, match="no default for momentum"):
        default_space(("lr", "momentum"))


def test_sampling_follows_the_dimensions_and_their_ranges():
    space = {"lr": LogUniform(1e-4, 1e-2), "optimizer": Choice(("Adam",))}
    hp = sample(space, np.random.default_rng(0))
    assert list(hp) == ["lr", "optimizer"] and 1e-4 <= hp["lr"] < 1e-2 and hp["optimizer"] == "Adam"


def test_near_perturbs_only_the_given_keys_and_stays_in_their_domains():
    space = default_space()
    hp = {**sample(space, np.random.default_rng(0)), "lr": 2.9e-2, "dropout": 0.01}
    rng = np.random.default_rng(1)
    points = [near(hp, space, rng, scale=2.0) for _ in range(200)]
    for p in points:
        assert {k: v for k, v in p.items() if k not in ("lr", "dropout")} == {
            k: v for k, v in hp.items() if k not in ("lr", "dropout")
        }
        assert 1e-4 <= p["lr"] < 3e-2 and 0 <= p["dropout"] < 0.7
    assert len({p["lr"] for p in points}) > 100  # really perturbed (those above 3e-2 clipped)
    assert hp["lr"] == 2.9e-2  # the original is left alone
