"""Random-search HPO: a validated search space, trials on a load-balanced view, makespans."""

from __future__ import annotations

import logging
import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .cluster import allocation_ended
from .config import ModelConfig, TrainConfig, data_dir
from .runner import callback, end_attempt, run_attempt, slice_end

# default_space and sample are the notebooks' hpo.default_space() and hpo.sample()
from .space import default_space, near, sample, validate_space  # noqa: F401
from .store import ENDED, CheckpointError, DriverLock, Store

if TYPE_CHECKING:  # pandas is imported where a table is built, not at import
    import pandas

log = logging.getLogger(__name__)


def trial_config(base: TrainConfig, hp: dict) -> TrainConfig:
    """A TrainConfig with a trial's hyper-parameters applied (model fields and batch size)."""
    model_fields = {k: v for k, v in hp.items() if k in ModelConfig.__dataclass_fields__}
    changes = {f"model_{k}": v for k, v in model_fields.items()}
    if "batch_size" in hp:
        changes["batch_size"] = int(hp["batch_size"])
    return base.replace(**changes)


def predicted_cost(base: TrainConfig, hp: dict) -> float:
    """A trial's relative cost, for ordering: its model's training FLOPs per sample times its
    training samples and epochs (batch size and the time spent outside the model left out)."""
    from .model import training_flops

    config = trial_config(base, hp)
    return float(training_flops(config.model)) * config.n_train * config.epochs


# ---------------------------------------------------------------------------- one trial
def run_trial(
    store_root: str,
    trial_id: str,
    base: TrainConfig,
    data: str | None = None,
    n_test: int | None = 2048,
    work=None,
    epochs_per_task: int | None = None,
) -> dict:
    """Run one attempt at a trial on this engine (see lhccnn.runner): train, write metrics,
    verified checkpoints and the status to the store; return the status record.
    `epochs_per_task`: train at most this many epochs, then hand the trial back "queued" for
    its next task (`run_trials`); None trains it to the end.

    Resumes from the trial's last verified checkpoint (weights and optimizer state) if an
    earlier attempt got part of the way; a checkpoint that does not verify restarts the trial
    from scratch with a warning naming the file. A stop request ends it "stopped"; a NaN loss,
    or a model that predicts only the majority class, "diverged"; its own errors "failed".

    `work`: a lhccnn.simulate.SimulatedWork replaces the training (scale benchmarks only).
    """
    if work is not None:
        return run_attempt(
            store_root,
            trial_id,
            lambda attempt: work.train_trial(attempt, base.epochs, epochs_per_task),
        )
    return run_attempt(
        store_root,
        trial_id,
        lambda attempt: _train_trial(attempt, base, data, n_test, epochs_per_task),
    )


def _train_trial(attempt, base: TrainConfig, data, n_test, epochs_per_task=None) -> dict:
    import tensorflow as tf

    from . import train
    from .model import build_model

    store, trial_id = attempt.store, attempt.trial_id
    config = trial_config(base, store.config(trial_id))
    data = Path(data) if data else data_dir()
    train.configure_threads(config.intra_threads, config.inter_threads)
    tf.keras.utils.set_random_seed(config.seed)
    st = store.status(trial_id)
    start_epoch = (st.get("checkpoint") or {}).get("epoch", 0)
    t0 = time.perf_counter()
    pipes = train.pipelines(config, data, seed=config.seed + start_epoch)
    model = build_model(config.model)
    if start_epoch:
        try:
            rec = store.load_checkpoint(model, trial_id, optimizer=config.model.optimizer)
            log.info(
                "%s: resuming after epoch %d (optimizer state %s)",
                trial_id,
                start_epoch,
                "kept" if rec["optimizer_loaded"] else "afresh",
            )
        except (CheckpointError, OSError, ValueError) as e:
            msg = f"{trial_id}: checkpoint unusable ({e}); training from scratch"
            warnings.warn(msg, RuntimeWarning, stacklevel=2)
            log.warning(msg)
            start_epoch = 0
            model = build_model(config.model)
            pipes = train.pipelines(config, data, seed=config.seed)

    cb = callback(attempt, optimizer=config.model.optimizer)
    until = slice_end(start_epoch, config.epochs, epochs_per_task)
    train.fit(model, pipes, until, initial_epoch=start_epoch, callbacks=[cb])
    # earlier attempts that ended cleanly (a stop) recorded their seconds; add this one's
    end = {"seconds": (st.get("seconds") or 0) + time.perf_counter() - t0}
    task_started = st.get("task_started") or time.time()
    if cb.nan:
        return end_attempt(attempt, "diverged", task_started, reason="loss became NaN", **end)
    if cb.stopped:
        return end_attempt(attempt, "stopped", task_started, reason="stopped by request", **end)
    if until < config.epochs:  # this task's slice is done: the trial waits for its next
        return end_attempt(attempt, "queued", task_started, **end)
    end["test"] = train.evaluate(model, data / "test.h5", n=n_test)
    if train.collapsed(end["test"]["accuracy"], end["test"]["majority_rate"]):
        return end_attempt(
            attempt, "diverged", task_started, reason="predicts the majority class only", **end
        )
    return end_attempt(attempt, "completed", task_started, **end)


def load_trial_model(store: Store, trial_id: str, base: TrainConfig):
    """A trial's model with the weights of its last verified checkpoint."""
    from .model import build_model

    config = trial_config(base, store.config(trial_id))
    model = build_model(config.model, compile=False)
    store.load_checkpoint(model, trial_id)
    return model


# ---------------------------------------------------------------------------- the search
def random_search(
    view,
    space: dict,
    n_trials: int,
    store: Store,
    base: TrainConfig,
    seed: int = 0,
    data=None,
    retries: int = 2,
    n_test: int | None = 2048,
    progress: bool = True,
    **wait,
) -> pandas.DataFrame:
    """Sample n_trials configurations, run them on a load-balanced view, return the table.

    Each trial is one task; IPyParallel retries a task whose engine died (`retries`), and the
    retry resumes from the trial's checkpoint. Results live in the store, so a kernel restart
    loses nothing: `resume` finishes a study whose driver died, `store.dataframe()` reads it.
    """
    validate_space(space)
    if n_trials < 1:
        raise ValueError(f"n_trials must be >= 1, got {n_trials}")
    if store.trial_ids():
        raise ValueError(
            f"{store.root} already holds a study of {len(store.trial_ids())} trials: "
            "finish it with hpo.resume(view, store, base), or use a new folder"
        )
    rng = np.random.default_rng(seed)
    ids = [store.create_trial(sample(space, rng)) for _ in range(n_trials)]
    return run_trials(
        view, store, ids, base, data=data, retries=retries, n_test=n_test, progress=progress, **wait
    )


def unfinished(store: Store) -> list[str]:
    """Trials that still need to run: queued, or running with a dead attempt (its engine or
    the kernel that drove it died)."""
    out = []
    for t in store.trial_ids():
        st = store.status(t)
        if st.get("status") == "queued" or (
            st.get("status") == "running" and not store.attempt_alive(t, st)
        ):
            out.append(t)
    return out


def resume(
    view,
    store: Store,
    base: TrainConfig,
    data=None,
    retries: int = 2,
    n_test: int | None = 2048,
    progress: bool = True,
    **wait,
) -> pandas.DataFrame:
    """Finish a study whose kernel died: run its unfinished trials (each from its own last
    verified checkpoint, so no finished epoch is trained again), then return the table."""
    return run_trials(
        view,
        store,
        unfinished(store),
        base,
        data=data,
        retries=retries,
        n_test=n_test,
        progress=progress,
        **wait,
    )


def run_trials(
    view,
    store: Store,
    trial_ids,
    base: TrainConfig,
    data=None,
    retries: int = 2,
    n_test: int | None = 2048,
    progress: bool = True,
    timeout: float | None = None,
    no_engines_grace: float = 30.0,
    poll: float = 0.2,
    work=None,
    epochs_per_task: int | None = None,
):
    """Submit existing trials to a load-balanced view and wait for all, with a progress bar.

    The most expensive trials go first (`predicted_cost`): the engines that draw the last,
    short ones then finish close together (48 trials with notebook 03's spread of times on 8
    engines: 9 % above the lower bound on the makespan, against 21 % in trial-id order).

    One driver per study: the store's lock is held while this runs (a second driver is
    refused, naming the first). No wait is unbounded: a trial whose task cannot run any more
    (retries spent, the engines' SLURM job ended, no engine left for `no_engines_grace`
    seconds, or `timeout` passed) is marked failed with the reason; a trial that another live
    attempt runs is watched through its heartbeat and re-submitted if that attempt dies.
    `work`: simulated training for scale benchmarks (see `run_trial`).

    `epochs_per_task`: each task trains at most this many epochs of a trial, from its
    checkpoint, and the trial goes to the back of the queue for the rest. The engines then
    finish within about one slice of each other, where whole trials leave some idle for up to
    a trial's length at the end; each slice pays a checkpoint load and a model build.
    """
    if epochs_per_task is not None and (
        isinstance(epochs_per_task, bool)
        or not isinstance(epochs_per_task, int)
        or epochs_per_task < 1
    ):
        raise ValueError(
            f"epochs_per_task must be a whole number >= 1, or None (whole trials), "
            f"got {epochs_per_task!r}"
        )
    from tqdm.auto import tqdm

    data = str(data) if data else None
    deadline = None if timeout is None else time.monotonic() + timeout

    def submit(ids):
        with view.temp_flags(retries=retries):
            return {
                view.apply_async(
                    run_trial, str(store.root), t, base, data, n_test, work, epochs_per_task
                ): t
                for t in ids
            }

    def cost(t):
        try:
            return predicted_cost(base, store.config(t))
        except (ValueError, TypeError):  # a config that cannot build: its own task fails it
            return 0.0

    trial_ids = sorted(trial_ids, key=cost, reverse=True)
    with (
        DriverLock(store.root, holder="hpo.run_trials"),
        tqdm(total=len(trial_ids), desc="trials", unit="trial", disable=not progress) as bar,
    ):
        futures, watched = submit(trial_ids), set()
        no_engines_since = None
        while futures or watched:
            for f in [f for f in futures if f.ready()]:
                t = futures.pop(f)
                try:
                    st = f.get()
                except Exception as e:  # the task could not run: retries spent on dead engines
                    st = store.fail(t, f"{type(e).__name__}: {e}")
                if st.get("status") in ("queued", "running"):
                    # its slice done, run live by another attempt, or re-queued meanwhile
                    watched.add(t)
                    continue
                bar.set_postfix_str(f"{t}: {st['status']}")
                bar.update()
            for t in list(watched):
                st = store.status(t)
                if st.get("status") in ENDED:
                    watched.discard(t)
                    bar.set_postfix_str(f"{t}: {st['status']}")
                    bar.update()
                elif st.get("status") == "queued" or not store.attempt_alive(t, st):
                    watched.discard(t)
                    futures.update(submit([t]))
            no_engines_since = None if view.client.ids else no_engines_since or time.monotonic()
            reason = allocation_ended(view.client)
            gone = bool(reason)  # every attempt on those engines is dead, whatever its lease says
            if reason:
                reason += ": its engines are gone"
            elif (
                no_engines_since is not None
                and time.monotonic() - no_engines_since > no_engines_grace
            ):
                reason = f"no engine left for {no_engines_grace:.0f} s"
            elif deadline is not None and time.monotonic() > deadline:
                reason = f"the search's timeout of {timeout:.0f} s passed"
            if reason:
                for t in [*futures.values(), *watched]:  # a late task finds its trial failed
                    store.fail(t, reason, attempt_dead=gone)
                    bar.update()
                log.error("random search ended early: %s", reason)
                break
            time.sleep(poll)
    return store.dataframe()


# ---------------------------------------------------------------------------- makespan
def _list_schedule(durations, engines: int) -> float:
    """What a load-balancing scheduler does: each task, in order, to the first free engine."""
    free = [0.0] * engines
    for d in durations:
        free[int(np.argmin(free))] += d
    return max(free)


def _pigeonhole_bound(durations, engines: int) -> float:
    """A lower bound on any schedule that max(sum/E, max) misses when each engine runs only a
    few tasks: of the k x E + 1 longest tasks, some engine runs k + 1, so no schedule beats
    the sum of the k + 1 shortest of them."""
    t = sorted(durations, reverse=True)
    best, k = max(sum(t) / engines, t[0]), 1
    while k * engines + 1 <= len(t):
        best = max(best, sum(t[k * engines - k : k * engines + 1]))
        k += 1
    return best


def makespan_from_store(store: Store, engines: int) -> dict:
    """makespan_analysis of a finished study: task times and the measured span from the store."""
    st = [store.status(t) for t in store.trial_ids()]
    st = [s for s in st if "task_seconds" in s]
    if not st:
        raise ValueError(f"no finished trial in {store.root}")

    def started(s):  # a trial trained in slices keeps its first task's start
        return s.get("first_task_started", s["task_started"])

    st.sort(key=started)  # ~ submission order, which round-robin follows
    span = max(s["finished"] for s in st) - started(st[0])
    return makespan_analysis([s["task_seconds"] for s in st], engines, measured=span)


def makespan_analysis(durations, engines: int, measured: float | None = None) -> dict:
    """What load balancing buys: the measured makespan against the lower bound
    max(sum(t) / engines, max(t)) and against static round-robin on the same task times; with
    the greedy list schedule in this order, the longest-first one, and a pigeonhole bound that
    no schedule can beat (see `_pigeonhole_bound`)."""
    t = [float(d) for d in durations]
    if engines < 1 or not t:
        raise ValueError("need at least one engine and one task")
    lower = max(sum(t) / engines, max(t))
    loads = [0.0] * engines
    for i, d in enumerate(t):  # task i -> engine i mod E, in submission order
        loads[i % engines] += d
    out = {
        "lower_bound": lower,
        "round_robin": max(loads),
        "greedy": _list_schedule(t, engines),
        # the same, had every task's time been known and the longest gone first (LPT)
        "longest_first": _list_schedule(sorted(t, reverse=True), engines),
        "pigeonhole_bound": _pigeonhole_bound(t, engines),
        "sum_task_seconds": sum(t),
        "engines": engines,
    }
    if measured is not None:
        out["measured"] = measured
        out["measured_over_lower_bound"] = measured / lower
    return out


# ---------------------------------------------------------------------------- steering
def learned_nothing(accuracy: float, signal_fraction: float, tol: float = 0.01) -> bool:
    """Whether `accuracy` is no better than answering one class for every event: below the
    majority-class rate, max(mean(y), 1 - mean(y)) (1 - mean(y) here: background), plus `tol`.
    A model answering "signal" everywhere scores mean(y), below that rate, and is caught too."""
    return accuracy < max(signal_fraction, 1 - signal_fraction) + tol


def stuck_trials(
    curves: dict, signal_fraction: float, after_epochs: int = 2, tol: float = 0.01
) -> list[str]:
    """The trials of `curves` (trial id -> validation accuracy per epoch) that have trained at
    least `after_epochs` epochs and learned nothing (`learned_nothing`) in each of the last
    `after_epochs`: stuck at the majority-class rate, they seldom recover (the upstream
    collapse)."""
    return [
        t
        for t, acc in curves.items()
        if len(acc) >= after_epochs
        and all(learned_nothing(a, signal_fraction, tol) for a in acc[len(acc) - after_epochs :])
    ]


def steering_plan(
    curves: dict,
    running,
    configs: dict,
    signal_fraction: float,
    space: dict,
    rng: np.random.Generator,
    after_epochs: int = 2,
    tol: float = 0.01,
) -> tuple[list[str], list[dict]]:
    """What a person watching the dashboard would do: stop the `running` trials stuck at the
    majority-class rate (`stuck_trials`), and add as many new trials beside the best trial that
    learns (the highest validation accuracy so far; its lr and dropout perturbed within `space`,
    the rest kept), or fresh samples of `space` if none learns yet. Returns (trials to stop,
    new configs)."""
    stuck = set(stuck_trials(curves, signal_fraction, after_epochs, tol))
    stop = [t for t in sorted(running) if t in stuck]
    learning = {
        t: max(acc)
        for t, acc in curves.items()
        if acc and t not in stuck and not learned_nothing(max(acc), signal_fraction, tol)
    }
    if not learning:
        return stop, [sample(space, rng) for _ in stop]
    best = max(sorted(learning), key=learning.get)
    return stop, [near(configs[best], space, rng) for _ in stop]
