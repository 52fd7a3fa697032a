"""The trial lifecycle with several processes writing at once: one attempt per trial, no stale
writer, no lost steering change, one driver per study."""

import multiprocessing as mp
import os
import signal
import time

import numpy as np
import pytest

from lhccnn.files import read_lines
from lhccnn.pbt import Steering
from lhccnn.store import DriverLock, LockHeld, Store

CTX = mp.get_context("fork")  # no TensorFlow in these children: fork is safe and fast


def _claim(root, trial_id, barrier, results):
    barrier.wait()
    attempt = Store(root).begin_attempt(trial_id)
    results.put(None if attempt is None else attempt.number)


def test_processes_racing_for_one_trial_get_exactly_one_attempt_and_a_dead_one_is_taken_over(
    tmp_path,
):
    store = Store(tmp_path)
    t = store.create_trial({})
    n = 6
    barrier, results = CTX.Barrier(n), CTX.Queue()
    procs = [CTX.Process(target=_claim, args=(tmp_path, t, barrier, results)) for _ in range(n)]
    [p.start() for p in procs]
    got = [results.get(timeout=30) for _ in range(n)]
    [p.join() for p in procs]
    assert sorted(got, key=str) == [1] + [None] * (n - 1)
    # the winner's process has exited without finishing: its attempt is dead and is taken over
    st = store.status(t)
    assert st["status"] == "running" and not store.attempt_alive(t, st)
    again = store.begin_attempt(t)
    assert again.number == 2
    assert [a["event"] for a in store.attempts(t)] == ["begin", "lost", "begin"]


class _Weights:
    """Stands in for a Keras model in the store's checkpoint protocol (pure file logic)."""

    def __init__(self, fill: bytes):
        self.fill = fill
        self.optimizer = None

    def save_weights(self, path):
        with open(path, "wb") as f:
            for _ in range(64):  # written in pieces, as h5py does: room for interleaving
                f.write(self.fill * 4096)


def _write_checkpoints(root, trial_id, started, fill, rounds):
    store = Store(root)
    attempt = store.begin_attempt(trial_id)
    started.set()
    n = 0
    for i in range(rounds):
        try:
            attempt.save_checkpoint(_Weights(fill), epoch=i + 1)
            n += 1
        except Exception:  # StaleAttempt once it was fenced off: it must stop writing
            break
    os._exit(0 if n < rounds else 3)


def test_a_fenced_writer_cannot_overwrite_the_current_attempts_checkpoint(tmp_path):
    store = Store(tmp_path)
    t = store.create_trial({})
    started = CTX.Event()
    old = CTX.Process(target=_write_checkpoints, args=(tmp_path, t, started, b"o", 10_000))
    old.start()
    assert started.wait(30)
    time.sleep(0.3)
    store.force_stop(t, reason="did not answer")  # the dashboard fences the old attempt off
    store.requeue(t)
    new = store.begin_attempt(t)
    for epoch in range(1, 6):
        new.save_checkpoint(_Weights(b"n"), epoch=epoch)
    old.join(30)
    assert old.exitcode == 0, "the fenced attempt kept writing"
    rec = store.verify_checkpoint(t)  # the recorded sha256 is the file's
    assert rec["epoch"] == 5 and set(store.checkpoint(t).read_bytes()) == {ord("n")}
    assert not list(store.trial_dir(t).glob(".*.tmp*"))


def _die_in_second_save(root, trial_id, after_step):
    """Save epoch 1, then die (as a SIGKILL would: no cleanup) right after the `after_step`-th
    durable write of epoch 2's save: a renamed file, the status, the metric row."""
    from lhccnn import store as store_module

    attempt = Store(root).begin_attempt(trial_id)
    attempt.save_checkpoint(_Weights(b"1"), epoch=1, metrics={"epoch": 1})
    steps = []

    def dying(write):
        def step(*args, **kwargs):
            result = write(*args, **kwargs)
            steps.append(write.__name__)
            if len(steps) == after_step:
                os._exit(9)
            return result

        return step

    for name in ("commit", "write_json", "append_line"):
        setattr(store_module, name, dying(getattr(store_module, name)))
    attempt.save_checkpoint(_Weights(b"2"), epoch=2, metrics={"epoch": 2})
    os._exit(0)


@pytest.mark.parametrize("after_step", range(6))
def test_a_crash_anywhere_in_a_checkpoint_save_leaves_the_last_checkpoint_and_its_rows(
    tmp_path, after_step
):
    # the next attempt resumes from a checkpoint that verifies, with every epoch it holds
    # recorded once: not a checkpoint whose file is newer than its record, not a lost row
    store = Store(tmp_path)
    t = store.create_trial({})
    child = CTX.Process(target=_die_in_second_save, args=(tmp_path, t, after_step))
    child.start()
    child.join(30)
    assert store.begin_attempt(t).number == 2  # the dead attempt is taken over
    rec = store.verify_checkpoint(t)
    assert set(store.checkpoint(t).read_bytes()) == {ord(str(rec["epoch"]))}
    assert [r["epoch"] for r in store.metric_rows(t)] == list(range(1, rec["epoch"] + 1))
    assert rec["epoch"] == (1 if after_step in (1, 2) else 2)  # 0: the save runs to its end


def _steer(root, key, values):
    s = Steering(root)
    for v in values:
        s.set(**{key: v})


def test_concurrent_steering_writers_lose_no_change_and_the_log_stays_readable(tmp_path):
    Steering(tmp_path).set(mutation_rate=0.0, crossover_rate=0.0)
    values = [float(v) for v in np.linspace(0.01, 0.99, 150)]
    procs = [
        CTX.Process(target=_steer, args=(tmp_path, key, values))
        for key in ("mutation_rate", "crossover_rate")
    ]
    [p.start() for p in procs]
    [p.join(60) for p in procs]
    assert Steering(tmp_path).values() == {"mutation_rate": 0.99, "crossover_rate": 0.99}
    with open(tmp_path / "steering.jsonl", "a") as f:
        f.write('{"event": "requ')  # torn by a crash
    Steering(tmp_path).set(paused=True)
    events = Steering(tmp_path).events()
    assert len(events) == 1 + 2 * 150 + 1 and events[-1]["paused"] is True
    assert len(read_lines(tmp_path / "steering.jsonl")) == len(events)


def _hold(root, ready):
    with DriverLock(root, holder="hpo.run_trials"):
        ready.set()
        time.sleep(60)


def test_a_second_driver_is_refused_by_name_and_a_dead_drivers_lock_is_taken_over(tmp_path):
    ready = CTX.Event()
    first = CTX.Process(target=_hold, args=(tmp_path, ready))
    first.start()
    assert ready.wait(30)
    with pytest.raises(LockHeld, match=rf"driven by hpo.run_trials \(host .*, pid {first.pid}"):
        DriverLock(tmp_path, holder="a second kernel").acquire()
    os.kill(first.pid, signal.SIGKILL)  # the first kernel dies without releasing its lock
    first.join()
    with DriverLock(tmp_path, holder="a second kernel") as lock:
        assert lock.info()["holder"] == "a second kernel"
    assert lock.info() is None  # released
