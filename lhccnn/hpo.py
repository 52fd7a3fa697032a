"""Random-search HPO: a validated search space, trials run on a load-balanced view, makespan analysis."""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .config import OPTIMIZERS, ModelConfig, TrainConfig, data_dir
from .store import Store

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------- search space
@dataclass(frozen=True)
class Choice:
    values: tuple

    def __post_init__(self):
        if len(self.values) == 0:
            raise ValueError("Choice needs at least one value")

    def sample(self, rng):
        return self.values[rng.integers(len(self.values))]


@dataclass(frozen=True)
class IntRange:
    low: int
    high: int  # inclusive

    def __post_init__(self):
        if self.low > self.high:
            raise ValueError(f"empty IntRange [{self.low}, {self.high}]")

    def sample(self, rng):
        return int(rng.integers(self.low, self.high + 1))


@dataclass(frozen=True)
class Uniform:
    low: float
    high: float

    def __post_init__(self):
        if not self.low < self.high:
            raise ValueError(f"empty Uniform range [{self.low}, {self.high})")

    def sample(self, rng):
        return float(rng.uniform(self.low, self.high))


@dataclass(frozen=True)
class LogUniform:
    low: float
    high: float

    def __post_init__(self):
        if not 0 < self.low < self.high:
            raise ValueError(f"LogUniform needs 0 < low < high, got [{self.low}, {self.high})")

    def sample(self, rng):
        return float(math.exp(rng.uniform(math.log(self.low), math.log(self.high))))


def _values(dim):
    """Every value a dimension can give (the bounds for ranges), for validation."""
    return dim.values if isinstance(dim, Choice) else (dim.low, dim.high)


# The hyper-parameters a trial understands, and what each value must be.
def _check_sizes(v):
    return isinstance(v, (tuple, list)) and len(v) > 0 and all(int(x) >= 1 for x in v)


CHECKS = {
    "conv_sizes": (_check_sizes, "a non-empty tuple of positive ints"),
    "dense_sizes": (_check_sizes, "a non-empty tuple of positive ints"),
    "dropout": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "optimizer": (lambda v: v in OPTIMIZERS, f"one of {', '.join(OPTIMIZERS)}"),
    "lr": (lambda v: v > 0, "> 0"),
    "batch_size": (lambda v: int(v) >= 1, ">= 1"),
}


def validate_space(space: dict) -> dict:
    """Check every dimension before anything is submitted; a clear error names the bad one."""
    if not space:
        raise ValueError("the search space is empty")
    for name, dim in space.items():
        if name not in CHECKS:
            raise ValueError(f"unknown hyper-parameter {name!r}; valid: {', '.join(CHECKS)}")
        check, expected = CHECKS[name]
        for v in _values(dim):
            if not check(v):
                raise ValueError(f"search space {name}: value {v!r} is invalid, expected {expected}")
    return space


def default_space() -> dict:
    """Around the paper's model: conv and dense sizes, dropout, optimizer, lr, batch size."""
    return {
        "conv_sizes": Choice(((4, 8, 16), (8, 16, 32), (16, 32, 64), (8, 16), (16, 32))),
        "dense_sizes": Choice(((32,), (64,), (128,), (64, 32))),
        "dropout": Uniform(0.0, 0.7),
        "optimizer": Choice(("Adam", "Nadam", "RMSprop", "SGD")),
        "lr": LogUniform(1e-4, 3e-2),
        "batch_size": Choice((64, 128, 256)),
    }


def space_to_dict(space: dict) -> dict:
    """A search space as plain JSON-able data (to keep it beside a study in the store)."""
    return {name: {"type": type(dim).__name__, **dim.__dict__} for name, dim in space.items()}


def space_from_dict(d: dict) -> dict:
    """The inverse of space_to_dict."""
    types = {t.__name__: t for t in (Choice, IntRange, Uniform, LogUniform)}
    space = {}
    for name, spec in d.items():
        spec = dict(spec)
        kind = spec.pop("type")
        if kind not in types:
            raise ValueError(f"search space {name}: unknown dimension type {kind!r}")
        if kind == "Choice":  # JSON made the tuples lists
            spec["values"] = tuple(tuple(v) if isinstance(v, list) else v for v in spec["values"])
        space[name] = types[kind](**spec)
    return space


def sample(space: dict, rng: np.random.Generator) -> dict:
    return {name: dim.sample(rng) for name, dim in space.items()}


def trial_config(base: TrainConfig, hp: dict) -> TrainConfig:
    """A TrainConfig with a trial's hyper-parameters applied (model fields and batch size)."""
    model_fields = {k: v for k, v in hp.items() if k in ModelConfig.__dataclass_fields__}
    changes = {f"model_{k}": v for k, v in model_fields.items()}
    if "batch_size" in hp:
        changes["batch_size"] = int(hp["batch_size"])
    return base.replace(**changes)


# ---------------------------------------------------------------------------- one trial
def run_trial(store_root: str, trial_id: str, base: TrainConfig, data: str | None = None,
              n_test: int | None = 2048) -> dict:
    """Run one trial on this engine: train, write metrics/checkpoint/status to the store.

    Resumes from the trial's checkpoint if an earlier attempt got part of the way (an engine
    that died, a stop). A stop request (store flag, checked after every batch) ends the trial
    with status "stopped"; a NaN loss, or a model that predicts only the majority class, ends
    it as "diverged". Returns the trial's final status record.
    """
    task_started = time.time()  # the whole task, imports and evaluation included
    import tensorflow as tf

    from .data import make_dataset, steps_per_epoch
    from .model import build_model
    from .train import collapsed, configure_threads, evaluate

    store = Store(store_root)
    hp = store.config(trial_id)
    config = trial_config(base, _tuples(hp))
    data = Path(data) if data else data_dir()
    configure_threads(config.intra_threads, config.inter_threads)
    tf.keras.utils.set_random_seed(config.seed)
    done = store.metrics(trial_id)
    start_epoch = done[-1]["epoch"] if done else 0
    store.clear_stop(trial_id)
    store.start_attempt(trial_id, engine=_engine_id(), task_started=task_started)
    t0 = time.perf_counter()

    train_ds, shard = make_dataset(data / "train.h5", config.batch_size, n=config.n_train,
                                   shuffle=True, seed=config.seed + start_epoch,
                                   streaming=config.streaming, repeat=True)
    val_ds, val_shard = make_dataset(data / "val.h5", config.batch_size, n=config.n_val,
                                     shuffle=False, streaming=config.streaming, repeat=True)
    model = build_model(config.model)
    ckpt = store.checkpoint(trial_id)
    if start_epoch and ckpt.exists():
        model.load_weights(str(ckpt))  # the optimizer's moments start afresh: documented cost
        log.info("%s: resuming after epoch %d", trial_id, start_epoch)
    else:
        start_epoch = 0

    class ToStore(tf.keras.callbacks.Callback):
        stopped = False
        nan = False

        def on_train_batch_end(self, batch, logs=None):
            loss = (logs or {}).get("loss")
            if loss is not None and not math.isfinite(loss):
                self.nan = self.model.stop_training = True
            elif store.stop_requested(trial_id):  # cooperative stop, checked every batch
                self.stopped = self.model.stop_training = True

        def on_epoch_end(self, epoch, logs=None):
            if self.stopped or self.nan:
                return
            tmp = ckpt.with_name(".checkpoint.tmp.h5")
            self.model.save_weights(str(tmp))
            tmp.replace(ckpt)  # atomic: a kill never leaves half a checkpoint
            store.append_metrics(trial_id, {"epoch": epoch + 1, "time": time.time(),
                                            **{k: float(v) for k, v in (logs or {}).items()}})

    cb = ToStore()
    model.fit(train_ds, epochs=config.epochs, initial_epoch=start_epoch,
              steps_per_epoch=steps_per_epoch(shard, config.batch_size), validation_data=val_ds,
              validation_steps=steps_per_epoch(val_shard, config.batch_size), callbacks=[cb],
              verbose=0)
    # earlier attempts that ended cleanly (a stop) recorded their seconds; add this one's
    seconds = (store.status(trial_id).get("seconds") or 0) + time.perf_counter() - t0
    end = {"seconds": seconds}
    if cb.nan:
        return store.set_status(trial_id, "diverged", reason="loss became NaN", **_ended(end, task_started))
    if cb.stopped:
        store.clear_stop(trial_id)
        return store.set_status(trial_id, "stopped", **_ended(end, task_started))
    end["test"] = evaluate(model, data / "test.h5", n=n_test)
    if collapsed(end["test"]["accuracy"], end["test"]["majority_rate"]):
        return store.set_status(trial_id, "diverged", reason="predicts the majority class only",
                                **_ended(end, task_started))
    return store.set_status(trial_id, "completed", **_ended(end, task_started))


def _ended(fields: dict, task_started: float) -> dict:
    now = time.time()
    return {**fields, "finished": now, "task_seconds": now - task_started}


def _engine_id():
    """This IPyParallel engine's id, or None outside an engine."""
    from IPython import get_ipython

    return getattr(getattr(get_ipython(), "kernel", None), "engine_id", None)


def _tuples(hp: dict) -> dict:
    """JSON turns tuples into lists; the model config wants tuples back."""
    return {k: tuple(v) if isinstance(v, list) else v for k, v in hp.items()}


def load_trial_model(store: Store, trial_id: str, base: TrainConfig):
    """A trial's model with the weights of its last checkpoint."""
    from .model import build_model

    config = trial_config(base, _tuples(store.config(trial_id)))
    model = build_model(config.model, compile=False)
    model.load_weights(str(store.checkpoint(trial_id)))
    return model


# ---------------------------------------------------------------------------- the search
def random_search(view, space: dict, n_trials: int, store: Store, base: TrainConfig,
                  seed: int = 0, data=None, retries: int = 2, n_test: int | None = 2048,
                  progress: bool = True) -> "pandas.DataFrame":
    """Sample n_trials configurations, run them on a load-balanced view, return the table.

    Each trial is one task; IPyParallel retries a task whose engine died (`retries`), and the
    retry resumes from the trial's checkpoint. Results live in the store, so a kernel restart
    loses nothing: `store.dataframe()` reads them back.
    """
    validate_space(space)
    if n_trials < 1:
        raise ValueError(f"n_trials must be >= 1, got {n_trials}")
    rng = np.random.default_rng(seed)
    ids = [store.create_trial(sample(space, rng)) for _ in range(n_trials)]
    return run_trials(view, store, ids, base, data=data, retries=retries, n_test=n_test,
                      progress=progress)


def run_trials(view, store: Store, trial_ids, base: TrainConfig, data=None, retries: int = 2,
               n_test: int | None = 2048, progress: bool = True):
    """Submit existing trials to a load-balanced view and wait for all, with a progress bar."""
    from tqdm.auto import tqdm

    data = str(data) if data else None
    with view.temp_flags(retries=retries):
        futures = {view.apply_async(run_trial, str(store.root), t, base, data, n_test): t
                   for t in trial_ids}
    with tqdm(total=len(futures), desc="trials", unit="trial", disable=not progress) as bar:
        pending = set(futures)
        while pending:
            ready = {f for f in pending if f.ready()}
            for f in ready:
                t = futures[f]
                try:
                    st = f.get()
                    bar.set_postfix_str(f"{t}: {st['status']}")
                except Exception as e:  # retries exhausted: recorded, the search goes on
                    store.set_status(t, "failed", reason=f"{type(e).__name__}: {e}"[:500])
                    bar.set_postfix_str(f"{t}: failed")
                bar.update()
            pending -= ready
            time.sleep(0.2)
    return store.dataframe()


# ---------------------------------------------------------------------------- makespan
def makespan_from_store(store: Store, engines: int) -> dict:
    """makespan_analysis of a finished study: task times and the measured span from the store."""
    st = [store.status(t) for t in store.trial_ids()]
    st = [s for s in st if "task_seconds" in s]
    if not st:
        raise ValueError(f"no finished trial in {store.root}")
    span = max(s["finished"] for s in st) - min(s["task_started"] for s in st)
    # submission order = trial id order, which is what round-robin would have followed
    return makespan_analysis([s["task_seconds"] for s in st], engines, measured=span)


def makespan_analysis(durations, engines: int, measured: float | None = None) -> dict:
    """What load balancing buys: the measured makespan against the lower bound
    max(sum(t) / engines, max(t)) and against static round-robin on the same task times."""
    t = [float(d) for d in durations]
    if engines < 1 or not t:
        raise ValueError("need at least one engine and one task")
    lower = max(sum(t) / engines, max(t))
    loads = [0.0] * engines
    for i, d in enumerate(t):  # task i -> engine i mod E, in submission order
        loads[i % engines] += d
    greedy = [0.0] * engines
    for d in t:  # what a load-balancing scheduler does: next task to the first free engine
        greedy[int(np.argmin(greedy))] += d
    out = {"lower_bound": lower, "round_robin": max(loads), "greedy": max(greedy),
           "sum_task_seconds": sum(t), "engines": engines}
    if measured is not None:
        out["measured"] = measured
        out["measured_over_lower_bound"] = measured / lower
    return out
