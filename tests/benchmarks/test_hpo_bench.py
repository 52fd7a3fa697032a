"""HPO benchmarks (issue 4), recorded in results/bench_hpo.json: the makespan of a random search
against its lower bound, and training speed with the dashboard polling against without it."""

import os
import statistics

import pytest

from lhccnn import hpo
from lhccnn.config import smoke
from lhccnn.dashboard import Dashboard
from lhccnn.store import Store

TARGETS = {"makespan_over_lower_bound": "<= 1.10", "dashboard_over_plain": ">= 0.98"}
RECORD: dict = {}
FULL = os.environ.get("LHCCNN_BENCH") == "full"  # make bench; make test: fewer repeats


@pytest.fixture(scope="module", autouse=True)
def record(write_record):
    yield
    write_record("bench_hpo", "HPO benchmarks", TARGETS, RECORD)


def test_random_search_makespan_against_lower_bound(local_engines, tmp_path):
    store = Store(tmp_path / "study")
    # many short trials: with few long ones no schedule can come near the bound
    base = smoke().replace(n_train=2048, n_val=512, epochs=2)
    view = local_engines.client.load_balanced_view()
    hpo.random_search(
        view, hpo.default_space(), 16, store, base, seed=3, n_test=512, progress=False
    )
    m = hpo.makespan_from_store(store, engines=2)
    RECORD.update(
        makespan=m,
        makespan_over_lower_bound=m["measured_over_lower_bound"],
        greedy_over_lower_bound=m["greedy"] / m["lower_bound"],
        round_robin_over_lower_bound=m["round_robin"] / m["lower_bound"],
    )
    assert m["lower_bound"] <= m["measured"] < 2 * m["lower_bound"]


def test_training_speed_with_the_dashboard_open(local_engines, tmp_path):
    # the same one-engine trial, alternately with and without a dashboard polling every second
    base = smoke().replace(n_train=4096, n_val=512, epochs=4)
    view = local_engines.client.load_balanced_view()
    seconds = {"plain": [], "dashboard": []}
    for rep in range(3 if FULL else 2):  # alternating which goes first
        for mode in ("plain", "dashboard") if rep % 2 == 0 else ("dashboard", "plain"):
            store = Store(tmp_path / f"{mode}-{rep}")
            dash = Dashboard(store, view, base, poll=1.0, n_test=256)
            if mode == "dashboard":
                dash.start()
            t = dash.add({"lr": 1e-3})[:10]
            dash.wait([t], timeout=300)
            dash.close()
            ms = store.metrics(t)
            # per-epoch wall time after the first epoch (graph tracing)
            seconds[mode].append(
                statistics.median(b["time"] - a["time"] for a, b in zip(ms, ms[1:]))
            )
    ratio = statistics.median(seconds["plain"]) / statistics.median(seconds["dashboard"])
    RECORD.update(epoch_seconds=seconds, dashboard_over_plain=ratio)
    assert 0.5 < ratio < 2
