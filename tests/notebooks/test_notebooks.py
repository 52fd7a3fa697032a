"""Papermill smoke runs of the notebooks on the mini SLURM (shared with the book tests) and
locally; their records checked."""

import json
from pathlib import Path

import papermill as pm
import pytest

from lhccnn import slurm as slurm_cli
from lhccnn.config import SMOKE, notebook_parameters
from lhccnn.security import private_kernel_manager
from lhccnn.store import Store

NOTEBOOKS = Path(__file__).resolve().parents[2] / "notebooks"


def run(name, tmp_path, **params):
    out = tmp_path / "results"
    pm.execute_notebook(
        NOTEBOOKS / name,
        tmp_path / name,
        cwd=str(NOTEBOOKS),
        kernel_name="python3",
        parameters=notebook_parameters(Path(name).stem, smoke=True, results_dir=str(out), **params),
        progress_bar=False,
        kernel_manager_class=private_kernel_manager(),
    )
    return out


def record_of(name, local, smoke_runs, tmp_path, **params):
    """The notebook's record: from the session's SLURM smoke run, or a run with local engines."""
    if not local:
        return smoke_runs.record(name), smoke_runs.results
    out = run(f"{name}.ipynb", tmp_path, local=True, **params)
    return json.loads((out / f"{name}.json").read_text()), out


@pytest.mark.parametrize("local", [False, True], ids=["slurm", "local"])
def test_01_cluster_startup(local, slurm, smoke_runs, tmp_path):
    # locally, a parameter given beside the smoke preset must be the one used
    given = {"tasks": 30} if local else {}
    rec, _ = record_of("01_cluster_startup", local, smoke_runs, tmp_path, **given)
    assert rec["tasks"] == (30 if local else SMOKE["01_cluster_startup"]["tasks"])
    assert rec["engines"] == 2 and rec["jobs_left"] == []
    assert 0 < rec["startup_seconds"] < 120 and 0 < rec["stop_seconds"] < 30
    assert sum(rec["engines_per_task_count"].values()) == rec["tasks"]
    assert 0 < rec["per_task_ms"] < 100
    assert slurm_cli.queue() == []


@pytest.mark.parametrize("local", [False, True], ids=["slurm", "local"])
def test_02_horovod_scaling(local, slurm, smoke_runs, tiny_data, tmp_path, monkeypatch):
    monkeypatch.setenv("LHCCNN_DATA_DIR", str(tiny_data))
    rec, out = record_of("02_horovod_scaling", local, smoke_runs, tmp_path)
    main = rec["main"]
    assert main["size"] == 2 and len(main["history"]["loss"]) == 2
    assert main["test"]["auc"] > 0.55  # 2 smoke epochs: learning, not converged
    assert sorted((r["mode"], r["workers"]) for r in rec["rows"]) == [
        ("batch", 1),
        ("batch", 2),
        # the suffix says the ranks were pinned, as train() reports (not as asked)
        ("batch+pinned", 2),
        ("independent", 2),  # the ceilings, measured beside the runs above one worker
        ("independent+pinned", 2),
        ("notebook", 1),
        ("notebook", 2),
        ("notebook+pinned", 2),
    ]
    for key in ("notebook_over_batch", "notebook_over_batch+pinned"):
        for ratio in rec["ratios"][key].values():
            assert 0.3 < ratio < 3  # sanity only; the measured figures are in the non-smoke run
    for mode in ("notebook", "batch", "notebook+pinned", "batch+pinned"):
        # sanity: Horovod cannot beat independent trainings by far
        assert 0.3 < rec["ratios"]["of_ceiling"][mode]["2"] < 1.5, rec["ratios"]
    assert main["pinned_cores"] is not None  # the main training ran pinned
    assert (out / "02_horovod_main" / "model.h5").exists()
    assert slurm_cli.queue() == []


def test_03_random_search_hpo(slurm, smoke_runs):
    rec = smoke_runs.record("03_random_search_hpo")
    assert sum(rec["statuses"].values()) == rec["n_trials"] == 4
    assert rec["statuses"].get("completed", 0) >= 1
    m = rec["makespan"]
    assert m["lower_bound"] <= m["measured"] < 2 * m["lower_bound"]  # sanity; target is 1.10
    assert slurm_cli.queue() == []


def test_04_widget_hpo_stops_the_stuck_trials_and_adds_as_many(slurm, smoke_runs):
    rec = smoke_runs.record("04_widget_hpo")
    steering = rec["steering"]
    stopped, ended, added = steering["stopped"], steering["ended"], steering["added"]
    # seed 1's first trials include one that sits at the majority-class rate on the tiny data
    assert stopped and len(added) == len(stopped) + len(ended)
    assert rec["n_trials"] == SMOKE["04_widget_hpo"]["n_trials"] + len(added)
    assert sum(rec["statuses"].values()) == rec["n_trials"]
    # only the steering stopped anything, and nothing is left queued or running; a stuck trial
    # that ended another way before its stop took effect is listed as such, not as stopped
    assert rec["statuses"]["stopped"] == len(stopped)
    assert set(rec["statuses"]) <= {"completed", "diverged", "stopped"}
    for t in stopped:  # caught once it had trained two epochs, stopped within the next one
        # (the steering may first see a trial at 3 epochs on a loaded machine; what it promises
        # is the epoch after its request, counted when it asked)
        at = steering["asked_at"][t]
        assert 2 <= at <= len(rec["epochs"][t]) <= at + 1, (at, rec["epochs"][t])
    for t in added:  # ran to the end (or diverged there), not stopped
        assert rec["epochs"][t] == list(range(1, SMOKE["04_widget_hpo"]["epochs"] + 1))
    # a study of this run's own: another run of the notebook does not add to it
    study = Path(rec["study"])
    assert study.parent == smoke_runs.results / "04_widget_hpo"
    assert len(Store(study).trial_ids()) == rec["n_trials"]
    assert slurm_cli.queue() == []


def test_05_pbt_genetic(slurm, smoke_runs):
    rec = smoke_runs.record("05_pbt_genetic")
    hist = rec["history"]
    assert [h["generation"] for h in hist] == [0, 1, 2]
    assert all(h["best_val_loss"] <= h["mean_val_loss"] for h in hist)
    assert len(rec["best_lineage"]) == 3
    (row,) = rec["comparison"]
    assert row["pbt_epochs"] == row["random_epochs"] == 4 * 3  # equal compute
    # seed 0's PBT run is the notebook's own, read back from disk: its time is its training's
    assert row["pbt_s"] > 0.5 and row["random_s"] > 0.5, row
    assert slurm_cli.queue() == []
