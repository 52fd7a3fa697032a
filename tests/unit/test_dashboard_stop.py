"""Stop and steering against trials that other processes run: every stop is asked at once, and
each message and list says how the trial really ended."""

import multiprocessing as mp
import time

import numpy as np

from lhccnn import hpo
from lhccnn.dashboard import Dashboard
from lhccnn.store import Store

CTX = mp.get_context("fork")  # no TensorFlow in these children: fork is safe and fast
MAJORITY = 0.6  # the majority-class rate when 40 % of the events are signal


def _stuck_trial(root, trial_id, ends, delay, asked):
    """Two epochs at the majority-class rate, then, once asked to stop, `delay` seconds more
    before the attempt ends `ends` ("stopped": it obeys; "diverged": its loss went NaN first)."""
    attempt = Store(root).begin_attempt(trial_id)
    with attempt:  # its heartbeat: a live attempt, as on an engine
        for epoch in (1, 2):
            attempt.append_metrics({"epoch": epoch, "loss": 0.69, "val_accuracy": MAJORITY})
        while not attempt.stop_requested(every=0.05):
            time.sleep(0.05)
        asked.put((trial_id, time.time()))
        time.sleep(delay)
        attempt.finish(ends)


def _run(store, trial_id, ends, delay, asked):
    p = CTX.Process(target=_stuck_trial, args=(store.root, trial_id, ends, delay, asked))
    p.start()
    deadline = time.monotonic() + 30
    while len(store.metrics(trial_id)) < 2:
        assert time.monotonic() < deadline, f"{trial_id} never trained its two epochs"
        time.sleep(0.05)
    return p


def test_stop_says_so_when_the_trial_ended_another_way_first(tmp_path):
    store = Store(tmp_path)
    t = store.create_trial({})
    child = _run(store, t, "diverged", 0.0, CTX.Queue())
    msg = Dashboard(store).stop(t)
    child.join(30)
    assert store.status(t)["status"] == "diverged"
    assert msg == f"{t} ended diverged after epoch 2, before the stop took effect"


def test_steering_asks_every_stuck_trial_at_once_and_lists_each_as_it_ended(tmp_path):
    store = Store(tmp_path)
    slow, quick = store.create_trial({}), store.create_trial({})
    asked = CTX.Queue()
    # the first takes 5 s to obey; the second must not train on for those 5 s unasked
    children = [_run(store, slow, "stopped", 5.0, asked), _run(store, quick, "diverged", 0, asked)]
    done = Dashboard(store).steer(
        1 - MAJORITY, hpo.default_space(), np.random.default_rng(0), after_epochs=2, max_added=0
    )
    [p.join(30) for p in children]
    when = dict(asked.get(timeout=10) for _ in children)
    assert abs(when[slow] - when[quick]) < 2.5, "the second stop waited for the first"
    assert done["stopped"] == [slow] and done["ended"] == [quick]
    assert done["asked_at"] == {slow: 2, quick: 2}
    assert [store.status(t)["status"] for t in (slow, quick)] == ["stopped", "diverged"]
