"""The scale harness and the cost model: what the benchmarks compute, checked on small inputs."""

import math
import shutil

import pytest

from lhccnn import results, scale
from lhccnn.store import Store


def test_the_cost_model_adds_up_the_parts():
    m = scale.predict_hpo(
        trials=336, epochs=16, engines=112, epoch_s=78.6, task_s=0.0, save_s=0.0, store_s=0.0
    )
    assert m["waves"] == 3 and m["makespan_s"] == pytest.approx(3 * 16 * 78.6)
    assert m["overhead_fraction"] == pytest.approx(0.0)
    m = scale.predict_hpo(
        trials=10, epochs=2, engines=4, epoch_s=9.0, task_s=1.0, save_s=0.5, store_s=0.5
    )
    assert m["trial_s"] == 21.0 and m["waves"] == 3
    assert m["overhead_fraction"] == pytest.approx(3 / 21)
    p = scale.predict_pbt(
        population=100, workers=101, step_s=78.6, load_s=0.12, save_s=0.76, task_s=0.0, breed_s=0.0
    )
    assert p["waves"] == 1 and p["generation_s"] == pytest.approx(79.48)
    assert p["overhead_fraction"] == pytest.approx(0.88 / 79.48)


def test_measuring_a_small_study_sees_every_change_and_reads_only_those(tmp_path):
    r = scale.measure_study(tmp_path / "study", 50, changed=0.1)
    assert r["trials"] == 50 and r["changed"] == 5
    assert r["table_shows_changes"] and r["poll_trials_read"] == 5
    assert all(r[k] > 0 for k in ("fill_s", "open_cold_s", "open_s", "poll_s", "dashboard_mib"))
    if shutil.which("strace"):
        assert 5 <= r["file_calls_per_poll"] < 50 * 5  # a handful per changed trial
    store = Store(tmp_path / "study")
    assert sum(store.status(t)["status"] == "running" for t in store.trial_ids()) == 0
    assert math.isfinite(r["full_reread_s"])


def test_the_scale_run_recorded_for_the_book_is_a_full_one():
    """The book's scale page reads this run: the paper's sizes, simulated work said as such,
    and every figure with a target present."""
    record = results.read("bench_scale", results.RECORDED)
    figures = record["figures"]
    assert figures["size"] == "full" and figures["work"] == "simulated work"
    assert set(record["targets"]) <= set(figures), set(record["targets"]) - set(figures)
    assert [r["trials"] for r in figures["study"]] == [100, 1000, 10000]
    assert [r["engines"] for r in figures["scheduler"]] == [8, 32, 64]
    assert figures["makespan"]["trials"] == figures["makespan_sliced"]["trials"] == 336
    assert (figures["pbt"]["population"], figures["pbt"]["workers"]) == (100, 32)
    assert len(figures["pbt"]["wall_s"]) == 20


@pytest.mark.parametrize("part", ["makespan", "study", "none"])
def test_a_scale_run_of_some_benchmarks_only_draws_and_says_what_it_lacks(part):
    """`pytest -k makespan` writes a bench_scale.json with one section; the scale page drew
    its empty panels on log axes and failed the whole `make all` (seen in a checkout)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from lhccnn import plots

    record = results.read("bench_scale", results.RECORDED)["figures"]
    keep = {"makespan": ("makespan", "work"), "study": ("study",), "none": ()}[part]
    axes = plots.control_plane_at_scale({k: v for k, v in record.items() if k in keep})
    axes[0].figure.canvas.draw()
    said = [" ".join(t.get_text() for t in ax.texts) for ax in axes]
    assert ("not in this run" in said[2]) == (part != "makespan"), said
    assert ("not in this run" in said[0]) == (part != "study"), said
    assert all("not in this run" in s for s in said[1::2]), said
    plt.close(axes[0].figure)
