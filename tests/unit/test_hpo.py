"""Search space validation and sampling, trial configs, and the makespan analysis."""

import contextlib
import itertools

import numpy as np
import pytest

from lhccnn.config import smoke
from lhccnn.hpo import (
    learned_nothing,
    makespan_analysis,
    predicted_cost,
    run_trials,
    steering_plan,
    stuck_trials,
    trial_config,
)
from lhccnn.space import (
    Choice,
    IntRange,
    LogUniform,
    Uniform,
    default_space,
    sample,
    validate_space,
    validate_values,
)
from lhccnn.store import Store


def test_default_space_is_valid_and_samples_stay_in_it():
    space = validate_space(default_space())
    rng = np.random.default_rng(0)
    for _ in range(200):
        hp = sample(space, rng)
        assert 1e-4 <= hp["lr"] < 3e-2 and 0 <= hp["dropout"] < 0.7
        assert hp["conv_sizes"] in space["conv_sizes"].values


def test_sampling_is_deterministic_for_a_seed():
    a = [sample(default_space(), np.random.default_rng(3)) for _ in range(3)]
    b = [sample(default_space(), np.random.default_rng(3)) for _ in range(3)]
    assert a == b


def test_log_uniform_covers_decades_evenly():
    rng = np.random.default_rng(1)
    x = np.log10([LogUniform(1e-4, 1e-2).sample(rng) for _ in range(4000)])
    assert abs(np.mean(x < -3) - 0.5) < 0.03


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: IntRange(5, 2), "empty IntRange"),
        (lambda: Uniform(0.5, 0.5), "empty Uniform"),
        (lambda: LogUniform(-1e-3, 1e-2), "0 < low < high"),
        (lambda: Choice(()), "at least one value"),
        (
            lambda: validate_space({"lr": Uniform(-0.1, 0.1)}),
            "lr: value -0.1 is invalid, expected > 0",
        ),
        (
            lambda: validate_space({"dropout": Uniform(0.2, 1.0)}),
            r"dropout: value 1.0 is invalid, expected in \[0, 1\)",
        ),
        (
            lambda: validate_space({"optimizer": Choice(("Adam", "Lion"))}),
            "'Lion' is invalid, expected one of Adam",
        ),
        (lambda: validate_space({"momentum": Uniform(0, 1)}), "unknown hyper-parameter 'momentum'"),
        (lambda: validate_space({}), "empty"),
    ],
)
def test_bad_spaces_are_refused_with_the_dimension_named(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_trial_config_applies_model_fields_and_batch_size():
    c = trial_config(smoke(), {"conv_sizes": (4, 8), "lr": 0.01, "batch_size": 32, "dropout": 0.1})
    assert c.model.conv_sizes == (4, 8) and c.model.lr == 0.01 and c.model.dropout == 0.1
    assert c.batch_size == 32 and c.epochs == smoke().epochs


def test_makespan_bounds_and_round_robin():
    # one long task and many short ones: round-robin piles short tasks behind the long one
    t = [10.0] + [1.0] * 9
    m = makespan_analysis(t, engines=2, measured=10.5)
    assert m["lower_bound"] == 10.0  # max(19 / 2, 10)
    assert m["round_robin"] == 10 + 4  # engine 0 gets tasks 0, 2, 4, 6, 8
    assert m["greedy"] == 10.0  # the free engine takes all the short ones
    assert m["measured_over_lower_bound"] == pytest.approx(1.05)
    with pytest.raises(ValueError):
        makespan_analysis([], engines=2)


def test_longest_first_and_a_bound_no_schedule_beats():
    m = makespan_analysis([2.0, 2.0, 2.0, 3.0, 3.0], engines=2)
    assert m["greedy"] == 7.0 and m["longest_first"] == 7.0  # the optimum, 3+3 | 2+2+2, is 6
    assert m["pigeonhole_bound"] == 6.0
    # the bound holds against every assignment of small random instances (brute force)
    rng = np.random.default_rng(0)
    for _ in range(100):
        n, engines = int(rng.integers(3, 8)), int(rng.integers(2, 4))
        t = list(rng.uniform(1, 10, n))
        best = min(
            max(sum(d for d, e in zip(t, plan) if e == k) for k in range(engines))
            for plan in itertools.product(range(engines), repeat=n)
        )
        assert makespan_analysis(t, engines)["pigeonhole_bound"] <= best + 1e-9


def test_trials_are_submitted_most_expensive_first(tmp_path):
    base = smoke().replace(epochs=2)
    small, big = {"conv_sizes": (4, 8)}, {"conv_sizes": (16, 32, 64), "dense_sizes": (128,)}
    assert predicted_cost(base, big) > 10 * predicted_cost(base, small)
    store = Store(tmp_path)
    bad = {"conv_sizes": [4] * 7}  # cannot build: its own task fails it, the driver goes on
    ids = [store.create_trial(hp) for hp in (small, bad, big, {"conv_sizes": (8, 16, 32)}, small)]
    view = _RecordingView()  # a stand-in that records the order of submission, runs nothing
    run_trials(view, store, ids, base, progress=False)
    assert view.submitted == [ids[2], ids[3], ids[0], ids[4], ids[1]]


class _RecordingView:
    def __init__(self):
        self.submitted, self.client = [], _Client()

    @contextlib.contextmanager
    def temp_flags(self, **flags):
        yield

    def apply_async(self, f, store_root, trial_id, *args):
        self.submitted.append(trial_id)
        return _Done()


class _Client:
    ids = [0]


class _Done:
    def ready(self):
        return True

    def get(self):
        return {"status": "completed"}


# ---------------------------------------------------------------- steering (notebook 04)
SIGNAL = 0.4258  # mean(y): all background scores 0.5742, all signal 0.4258


def test_learned_nothing_is_at_most_the_majority_class_rate_plus_the_tolerance():
    assert learned_nothing(0.5742, SIGNAL) and learned_nothing(0.4258, SIGNAL)  # either class
    assert learned_nothing(0.5605, SIGNAL)  # between them: worse than answering background
    assert learned_nothing(0.5830, SIGNAL, tol=0.01) and not learned_nothing(0.5850, SIGNAL)
    assert not learned_nothing(0.93, SIGNAL)


def test_stuck_trials_learned_nothing_in_each_of_their_last_epochs():
    curves = {
        "t0": [0.5742, 0.5742],  # stuck at the majority-class rate
        "t1": [0.4258, 0.5650],  # signal for everything, then just below the majority rate
        "t2": [0.5742, 0.81],  # left the plateau: learning
        "t3": [0.5742],  # one epoch only: too early to say
        "t4": [0.88, 0.5742],  # collapsed in its last epoch only
        "t5": [],
    }
    assert stuck_trials(curves, SIGNAL, after_epochs=2) == ["t0", "t1"]
    assert stuck_trials(curves, SIGNAL, after_epochs=1) == ["t0", "t1", "t3", "t4"]


def test_steering_stops_only_running_stuck_trials_and_adds_as_many_beside_the_best():
    space = default_space()
    configs = {t: sample(space, np.random.default_rng(i)) for i, t in enumerate("abcd")}
    curves = {
        "a": [0.5742, 0.5742],
        "b": [0.70, 0.86],  # the best that learns
        "c": [0.5742, 0.5742, 0.5742],  # stuck but already ended (diverged): nothing to stop
        "d": [0.60, 0.75],
    }
    stop, new = steering_plan(
        curves, ["a", "b", "d"], configs, SIGNAL, space, np.random.default_rng(0)
    )
    assert stop == ["a"]
    (hp,) = new
    kept = {k: v for k, v in configs["b"].items() if k not in ("lr", "dropout")}
    assert {k: v for k, v in hp.items() if k in kept} == kept
    assert hp["lr"] != configs["b"]["lr"] and 0.25 < hp["lr"] / configs["b"]["lr"] < 4
    validate_values(hp)


def test_steering_samples_afresh_when_no_trial_learns_and_does_nothing_when_none_is_stuck():
    space = default_space()
    configs = {t: sample(space, np.random.default_rng(i)) for i, t in enumerate("ab")}
    rng = np.random.default_rng(9)
    fresh = [sample(space, rng) for _ in range(2)]
    stuck = {"a": [0.5742, 0.5742], "b": [0.4258, 0.4258]}
    plan = steering_plan(stuck, ["a", "b"], configs, SIGNAL, space, np.random.default_rng(9))
    assert plan == (["a", "b"], fresh)
    learning = {"a": [0.7, 0.8], "b": [0.6, 0.9]}
    plan = steering_plan(learning, ["a", "b"], configs, SIGNAL, space, np.random.default_rng(9))
    assert plan == ([], [])
