"""One attempt at a trial, as HPO trials, dashboard restarts and PBT members all run it.

`run_attempt` claims the trial in the store (or returns at once: stopped before it started,
already ended, or a live duplicate), trains through the shared training core, and records how
it ended. Errors of the trial itself (bad data, a model that cannot build, out of memory) end
it as "failed" with the reason and are *returned*, not raised: a scheduler retries only what
raises, so only a dead engine or worker (the system's failure) is retried. A retry resumes
from the trial's last verified checkpoint.
"""

from __future__ import annotations

import contextlib
import logging
import math
import signal
import sys
import threading
import time
import traceback

from .store import Attempt, StaleAttempt, Store

log = logging.getLogger(__name__)


def engine_identity() -> tuple[str | None, int | None]:
    """(a label of where this runs, the IPyParallel engine id or None): the engine id on an
    IPyParallel engine, the worker's address on a Dask worker, nothing elsewhere."""
    # a Dask worker has imported distributed; importing it anywhere else only to ask costs an
    # IPyParallel engine's first task seconds (about 8 s with 64 engines on 2 cores)
    if "distributed" in sys.modules:
        try:
            return sys.modules["distributed"].get_worker().address, None
        except ValueError:  # not inside a worker's task
            pass
    try:
        from IPython import get_ipython

        eid = getattr(getattr(get_ipython(), "kernel", None), "engine_id", None)
    except ImportError:
        eid = None
    return (None, None) if eid is None else (str(eid), int(eid))


@contextlib.contextmanager
def interrupt_only_when_stopping(attempt: Attempt):
    """While a trial trains in an engine's main thread, a SIGINT (the dashboard's hard stop)
    interrupts it only if that trial has a stop request: a signal meant for a trial that has
    since ended and reached an engine already running another trial is ignored."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        if attempt.store.stop_requested(attempt.trial_id):
            raise KeyboardInterrupt(f"{attempt.trial_id}: hard stop")
        log.warning("%s: SIGINT ignored, no stop was requested for this trial", attempt.trial_id)

    old = signal.signal(signal.SIGINT, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, old)


def run_attempt(store_root, trial_id: str, body) -> dict:
    """Claim `trial_id` and run `body(attempt)`, which trains and returns `attempt.finish(...)`.
    Returns the trial's status record; raises only for the system's failures."""
    task_started = time.time()
    store = Store(store_root)
    engine, engine_id = engine_identity()
    attempt = store.begin_attempt(
        trial_id, engine=engine, engine_id=engine_id, task_started=task_started
    )
    if attempt is None:  # stopped before it started, ended, or run live elsewhere
        return {**store.status(trial_id), "ran": False}
    with attempt, interrupt_only_when_stopping(attempt):
        try:
            return body(attempt)
        except StaleAttempt as e:  # fenced off (stopped by force) or taken over: not ours now
            log.warning("%s", e)
            return {**store.status(trial_id), "ran": False}
        except KeyboardInterrupt:
            if not store.stop_requested(trial_id):
                raise
            return end_attempt(attempt, "stopped", task_started, reason="interrupted (hard stop)")
        except Exception as e:  # the trial's own failure: final, with its reason
            log.exception("%s failed", trial_id)
            reason = f"{type(e).__name__}: {e}"[:500]
            try:
                return end_attempt(
                    attempt,
                    "failed",
                    task_started,
                    reason=reason,
                    traceback=traceback.format_exc()[-2000:],
                )
            except StaleAttempt:
                return {**store.status(trial_id), "ran": False}


def slice_end(start: int, epochs: int, epochs_per_task: int | None) -> int:
    """The epoch a task that starts after epoch `start` trains to: the trial's last, or
    `epochs_per_task` later if that comes first."""
    return epochs if epochs_per_task is None else min(epochs, start + epochs_per_task)


def end_attempt(attempt: Attempt, status: str, task_started: float, **fields) -> dict:
    """End an attempt with its finish time and the trial's seconds in tasks: this one's since
    `task_started`, plus those of its earlier slices. Status "queued" ends a slice (a trial
    trained a few epochs per task): the trial waits for its next, and keeps its first start."""
    now = time.time()
    st = attempt.store.status(attempt.trial_id)
    busy = st.get("slice_seconds", 0.0) + now - task_started
    if status == "queued":
        first = st.get("first_task_started", task_started)
        return attempt.finish(status, slice_seconds=busy, first_task_started=first, **fields)
    return attempt.finish(status, finished=now, task_seconds=busy, **fields)


def callback(attempt: Attempt, epoch_offset: int = 0, optimizer: str | None = None):
    """The Keras callback every trial trains with: after every batch a NaN loss or a stop
    request ends training; after every epoch a verified checkpoint (weights and optimizer
    state) and the epoch's metric row go to the store, numbered `epoch_offset + epoch`."""
    import tensorflow as tf

    class ToStore(tf.keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.nan = self.stopped = False
            self.save_s = 0.0
            self.last_epoch = None

        def on_train_batch_end(self, batch, logs=None):
            loss = (logs or {}).get("loss")
            if loss is not None and not math.isfinite(loss):
                self.nan = self.model.stop_training = True
            elif attempt.stop_requested():  # cooperative stop
                self.stopped = self.model.stop_training = True

        def on_epoch_end(self, epoch, logs=None):
            if self.stopped or self.nan:  # an epoch cut short is neither saved nor recorded
                return
            n = epoch_offset + epoch + 1
            t = time.perf_counter()
            attempt.save_checkpoint(
                self.model,
                n,
                optimizer=optimizer,
                metrics={
                    "epoch": n,
                    "time": time.time(),
                    **{k: float(v) for k, v in (logs or {}).items()},
                },
            )
            self.save_s += time.perf_counter() - t
            self.last_epoch = n

    return ToStore()
