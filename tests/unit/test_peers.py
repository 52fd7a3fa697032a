"""The peer benchmark's own logic: the shared setup is notebook 05's, the epoch ledger never
lets processes train more than the budget, perturbed values stay in the space, and the figures
(anytime curve, overhead, the comparison with each peer) are computed as documented."""

import dataclasses
import json
import math
import multiprocessing
import subprocess
import sys
import time

import pytest

from lhccnn import peers, results
from lhccnn.config import REPO
from lhccnn.space import Choice, LogUniform, Uniform


def _notebook_parameters(name: str) -> dict:
    nb = json.loads((REPO / "notebooks" / f"{name}.ipynb").read_text())
    cell = next(c for c in nb["cells"] if "parameters" in c.get("metadata", {}).get("tags", []))
    values: dict = {}
    exec("".join(cell["source"]), {}, values)
    return values


def test_setup_is_notebook_05s():
    nb = _notebook_parameters("05_pbt_genetic")
    setup = peers.Setup()
    for field in ("population", "generations", "epochs_per_generation", "n_train", "n_val"):
        assert getattr(setup, field) == nb[field], field
    for field in ("mutation_rate", "crossover_rate", "survivors"):
        assert getattr(setup, field) == nb[field], field
    assert setup.workers == nb["engines"]
    assert setup.budget == 48 and setup.max_epochs == 6
    assert set(peers.space()) == {"lr", "dropout", "optimizer"}


def test_setup_names_a_bad_size():
    with pytest.raises(ValueError, match="population must be >= 1, got 0"):
        peers.Setup(population=0)


def _claim_all(folder, budget, out):
    ledger = peers.Ledger(folder, budget)
    n = 0
    while ledger.claim(f"p{multiprocessing.current_process().pid}"):
        n += 1
    out.put(n)


def test_ledger_gives_out_exactly_the_budget_to_competing_processes(tmp_path):
    ctx = multiprocessing.get_context("fork")
    out = ctx.Queue()
    procs = [ctx.Process(target=_claim_all, args=(tmp_path, 300, out)) for _ in range(6)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    claimed = [out.get(timeout=5) for _ in procs]
    assert sum(claimed) == 300, claimed
    ledger = peers.Ledger(tmp_path, 300)
    assert ledger.spent() == 300 and not ledger.claim("late")
    assert not ledger.done()  # claimed, not trained: a search must not be ended yet
    ledger.record("t1", val_loss=0.5, train_s=1.0)
    ledger.record("t2", val_loss=0.4, train_s=1.0)
    ledger.record("t1", val_loss=0.3, train_s=1.0)
    assert [r["trial"] for r in ledger.rows()] == ["t1", "t2", "t1"]
    assert ledger.trained("t1") == 2 and ledger.trained("t3") == 0  # its own epochs, per trial


def test_perturbed_values_are_clipped_into_the_space():
    dims = {
        "lr": LogUniform(1e-4, 3e-2),
        "dropout": Uniform(0.0, 0.7),
        "optimizer": Choice(("Adam", "SGD")),
    }
    out = peers._clip(dims, {"lr": 5e-5, "dropout": 0.84, "optimizer": "SGD"})
    assert out["lr"] == 1e-4 and out["optimizer"] == "SGD"
    assert 0.69 < out["dropout"] < 0.7  # the space's high end is open
    assert peers._clip(dims, {"lr": 1e-3, "dropout": 0.3, "optimizer": "Adam"})["dropout"] == 0.3


def test_figures_anytime_curve_and_overhead():
    setup = peers.Setup(population=2, generations=2)
    rows = [  # out of order, one NaN (a diverged epoch counts as no improvement)
        {"trial": "a", "time": 3.0, "val_loss": 0.5, "train_s": 2.0},
        {"trial": "b", "time": 1.0, "val_loss": 0.7, "train_s": 2.0},
        {"trial": "a", "time": 2.0, "val_loss": math.nan, "train_s": 2.0},
        {"trial": "b", "time": 4.0, "val_loss": 0.6, "train_s": 2.0},
    ]
    f = peers._figures("x", rows, wall=10.0, startup_s=1.0, setup=setup, trials=2)
    assert f["anytime"] == [0.7, 0.7, 0.5, 0.5]
    assert f["best_val_loss"] == 0.5 and f["epochs"] == 4 == f["budget"]
    assert f["overhead_s"] == pytest.approx(10.0 - 8.0 / 2)


def test_summary_compares_lhccnn_pbt_with_each_peer():
    def row(method, seed, loss, wall):
        return {
            "method": method,
            "seed": seed,
            "best_val_loss": loss,
            "wall_s": wall,
            "overhead_s": 1.0,
            "peak_rss_mib": 100.0,
        }

    rows = [row("lhccnn_pbt", s, 0.4, 100.0) for s in range(3)]
    rows += [
        row("ray_pbt", 0, 0.3, 80.0),
        row("ray_pbt", 1, 0.5, 80.0),
        row("ray_pbt", 2, 0.4, 80.0),
    ]
    rows += [row("optuna_tpe", s, 0.2, 200.0) for s in range(3)]
    s = peers.summarize(rows)
    assert s["ray_pbt"]["reference_as_good_seeds"] == 2  # a tie counts for lhccnn
    assert s["optuna_tpe"]["reference_as_good_seeds"] == 0
    assert s["lhccnn_pbt"]["wall_over_fastest_peer"] == pytest.approx(100 / 80)
    assert s["ray_pbt"]["best_val_loss_median"] == 0.4


def test_command_line_help_and_bad_method():
    out = subprocess.run(
        [sys.executable, "-m", "lhccnn.cli", "peers", "--help"], capture_output=True, text=True
    )
    assert out.returncode == 0 and "Ray Tune" in out.stdout and "--population" in out.stdout
    out = subprocess.run(
        [sys.executable, "-m", "lhccnn.cli", "peers", "--methods", "hyperopt"],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 2 and "invalid choice: 'hyperopt'" in out.stderr


def test_ray_space_gives_pbt_a_list_to_shift_for_a_choice():
    pytest.importorskip("ray.tune")
    mutations = peers._ray_space(peers.space(), mutations=True)
    assert isinstance(mutations["optimizer"], list)
    plain = peers._ray_space(peers.space())
    assert not isinstance(plain["optimizer"], list)


def test_a_run_again_keeps_finished_rows_and_redoes_the_rest(tmp_path, monkeypatch):
    setup = peers.Setup(population=2, generations=2)
    calls = []

    def fake_ray(method, setup_, seed, where, data=None):
        calls.append((seed, method))
        assert not (where / "stale").exists()  # a cut-short run's leftovers are cleared
        return {
            "method": method,
            "best_val_loss": 0.5,
            "epochs": 4,
            "budget": 4,
            "trials": 2,
            "wall_s": 1.0,
            "overhead_s": 0.1,
        }

    monkeypatch.setattr(peers, "run_ray", fake_ray)
    (tmp_path / "seed1" / "ray_asha" / "stale").mkdir(parents=True)
    first = peers.run(setup, [0], ["ray_pbt"], tmp_path, say=lambda s: None)
    other = dataclasses.replace(setup, n_train=128)  # a row of another setup is not reused
    peers.run(other, [0], ["ray_pbt"], tmp_path, say=lambda s: None)
    again = peers.run(setup, [0, 1], ["ray_pbt", "ray_asha"], tmp_path, say=lambda s: None)
    assert calls == [
        (0, "ray_pbt"),
        (0, "ray_pbt"),
        (0, "ray_asha"),
        (1, "ray_pbt"),
        (1, "ray_asha"),
    ]
    assert again[0] == first[0] and len(again) == 4


def test_ledger_is_done_when_the_budget_is_trained_not_when_it_is_claimed(tmp_path):
    ledger = peers.Ledger(tmp_path, 2)
    assert ledger.claim("a") and ledger.claim("b") and not ledger.claim("c")
    ledger.record("a", val_loss=0.5, train_s=1.0)
    assert not ledger.done()  # b's epoch is still training
    ledger.record("b", val_loss=0.4, train_s=1.0)
    assert ledger.done()


def test_watch_ends_what_a_method_left_running_and_nothing_older():
    older = subprocess.Popen(["sleep", "60"])
    try:
        with peers.Watch(every=0.05, reap=True, grace=0.5) as w:
            left = subprocess.Popen(["sleep", "60"])  # a helper its shutdown missed
            ended = subprocess.Popen(["true"])
            ended.wait()
            time.sleep(0.3)
        assert left.wait(timeout=5) == -9 and w.reaped == ["sleep"]
        assert older.poll() is None  # there before the block: not the method's
        assert w.peak > 0
    finally:
        older.kill()
        left.kill()


def test_the_run_recorded_for_the_book_is_a_full_one():
    """The book's peers page reads this run: notebook 05's whole problem, three seeds or more,
    every method having trained exactly its budget."""
    record = json.loads((results.RECORDED / "bench_peers.json").read_text())
    assert record["setup"] == dataclasses.asdict(peers.Setup())
    for method in peers.METHODS:
        rows = [r for r in record["rows"] if r["method"] == method]
        assert len({r["seed"] for r in rows}) >= 3, method
        assert all(r["epochs"] == r["budget"] == peers.Setup().budget for r in rows), method
    assert record["summary"] == peers.summarize(record["rows"])
