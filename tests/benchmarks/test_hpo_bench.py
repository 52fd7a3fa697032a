"""HPO benchmarks (issue 4), recorded in results/bench_hpo.json: the makespan of a random search
against its lower bound, and training speed with the dashboard polling against without it."""

import json
import statistics

import pytest

from lhccnn import hpo
from lhccnn.cluster import Cluster, ClusterSpec
from lhccnn.config import REPO, smoke
from lhccnn.dashboard import Dashboard
from lhccnn.store import Store

RESULTS = REPO / "results"
TARGETS = {"makespan_over_lower_bound": "<= 1.10", "dashboard_over_plain": ">= 0.98"}
RECORD: dict = {}


@pytest.fixture(scope="module", autouse=True)
def record():
    yield
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "bench_hpo.json").write_text(json.dumps({"targets": TARGETS, "figures": RECORD},
                                                       indent=1, default=float))
    print("\nHPO benchmarks (results/bench_hpo.json):")
    for k, v in RECORD.items():
        print(f"  {k:<28} {v}" + (f"   (target {TARGETS[k]})" if k in TARGETS else ""))


@pytest.fixture(scope="module")
def engines():
    with Cluster.start(ClusterSpec(local=True, engines=2, wait=60)) as cluster:
        yield cluster


def test_random_search_makespan_against_lower_bound(engines, tmp_path):
    store = Store(tmp_path / "study")
    # many short trials: with few long ones no schedule can come near the bound
    base = smoke().replace(n_train=2048, n_val=512, epochs=2)
    hpo.random_search(engines.client.load_balanced_view(), hpo.default_space(), 16, store, base,
                      seed=3, n_test=512, progress=False)
    m = hpo.makespan_from_store(store, engines=2)
    RECORD.update(makespan=m, makespan_over_lower_bound=m["measured_over_lower_bound"],
                  greedy_over_lower_bound=m["greedy"] / m["lower_bound"],
                  round_robin_over_lower_bound=m["round_robin"] / m["lower_bound"])
    assert m["lower_bound"] <= m["measured"] < 2 * m["lower_bound"]


def test_training_speed_with_the_dashboard_open(engines, tmp_path):
    # the same one-engine trial, alternately with and without a dashboard polling every second
    base = smoke().replace(n_train=4096, n_val=512, epochs=4)
    view = engines.client.load_balanced_view()
    seconds = {"plain": [], "dashboard": []}
    for rep in range(3):
        for mode in (("plain", "dashboard") if rep % 2 == 0 else ("dashboard", "plain")):
            store = Store(tmp_path / f"{mode}-{rep}")
            dash = Dashboard(store, view, base, poll=1.0, n_test=256)
            if mode == "dashboard":
                dash.start()
            t = dash.add({"lr": 1e-3})[:10]
            dash.wait([t], timeout=300)
            dash.close()
            ms = store.metrics(t)
            # per-epoch wall time after the first epoch (graph tracing)
            seconds[mode].append(statistics.median(b["time"] - a["time"] for a, b in zip(ms, ms[1:])))
    ratio = statistics.median(seconds["plain"]) / statistics.median(seconds["dashboard"])
    RECORD.update(epoch_seconds=seconds, dashboard_over_plain=ratio)
    assert 0.5 < ratio < 2
