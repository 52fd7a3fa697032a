"""The control plane measured at scale (store, dashboard, scheduler, allreduce); a cost model."""

from __future__ import annotations

import math
import os
import re
import shutil
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np

from .store import Store, StudyTable

# what a trial of notebook 03 holds: its config, a status, an attempt log, one metric row an epoch
CONFIG = {
    "lr": 1e-3,
    "dropout": 0.5,
    "optimizer": "Adam",
    "batch_size": 128,
    "conv_sizes": [8, 16, 32],
    "dense_sizes": [64],
}
EPOCHS = 8
# file-system calls that are a metadata request on a parallel filesystem (one per call on Lustre)
FILE_CALLS = (
    "open|openat|stat|newfstatat|statx|lstat|access|rename|renameat|renameat2|mkdir|"
    "unlink|getdents64"
)


def fill_study(
    store: Store, n: int, running: int = 0, epochs: int = EPOCHS, seed: int = 0
) -> tuple[float, list]:
    """Add `n` trials to `store` through its public API, all completed but the first `running`,
    which stay running mid-way. Returns the seconds taken and the running trials' attempts."""
    rng = np.random.default_rng(seed)
    attempts = []
    t0 = time.perf_counter()
    for i in range(n):
        tid = store.create_trial({**CONFIG, "lr": float(10 ** rng.uniform(-4, -2))})
        attempt = store.begin_attempt(tid, engine=str(i % 64), engine_id=i % 64)
        live = i < running
        for e in range(1, (epochs // 2 if live else epochs) + 1):
            attempt.append_metrics(_row(e, rng))
        if live:
            attempts.append(attempt)
        else:
            attempt.finish("completed", seconds=float(rng.uniform(5, 20)))
    return time.perf_counter() - t0, attempts


def _row(epoch: int, rng) -> dict:
    return {
        "epoch": epoch,
        "loss": float(rng.uniform(0.3, 0.7)),
        "val_loss": float(rng.uniform(0.3, 0.7)),
        "val_accuracy": float(rng.uniform(0.6, 0.9)),
    }


def next_epoch(attempts, seed: int = 1) -> None:
    """Each running trial finishes an epoch, as a live one does: its status and a metric row."""
    rng = np.random.default_rng(seed)
    for a in attempts:
        epoch = len(a.store.metric_rows(a.trial_id)) + 1
        a.update(progress=epoch)
        a.append_metrics(_row(epoch, rng))


def measure_study(root, n: int, changed: float = 0.01, seed: int = 0) -> dict:
    """The store and the dashboard at `n` trials, of which `changed` run and finish an epoch
    between two polls: seconds to fill, to open the study's table (cold: read every trial;
    warm: from the saved table) and the dashboard, of one poll (the store's part, and in all),
    the dashboard's memory, and the file-system calls of one poll."""
    from .dashboard import Dashboard

    root = Path(root)
    shutil.rmtree(root, ignore_errors=True)
    store = Store(root)
    running = max(1, round(n * changed))
    fill_s, attempts = fill_study(store, n, running=running, seed=seed)
    out = {"trials": n, "changed": running, "fill_s": fill_s}

    t = time.perf_counter()
    StudyTable(Store(root))  # no saved table yet: reads every trial (and saves the table)
    out["open_cold_s"] = time.perf_counter() - t
    next_epoch(attempts, seed=seed)  # changes since the table was saved
    t = time.perf_counter()
    StudyTable(Store(root))
    out["open_s"] = time.perf_counter() - t
    reader = Store(root)
    t = time.perf_counter()
    {tid: reader.summary(tid) for tid in reader.trial_ids()}
    out["full_reread_s"] = time.perf_counter() - t  # what every poll cost without the log
    t = time.perf_counter()
    dash = Dashboard(Store(root))
    out["open_dashboard_s"] = time.perf_counter() - t
    tracemalloc.start()  # a second one, traced (tracing slows it down): the memory it holds
    traced = Dashboard(Store(root))
    out["dashboard_mib"] = tracemalloc.get_traced_memory()[0] / 2**20
    tracemalloc.stop()
    del traced

    polls = []
    for i in range(3):
        next_epoch(attempts, seed=seed + i)
        t = time.perf_counter()
        ids = dash.study.poll()
        store_s = time.perf_counter() - t
        dash.show(ids)
        polls.append((store_s, time.perf_counter() - t, len(ids or ())))
    out["poll_store_s"] = float(np.median([p[0] for p in polls]))
    out["poll_s"] = float(np.median([p[1] for p in polls]))
    out["poll_trials_read"] = polls[-1][2]
    shown = dash.shown()
    out["table_shows_changes"] = all(
        shown.at[a.trial_id, "epoch"] == len(a.store.metrics(a.trial_id)) for a in attempts
    )
    out["file_calls_per_poll"] = file_calls_per_poll(root, lambda: next_epoch(attempts, seed=99))
    for a in attempts:
        a.finish("stopped", reason="benchmark over")
    return out


# ---------------------------------------------------------------------------- the cost model
def predict_hpo(
    trials: int,
    epochs: int,
    engines: int,
    epoch_s: float,
    task_s: float,
    save_s: float,
    store_s: float,
) -> dict:
    """A random search's makespan, from its parts: each trial trains `epochs` epochs of
    `epoch_s` and saves a checkpoint (`save_s`) and a metric row and status (`store_s`) after
    each; the controller spends `task_s` on each task. Equal trials fill the engines in waves."""
    trial = epochs * (epoch_s + save_s + store_s) + task_s
    waves = math.ceil(trials / engines)
    return {
        "trial_s": trial,
        "waves": waves,
        "makespan_s": waves * trial,
        "overhead_fraction": 1 - epochs * epoch_s / trial,
    }


def predict_pbt(
    population: int,
    workers: int,
    step_s: float,
    load_s: float,
    save_s: float,
    task_s: float,
    breed_s: float,
) -> dict:
    """A PBT generation, from its parts: each member loads its parent's checkpoint (`load_s`),
    trains one step (`step_s`) and saves (`save_s`); the driver breeds the next generation
    (`breed_s`) and its scheduler spends `task_s` per member."""
    member = load_s + step_s + save_s
    waves = math.ceil(population / workers)
    generation = waves * member + population * task_s + breed_s
    return {
        "member_s": member,
        "waves": waves,
        "generation_s": generation,
        "overhead_fraction": 1 - waves * step_s / generation,
    }


def file_calls_per_poll(root, change) -> int | None:
    """File-system calls (FILE_CALLS) of one StudyTable poll after `change()`, counted by strace
    in a child process that opens the study, waits for the change, polls once; None without
    strace."""
    if not shutil.which("strace"):
        return None
    log = Path(root) / "strace.log"
    child = subprocess.Popen(
        [
            "strace",
            "-f",
            "-qq",
            "-o",
            str(log),
            "-e",
            "trace=" + FILE_CALLS.replace("|", ","),
            sys.executable,
            "-m",
            "lhccnn.scale",
            "poll-once",
            str(root),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        if child.stdout.readline().strip() != "ready":
            raise RuntimeError("the polling child did not start")
        change()
        child.stdin.write("go\n")
        child.stdin.flush()
        child.wait(timeout=300)
    finally:
        child.kill()
    lines = log.read_text().splitlines()
    begin = next(i for i, s in enumerate(lines) if "lhccnn-poll-begin" in s)
    end = next(i for i, s in enumerate(lines) if "lhccnn-poll-end" in s)
    calls = re.compile(rf"^\d+\s+({FILE_CALLS})\(")
    log.unlink()
    return sum(1 for s in lines[begin + 1 : end] if calls.match(s))


def _poll_once(root: str) -> None:
    table = StudyTable(Store(root))
    print("ready", flush=True)
    sys.stdin.readline()
    os.path.exists("lhccnn-poll-begin")  # markers in the strace log
    table.poll()
    os.path.exists("lhccnn-poll-end")


def allreduce_seconds(parameters: int = 137_089, repeats: int = 50) -> float | None:
    """Median seconds of one Horovod allreduce of `parameters` float32 values (the CNN's
    gradient), run inside each rank of an MPI job; rank 0 returns it, the others None."""
    import horovod.tensorflow as hvd
    import tensorflow as tf

    hvd.init()
    grad = tf.random.normal([parameters])
    hvd.allreduce(grad)  # the first call sets up Horovod's background thread and buffers
    times = []
    for i in range(repeats):
        t = time.perf_counter()
        hvd.allreduce(grad, name=f"g{i % 2}").numpy()
        times.append(time.perf_counter() - t)
    return float(np.median(times)) if hvd.rank() == 0 else None


# ---------------------------------------------------------------------------- the scheduler
def task_overhead(view, n_tasks: int, sleep: float | None = None) -> dict:
    """What a load-balanced view costs per task once every engine has run one, two ways.
    `ms_per_task`: the wall time of `n_tasks` empty tasks divided by their number, i.e. the
    serial cost of submitting, routing, running and returning one task (the reciprocal of the
    throughput). `engine_gap_ms`: with tasks that each sleep `sleep` s (default 20 ms per
    engine, so the controller is not saturated), the wall time beyond n_tasks x sleep / E, per
    task and engine: how long an engine waits between one task and the next."""
    engines = len(view.client.ids)
    sleep = 0.02 * engines if sleep is None else sleep
    # steady state: every engine has imported this module (its first task's one-off cost,
    # `first_task_s`, is about an import of lhccnn and numpy, not the scheduler's)
    t = time.perf_counter()
    view.client[:].apply_sync(_noop, 0)
    first = time.perf_counter() - t
    t = time.perf_counter()
    results = [view.apply_async(_noop, i) for i in range(n_tasks)]
    if [r.get(timeout=600) for r in results] != list(range(n_tasks)):
        raise RuntimeError("empty tasks returned wrong results")
    empty_s = time.perf_counter() - t
    t = time.perf_counter()
    results = [view.apply_async(time.sleep, sleep) for _ in range(n_tasks)]
    for r in results:
        r.get(timeout=600)
    wall = time.perf_counter() - t
    ideal = n_tasks * sleep / engines
    return {
        "engines": engines,
        "tasks": n_tasks,
        "tasks_per_s": n_tasks / empty_s,
        "ms_per_task": 1000 * empty_s / n_tasks,
        "sleep_s": sleep,
        "wall_s": wall,
        "ideal_s": ideal,
        "engine_gap_ms": 1000 * (wall - ideal) * engines / n_tasks,
        "first_task_s": first,
    }


def _noop(x):
    return x


def study_invariants(store: Store, epochs: int, epochs_per_task: int | None = None) -> dict:
    """What a finished simulated study must show: every trial completed with no attempt retried
    (one per task: one per trial, or one per slice of `epochs_per_task` epochs), one metric row
    per epoch, no row lost or repeated."""
    ids = store.trial_ids()
    statuses = [store.status(t) for t in ids]
    rows = [store.metric_rows(t) for t in ids]
    tasks = 1 if epochs_per_task is None else -(-epochs // epochs_per_task)
    return {
        "trials": len(ids),
        "completed": sum(st.get("status") == "completed" for st in statuses),
        "no_retry": sum(st.get("attempt") == tasks for st in statuses),
        "rows_ok": sum([r["epoch"] for r in rs] == list(range(1, epochs + 1)) for rs in rows),
    }


USAGE = """usage: mpirun -np 2 python -m lhccnn.scale allreduce
           time one Horovod allreduce of the CNN's gradient (137,089 float32 values)
       python -m lhccnn.scale poll-once STUDY
           open STUDY's table, wait for a line on stdin, poll once (file_calls_per_poll)"""

if __name__ == "__main__":
    if sys.argv[1:2] == ["allreduce"] and len(sys.argv) == 2:
        seconds = allreduce_seconds()
        if seconds is not None:
            print(f"allreduce_s {seconds:.6f}")
    elif sys.argv[1:2] == ["poll-once"] and len(sys.argv) == 3:
        _poll_once(sys.argv[2])
    else:
        print(USAGE, file=sys.stderr)
        sys.exit(2)
