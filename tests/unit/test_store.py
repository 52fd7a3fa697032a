"""The trial store: ids, atomic status, per-epoch metrics with resume, stop flags, DataFrame."""

import json
import threading

import pytest

from lhccnn.store import Store


def test_trials_get_unique_ids_even_from_concurrent_creators(tmp_path):
    store = Store(tmp_path)
    ids = []
    threads = [threading.Thread(target=lambda: ids.append(store.create_trial({"lr": 0.1})))
               for _ in range(20)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert len(set(ids)) == 20 and sorted(ids) == store.trial_ids()
    assert store.status(ids[0])["status"] == "queued"


def test_metrics_keep_one_row_per_epoch_and_survive_a_cut_line(tmp_path):
    store = Store(tmp_path)
    t = store.create_trial({"lr": 0.1})
    for e in (1, 2, 3):
        store.append_metrics(t, {"epoch": e, "loss": 1.0 / e})
    store.append_metrics(t, {"epoch": 3, "loss": 0.2})  # a resumed attempt re-ran epoch 3
    with open(store.trial_dir(t) / "metrics.jsonl", "a") as f:
        f.write('{"epoch": 4, "lo')  # a crash mid-line
    rows = store.metrics(t)
    assert [r["epoch"] for r in rows] == [1, 2, 3] and rows[-1]["loss"] == 0.2


def test_status_is_replaced_atomically_and_attempts_are_counted(tmp_path):
    store = Store(tmp_path)
    t = store.create_trial({})
    store.start_attempt(t, engine=3)
    store.start_attempt(t, engine=1)
    st = store.status(t)
    assert st["status"] == "running" and st["attempt"] == 2 and st["engine"] == 1
    with pytest.raises(ValueError, match="unknown status 'done'"):
        store.set_status(t, "done")
    assert not list(store.trial_dir(t).glob(".*tmp"))


def test_stop_flag_round_trip(tmp_path):
    store = Store(tmp_path)
    t = store.create_trial({})
    assert not store.stop_requested(t)
    store.request_stop(t)
    assert store.stop_requested(t)
    store.clear_stop(t)
    assert not store.stop_requested(t)


def test_dataframe_reads_back_a_study_from_disk(tmp_path):
    store = Store(tmp_path)
    a, b = store.create_trial({"lr": 0.1}), store.create_trial({"lr": 0.01})
    store.append_metrics(a, {"epoch": 1, "loss": 0.5, "val_loss": 0.4, "val_accuracy": 0.8})
    store.set_status(a, "completed", seconds=12.0)
    df = Store(tmp_path).dataframe()  # a new object: what a restarted kernel sees
    assert list(df.index) == [a, b]
    assert df.loc[a, "status"] == "completed" and df.loc[a, "val_accuracy"] == 0.8
    assert df.loc[b, "status"] == "queued" and df.loc[b, "lr"] == 0.01


def test_signature_changes_with_any_trial_update_only(tmp_path):
    store = Store(tmp_path)
    t = store.create_trial({"lr": 0.1})
    before = store.signature()
    assert store.signature() == before
    store.append_metrics(t, {"epoch": 1, "loss": 0.5})
    after_metrics = store.signature()
    assert after_metrics != before
    store.set_status(t, "completed")
    assert store.signature() != after_metrics
