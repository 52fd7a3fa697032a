"""Simulated work (scale benchmarks only): it writes what training writes, through the real
store and runner, stops when asked, resumes and inherits through verified checkpoints."""

import threading

import pytest

from lhccnn.config import TrainConfig
from lhccnn.hpo import run_trial, run_trials
from lhccnn.pbt import load_inherited
from lhccnn.runner import run_attempt
from lhccnn.simulate import LABEL, SimulatedWork, fit, mflops, recorded
from lhccnn.store import Store

FAST = SimulatedWork(cost=(0.03, 0.0, 0.0), residuals=(0.7, 1.3), checkpoint_bytes=4096)


def test_a_simulated_trial_writes_rows_checkpoints_and_status_like_a_real_one(tmp_path):
    store = Store(tmp_path)
    t = store.create_trial({"lr": 2e-3, "dropout": 0.3, "optimizer": "Adam"})
    st = run_trial(str(tmp_path), t, TrainConfig(epochs=3), work=FAST)
    assert st["status"] == "completed" and st["simulated"] and st["attempt"] == 1
    rows = store.metric_rows(t)
    assert [r["epoch"] for r in rows] == [1, 2, 3] and all(r["simulated"] for r in rows)
    assert rows[-1]["val_loss"] < rows[0]["val_loss"]  # it learns (on a made-up surface)
    assert store.verify_checkpoint(t)["epoch"] == 3
    assert store.checkpoint(t).stat().st_size == 4096


def test_a_stopped_simulated_trial_resumes_from_its_checkpoint(tmp_path):
    store = Store(tmp_path)
    t = store.create_trial({"lr": 2e-3})
    slow = SimulatedWork(cost=(0.3, 0.0, 0.0), checkpoint_bytes=4096)
    timer = threading.Timer(0.45, store.request_stop, args=(t,))  # during epoch 2
    timer.start()
    st = run_trial(str(tmp_path), t, TrainConfig(epochs=4), work=slow)
    timer.join()
    assert st["status"] == "stopped" and [r["epoch"] for r in store.metric_rows(t)] == [1]
    store.requeue(t)
    st = run_trial(str(tmp_path), t, TrainConfig(epochs=4), work=slow)
    assert st["status"] == "completed" and st["attempt"] == 2
    assert [r["epoch"] for r in store.metrics(t)] == [1, 2, 3, 4]


def test_a_trial_in_slices_of_epochs_can_be_stopped_while_it_waits_for_its_next(tmp_path):
    store = Store(tmp_path)
    t = store.create_trial({"lr": 2e-3})
    st = run_trial(str(tmp_path), t, TrainConfig(epochs=5), work=FAST, epochs_per_task=2)
    assert st["status"] == "queued" and [r["epoch"] for r in store.metric_rows(t)] == [1, 2]
    st = run_trial(str(tmp_path), t, TrainConfig(epochs=5), work=FAST, epochs_per_task=2)
    assert st["status"] == "queued" and store.verify_checkpoint(t)["epoch"] == 4
    assert store.request_stop(t)["status"] == "stopped"  # at once: no attempt holds it
    st = run_trial(str(tmp_path), t, TrainConfig(epochs=5), work=FAST, epochs_per_task=2)
    assert st["status"] == "stopped" and st["ran"] is False
    store.requeue(t)
    st = run_trial(str(tmp_path), t, TrainConfig(epochs=5), work=FAST, epochs_per_task=2)
    assert st["status"] == "completed" and st["attempt"] == 3
    assert [r["epoch"] for r in store.metrics(t)] == [1, 2, 3, 4, 5]


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "2"])
def test_a_slice_of_no_whole_epochs_is_refused_naming_the_value(bad, tmp_path):
    with pytest.raises(ValueError, match=f"epochs_per_task .* got {bad!r}"):
        run_trials(None, Store(tmp_path), [], TrainConfig(), epochs_per_task=bad)


def test_a_simulated_member_inherits_its_parents_progress(tmp_path):
    store = Store(tmp_path)
    hp = {"lr": 2e-3, "dropout": 0.3, "optimizer": "Adam"}
    parent = store.create_trial({**hp, "generation": 0, "member": 0, "inherit": None}, "g000-m00")
    fresh = store.create_trial({**hp, "generation": 0, "member": 1, "inherit": None}, "g000-m01")
    child = store.create_trial({**hp, "generation": 1, "member": 0, "inherit": parent}, "g001-m00")
    for t in (parent, fresh, child):
        run_attempt(str(tmp_path), t, lambda a: FAST.train_member(a, 2, load_inherited))
    st = store.status(child)
    assert st["loaded_from"] == parent and st["simulated"]
    assert st["val_loss"] < store.status(fresh)["val_loss"]  # 4 epochs of progress beat 2
    assert [r["epoch"] for r in store.metric_rows(child)] == [3, 4]  # numbered along the lineage


def test_simulated_work_says_what_it_is_and_refuses_nonsense():
    assert FAST.label == LABEL == "simulated work"
    rec = recorded()
    assert len(rec["trials"]) >= 3 and rec["source"]
    with pytest.raises(ValueError, match="scale"):
        SimulatedWork(cost=(1.0, 0.0, 0.0), scale=0)
    # the same trial always draws the same time: a rerun of a benchmark is the same work
    hp = {"conv_sizes": [8, 16], "batch_size": 128}
    assert FAST.epoch_time("t1", hp) == SimulatedWork(**FAST.to_dict()).epoch_time("t1", hp)


def test_simulated_times_follow_the_recorded_trials_model_and_batch_size():
    trials = [
        {"mflops": m, "batch_size": b, "seconds_per_epoch": 20 + 0.5 * m + 1000 / b}
        for m in (5, 17, 62)
        for b in (64, 256)
    ]
    coef, residuals = fit(trials)
    assert coef == pytest.approx((20, 0.5, 1000)) and residuals == pytest.approx([1.0] * 6)
    work = SimulatedWork(cost=coef, scale=0.5)
    big = {"conv_sizes": [16, 32, 64], "dense_sizes": [64], "batch_size": 64}
    small = {"conv_sizes": [4, 8, 16], "dense_sizes": [64], "batch_size": 256}
    assert work.epoch_time("a", big) == pytest.approx(0.5 * (20 + 0.5 * mflops(big) + 1000 / 64))
    assert work.epoch_time("a", big) > 2 * work.epoch_time("a", small)
