"""The trial store: ids, the state machine and its attempts, metrics with resume, stop, frame."""

import os
import threading

import pytest

from lhccnn.store import StaleAttempt, Store, StudyTable, TransitionError


def test_trials_get_unique_ids_even_from_concurrent_creators(tmp_path):
    store = Store(tmp_path)
    ids = []
    threads = [
        threading.Thread(target=lambda: ids.append(store.create_trial({"lr": 0.1})))
        for _ in range(20)
    ]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert len(set(ids)) == 20 and sorted(ids) == store.trial_ids()
    assert store.status(ids[0])["status"] == "queued"


def test_metrics_keep_one_row_per_epoch_and_a_torn_line_costs_only_itself(tmp_path):
    store = Store(tmp_path)
    t = store.create_trial({"lr": 0.1})
    attempt = store.begin_attempt(t)
    for e in (1, 2, 3):
        attempt.append_metrics({"epoch": e, "loss": 1.0 / e})
    attempt.append_metrics({"epoch": 3, "loss": 0.2})  # a resumed attempt re-ran epoch 3
    with open(store.trial_dir(t) / "metrics.jsonl", "a") as f:
        f.write('{"epoch": 4, "lo')  # a crash mid-line; the next write must not be lost with it
    attempt.append_metrics({"epoch": 4, "loss": 0.1})
    rows = store.metrics(t)
    assert [(r["epoch"], r["loss"]) for r in rows] == [(1, 1.0), (2, 0.5), (3, 0.2), (4, 0.1)]
    assert len(store.metric_rows(t)) == 5 and {r["attempt"] for r in store.metric_rows(t)} == {1}


def test_attempts_are_counted_and_only_the_allowed_transitions_happen(tmp_path):
    store = Store(tmp_path)
    t = store.create_trial({})
    first = store.begin_attempt(t, engine=3, engine_id=3)
    assert store.begin_attempt(t) is None  # a live attempt runs it: a duplicate is refused
    first.finish("failed", reason="boom")
    store.requeue(t)
    second = store.begin_attempt(t, engine="tcp://127.0.0.1:1234")
    st = store.status(t)
    assert st["status"] == "running" and st["attempt"] == 2
    assert st["engine"] == "tcp://127.0.0.1:1234" and "reason" not in st
    second.finish("completed")
    with pytest.raises(TransitionError, match="is completed: only a stopped, failed or diverged"):
        store.requeue(t)
    with pytest.raises(ValueError, match="an attempt ends"):
        second.finish("running")
    assert [a["event"] for a in store.attempts(t)] == ["begin", "end", "begin", "end"]
    assert not list(store.trial_dir(t).glob(".*.tmp*"))


def test_a_trial_stopped_while_queued_never_starts_until_restarted(tmp_path):
    store = Store(tmp_path)
    t = store.create_trial({})
    assert store.request_stop(t)["status"] == "stopped"
    assert store.begin_attempt(t) is None  # its task ran later anyway: refused
    assert store.status(t)["status"] == "stopped"
    store.requeue(t)  # Restart clears the request
    assert not store.stop_requested(t)
    assert store.begin_attempt(t) is not None


def test_a_stale_attempt_cannot_write_after_it_was_fenced_off(tmp_path):
    store = Store(tmp_path)
    t = store.create_trial({})
    old = store.begin_attempt(t)
    store.force_stop(t, reason="hung")  # what the dashboard does to a trial that does not answer
    with pytest.raises(StaleAttempt, match="no longer current"):
        old.append_metrics({"epoch": 1, "loss": 0.5})
    with pytest.raises(StaleAttempt):
        old.finish("completed")
    assert store.status(t)["status"] == "stopped" and store.metrics(t) == []


@pytest.mark.parametrize("bad", ["../escape", "", ".hidden", "a/b", "x" * 65, "-rf"])
def test_trial_ids_that_would_leave_the_store_are_refused(tmp_path, bad):
    with pytest.raises(ValueError, match="invalid trial id"):
        Store(tmp_path).create_trial({}, trial_id=bad)


def test_dataframe_reads_back_a_study_from_disk(tmp_path):
    store = Store(tmp_path)
    a, b = store.create_trial({"lr": 0.1}), store.create_trial({"lr": 0.01})
    attempt = store.begin_attempt(a)
    attempt.append_metrics({"epoch": 1, "loss": 0.5, "val_loss": 0.4, "val_accuracy": 0.8})
    attempt.finish("completed", seconds=12.0)
    df = Store(tmp_path).dataframe()  # a new object: what a restarted kernel sees
    assert list(df.index) == [a, b]
    assert df.loc[a, "status"] == "completed" and df.loc[a, "val_accuracy"] == 0.8
    assert df.loc[b, "status"] == "queued" and df.loc[b, "lr"] == 0.01


def test_creating_trials_lists_the_study_once_not_once_per_trial(tmp_path, monkeypatch):
    store = Store(tmp_path)
    store.create_trial({}, trial_id="trial-0007")  # a gap: the next id comes after it
    listings = []
    for name in ("scandir", "listdir"):
        real = getattr(os, name)
        monkeypatch.setattr(
            os, name, lambda *a, _real=real, **k: listings.append(a) or _real(*a, **k)
        )
    ids = [store.create_trial({"lr": 0.1}) for _ in range(30)]
    assert ids == [f"trial-{n:04d}" for n in range(8, 38)]
    assert len(listings) <= 1  # was one listing per new trial: quadratic in the study's size
    monkeypatch.undo()
    assert Store(tmp_path).create_trial({}) == "trial-0038"  # another process: after the last


def test_a_table_poll_rereads_exactly_the_trials_that_changed(tmp_path, monkeypatch):
    store = Store(tmp_path)
    ids = [store.create_trial({"lr": 10.0**-k}) for k in range(1, 6)]
    attempt = store.begin_attempt(ids[1])
    table = StudyTable(Store(tmp_path))
    assert sorted(table.rows) == ids and table.poll() == set()
    read = []
    real = Store.summary
    monkeypatch.setattr(Store, "summary", lambda self, t: read.append(t) or real(self, t))
    attempt.append_metrics({"epoch": 1, "loss": 0.5, "val_loss": 0.4, "val_accuracy": 0.8})
    store.request_stop(ids[3])
    new = store.create_trial({"lr": 0.5})
    assert table.poll() == {ids[1], ids[3], new} and sorted(read) == sorted({ids[1], ids[3], new})
    assert table.rows[ids[1]]["epoch"] == 1 and table.rows[ids[3]]["status"] == "stopped"
    assert table.rows[new]["lr"] == 0.5
    attempt.finish("completed")
    assert table.poll() == {ids[1]} and table.rows[ids[1]]["status"] == "completed"


def test_a_reader_polling_between_a_checkpoints_status_and_its_row_still_gets_the_row(
    tmp_path, monkeypatch
):
    from lhccnn import store as store_module

    store = Store(tmp_path)
    t = store.create_trial({})
    attempt = store.begin_attempt(t)
    table = StudyTable(store)
    real = store_module.append_line

    def poll_first(path, obj):  # the reader's poll lands just before the metric row is written
        if path.name == "metrics.jsonl":
            table.poll()
        real(path, obj)

    monkeypatch.setattr(store_module, "append_line", poll_first)

    class Weights:  # what save_checkpoint needs of a model
        optimizer = None

        def save_weights(self, path):
            open(path, "wb").write(b"w")

    attempt.save_checkpoint(Weights(), 1, metrics={"epoch": 1, "val_loss": 0.3})
    table.poll()
    assert table.rows[t]["epoch"] == 1 and table.rows[t]["val_loss"] == 0.3


def test_a_damaged_change_log_makes_the_table_reread_everything(tmp_path):
    store = Store(tmp_path)
    a, b = store.create_trial({}), store.create_trial({})
    table = StudyTable(store)
    store.request_stop(b)
    with open(store.change_log, "a") as f:
        f.write("trial-00\x00 torn\n")
    assert table.poll() is None  # could not tell: re-read all
    assert table.rows[b]["status"] == "stopped"
    store.request_stop(a)
    with open(store.change_log, "a") as f:
        f.write("trial-9999\n")  # looks like an id, names no trial
    assert table.poll() is None and table.rows[a]["status"] == "stopped"
    store.change_log.write_text("")  # the log was replaced: shorter than where we were
    assert table.poll() is None


def test_a_new_table_opens_from_the_saved_one_and_reads_only_what_changed_since(
    tmp_path, monkeypatch
):
    store = Store(tmp_path)
    ids = [store.create_trial({"lr": 0.1}) for _ in range(20)]
    StudyTable(store)  # reads all 20, saves the table
    store.request_stop(ids[4])
    read = []
    real = Store.summary
    monkeypatch.setattr(Store, "summary", lambda self, t: read.append(t) or real(self, t))
    table = StudyTable(Store(tmp_path))
    assert read == [ids[4]] and table.rows[ids[4]]["status"] == "stopped"
    assert sorted(table.rows) == ids
    monkeypatch.undo()
    assert table.dataframe().equals(Store(tmp_path).dataframe())


def test_fail_leaves_a_live_attempt_alone_unless_its_allocation_is_known_to_be_gone(tmp_path):
    store = Store(tmp_path)
    t = store.create_trial({})
    store.begin_attempt(t)  # live: this process, a fresh heartbeat
    assert store.fail(t, "retries spent")["status"] == "running"
    st = store.fail(t, "SLURM job 7 ended CANCELLED", attempt_dead=True)
    assert st["status"] == "failed" and st["reason"] == "SLURM job 7 ended CANCELLED"
