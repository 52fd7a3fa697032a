"""The trial store: ids, the state machine and its attempts, metrics with resume, stop, DataFrame."""

import threading

import pytest

from lhccnn.store import StaleAttempt, Store, TransitionError


def test_trials_get_unique_ids_even_from_concurrent_creators(tmp_path):
    store = Store(tmp_path)
    ids = []
    threads = [threading.Thread(target=lambda: ids.append(store.create_trial({"lr": 0.1})))
               for _ in range(20)]
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


def test_signature_changes_with_any_trial_update_only(tmp_path):
    store = Store(tmp_path)
    t = store.create_trial({"lr": 0.1})
    attempt = store.begin_attempt(t)
    before = store.signature()
    assert store.signature() == before
    attempt.append_metrics({"epoch": 1, "loss": 0.5})
    after_metrics = store.signature()
    assert after_metrics != before
    attempt.finish("completed")
    assert store.signature() != after_metrics


def test_fail_leaves_a_live_attempt_alone_unless_its_allocation_is_known_to_be_gone(tmp_path):
    store = Store(tmp_path)
    t = store.create_trial({})
    store.begin_attempt(t)  # live: this process, a fresh heartbeat
    assert store.fail(t, "retries spent")["status"] == "running"
    st = store.fail(t, "SLURM job 7 ended CANCELLED", attempt_dead=True)
    assert st["status"] == "failed" and st["reason"] == "SLURM job 7 ended CANCELLED"
