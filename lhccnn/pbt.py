"""Population-based training: generations of members bred by a genetic algorithm, run on Dask.

A generation is P members, each trained k epochs from the weights it inherited. At its end every
member has a figure of merit (validation loss); lhccnn.ga breeds the next generation: the fittest
fraction (the survivors) carry on, the other places go to children of fitness-drawn survivors,
crossed over and mutated, starting from the fitter parent's checkpoint. Everything is kept in a
trial store (one trial per member per generation, named g003-m01), so the lineage is on disk and
a restarted kernel resumes at the next generation with the same state. Breeding for generation g
draws from a generator seeded with (seed, g), and each member's training from (seed, g, member):
two runs with one seed and one steering schedule give the same lineage.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import threading
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import ga
from . import space as search_space
from .cluster import AllocationEnded, allocation_ended
from .config import TrainConfig, data_dir
from .files import append_line, locked, read_json, read_lines, write_json
from .hpo import trial_config
from .runner import callback, end_attempt, run_attempt
from .space import LINEAGE, space_from_dict, space_to_dict, validate_space
from .store import CheckpointError, DriverLock, Store

log = logging.getLogger(__name__)


def default_space() -> dict:
    """What may change along a lineage: not the architecture, whose weights are inherited."""
    return search_space.default_space(LINEAGE)


def member_config(n_train: int = 4096, n_val: int = 1024, **changes) -> TrainConfig:
    """A PBT member's training, shared by notebook 05, `lhccnn pbt` and the benchmarks: batch 64,
    no learning-rate warm-up (a member continues from weights it inherited), one epoch per call
    (PBTConfig.epochs_per_generation says how many calls make a generation)."""
    return TrainConfig(
        n_train=n_train, n_val=n_val, batch_size=64, epochs=1, warmup_epochs=0.0, **changes
    )


@dataclass(frozen=True)
class PBTConfig:
    """A run's shape. The paper: population 100, 100 generations, mutation 0.05, crossover 0.33;
    small populations need more mutation to keep exploring. `survivors`: the fittest fraction,
    which carries on unchanged and is the only one to breed (truncation selection): with short
    generations, keeping a single elite culls slow starters that would have ended best."""

    population: int = 8
    generations: int = 8
    epochs_per_generation: int = 1
    mutation_rate: float = 0.2
    crossover_rate: float = 0.33
    survivors: float = 0.5
    seed: int = 0

    def __post_init__(self):
        check_steering(
            population=self.population,
            mutation_rate=self.mutation_rate,
            crossover_rate=self.crossover_rate,
        )
        for name in ("generations", "epochs_per_generation"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 0 < self.survivors < 1:
            raise ValueError(f"survivors must be a fraction in (0, 1), got {self.survivors}")

    def n_survivors(self, size: int) -> int:
        """How many of `size` members carry on unchanged (and may be parents): at least one,
        and at least one place left for a child."""
        return min(max(1, round(size * self.survivors)), size - 1)


# ---------------------------------------------------------------------------- steering
STEERABLE = ("mutation_rate", "crossover_rate", "population", "paused", "stopped")


def check_steering(**values) -> None:
    """Refuse bad steering values with a message that names the knob and what it must be."""
    for key, v in values.items():
        if key not in STEERABLE:
            raise ValueError(f"unknown steering knob {key!r}; valid: {', '.join(STEERABLE)}")
        if key in ("mutation_rate", "crossover_rate"):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v <= 1:
                raise ValueError(f"{key} must be a number in [0, 1], got {v!r}")
        elif key == "population":
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 2:
                raise ValueError(f"population must be an integer >= 2, got {v!r}")
        elif not isinstance(v, bool):
            raise ValueError(f"{key} must be True or False, got {v!r}")


class Steering:
    """The knobs a user turns while a run goes on, kept in the store (steering.json).

    `set()` checks and records a request at once; the loop applies it at the next generation
    boundary and logs both (steering.jsonl: time, generation, values). Any process can steer
    a run: a widget in the notebook, or a script beside it.
    """

    def __init__(self, root: Path):
        self.path = Path(root) / "steering.json"
        self.log_path = Path(root) / "steering.jsonl"

    def values(self) -> dict:
        return read_json(self.path, {})

    def set(self, **changes) -> dict:
        check_steering(**changes)
        with locked(self.path.with_name(".steering.lock")):  # two steerers: neither change lost
            values = {**self.values(), **changes}
            write_json(self.path, values)
            self._log({"event": "requested", **changes})
        return values

    def pause(self):
        return self.set(paused=True)

    def resume(self):
        return self.set(paused=False)

    def stop(self):
        return self.set(stopped=True)

    def events(self) -> list[dict]:
        """The steering log; a torn or interleaved line is skipped, the lines after it kept."""
        return [e for e in read_lines(self.log_path) if "event" in e]

    def _log(self, row: dict) -> None:
        append_line(self.log_path, {"time": time.time(), **row})


# ---------------------------------------------------------------------------- checkpoints
class GenerationFailed(RuntimeError):
    """No member of a generation reached a figure of merit: nothing to breed from."""


def load_inherited(
    model, store: Store, trial_id: str | None, optimizer: str | None = None
) -> tuple[str | None, list[str], bool]:
    """Load the verified checkpoint of `trial_id` (and its optimizer state, if `optimizer` is
    the kind that saved it); if it is bad, its parent's, and so on up the lineage. Returns
    (the trial whose weights were loaded or None, the warnings, whether the optimizer state
    was kept). Restarting Adam's moments every generation would cost progress that random
    search's uninterrupted trials keep; the learning rate stays the member's own."""
    warned = []
    while trial_id is not None:
        try:
            rec = store.load_checkpoint(model, trial_id, optimizer=optimizer)
            return trial_id, warned, rec["optimizer_loaded"]
        except (CheckpointError, OSError, ValueError) as e:
            parent = (store.config(trial_id) or {}).get("inherit")
            msg = f"checkpoint of {trial_id} unusable ({e}); falling back to " + (
                f"its parent's {parent}" if parent else "fresh weights"
            )
            warnings.warn(msg, RuntimeWarning, stacklevel=2)
            log.warning(msg)
            warned.append(msg)
            trial_id = parent
    return None, warned, False


# ---------------------------------------------------------------------------- one member
def member_seed(seed: int, generation: int, member: int) -> int:
    return int(np.random.SeedSequence([seed, generation, member]).generate_state(1)[0] % 2**31)


def train_member(
    store_root: str,
    trial_id: str,
    base: TrainConfig,
    data: str | None = None,
    epochs: int = 1,
    seed: int = 0,
    work=None,
) -> dict:
    """Train one member for `epochs` epochs from its inherited weights (on a Dask worker).

    One attempt as lhccnn.runner runs every trial: per-epoch metrics and verified checkpoints,
    and a status with the figure of merit (val_loss) and the time spent on each part. A retry
    of a member that already ended (its worker died after the work was done) returns the
    recorded result. `work`: a lhccnn.simulate.SimulatedWork replaces the training (scale
    benchmarks only).
    """
    if work is not None:
        return run_attempt(
            store_root, trial_id, lambda attempt: work.train_member(attempt, epochs, load_inherited)
        )
    return run_attempt(
        store_root, trial_id, lambda attempt: _train_member(attempt, base, data, epochs, seed)
    )


def _train_member(attempt, base: TrainConfig, data, epochs: int, seed: int) -> dict:
    import tensorflow as tf

    from . import train
    from .model import reseed

    store, trial_id = attempt.store, attempt.trial_id
    cfg = store.config(trial_id)
    task_started = store.status(trial_id).get("task_started") or time.time()
    generation, member = cfg["generation"], cfg["member"]
    hp = {k: v for k, v in cfg.items() if k not in LINEAGE_KEYS}
    config = trial_config(base, hp).replace(
        epochs=epochs, seed=member_seed(seed, generation, member)
    )
    data = Path(data) if data else data_dir()
    train.configure_threads(config.intra_threads, config.inter_threads)
    tf.keras.utils.set_random_seed(config.seed)

    t = time.perf_counter()
    pipes = train.pipelines(config, data, epochs=epochs)
    fresh = cfg.get("inherit") is None
    model = _member_model(config.model, fresh)
    setup_s = time.perf_counter() - t

    t = time.perf_counter()
    loaded_from, warned, optimizer_kept = load_inherited(
        model, store, cfg.get("inherit"), config.model.optimizer
    )
    if loaded_from is None and not fresh:  # no usable ancestor: fresh weights, as a new member
        model = _member_model(config.model, fresh=True)
    if not optimizer_kept:
        model.optimizer.set_weights(model._initial_optimizer_state)  # afresh
    tf.keras.backend.set_value(model.optimizer.lr, config.model.lr)
    reseed(model, config.model.dropout, config.seed)
    load_s = time.perf_counter() - t

    # epochs are numbered along the lineage
    cb = callback(attempt, epoch_offset=generation * epochs, optimizer=config.model.optimizer)
    t = time.perf_counter()
    history = train.fit(model, pipes, epochs, callbacks=[cb])
    train_s = time.perf_counter() - t - cb.save_s
    val_loss = math.nan if cb.nan else history["val_loss"][-1]
    return end_attempt(
        attempt,
        "completed" if math.isfinite(val_loss) else "diverged",
        task_started,
        val_loss=val_loss,
        val_accuracy=history["val_accuracy"][-1],
        optimizer_kept=optimizer_kept,
        loaded_from=loaded_from,
        warnings=warned,
        setup_s=setup_s,
        load_s=load_s,
        train_s=train_s,
        save_s=cb.save_s,
        **({"reason": "loss became NaN"} if cb.nan else {}),
    )


LINEAGE_KEYS = ("generation", "member", "parents", "inherit")


_MODELS = threading.local()  # per worker thread: (architecture, optimizer kind) -> model


def _member_model(mc, fresh: bool):
    """A compiled, reusable model for this architecture and optimizer kind: this worker
    thread's cached one (its weights, optimizer state, lr and dropout are all set anew by the
    caller), or, when `fresh` or none is cached, a new one with initial weights drawn from the
    member's seed, kept for the next member. Reuse skips Keras's graph tracing, which cost
    about a third of a one-epoch member; the seeded dropout keeps results independent of
    which members a worker ran before."""
    from .model import build_model

    cache = _MODELS.__dict__.setdefault("models", {})
    key = (mc.conv_sizes, mc.dense_sizes, mc.optimizer)
    if fresh or key not in cache:
        model = build_model(mc, reusable=True)
        model.optimizer._create_all_weights(model.trainable_variables)  # legacy: make its slots
        model._initial_optimizer_state = model.optimizer.get_weights()
        cache[key] = model
    return cache[key]


# ---------------------------------------------------------------------------- the loop
class PBT:
    """A PBT run kept in `root`. `PBT.create(root, base, space, config)` starts a new one,
    `PBT.open(root)` reads one back; `PBT(root, ...)` does whichever applies (a notebook run
    again after its kernel died resumes). `run()` resumes at the first unfinished generation.
    `work`: simulated training (lhccnn.simulate, scale benchmarks only), recorded in pbt.json."""

    def __init__(
        self,
        root,
        base: TrainConfig | None = None,
        space: dict | None = None,
        config: PBTConfig | None = None,
        data=None,
        work=None,
    ):
        self.root = Path(root)
        self.store = Store(self.root)
        self.steering = Steering(self.root)
        meta = read_json(self.root / "pbt.json")
        if meta is None:
            meta = self._write_new(base, space, config, data, work)
        else:
            self._check_same(meta, base=base, space=space, config=config)
        self.base = TrainConfig.from_dict(meta["base"])
        self.space = space_from_dict(meta["space"])
        self.config = PBTConfig(**meta["config"])
        self.data = meta["data"]
        self.work = _work_from_dict(meta.get("work"))
        self._thread = None
        self._error = None

    @classmethod
    def create(cls, root, base=None, space=None, config=None, data=None, work=None) -> PBT:
        """A new run in `root`; refuses a folder that already holds one."""
        if (Path(root) / "pbt.json").exists():
            raise FileExistsError(f"{Path(root) / 'pbt.json'}: a PBT run is already there")
        return cls(root, base, space, config, data, work)

    @classmethod
    def open(cls, root) -> PBT:
        """The run kept in `root`, as it was created; refuses a folder that holds none."""
        if not (Path(root) / "pbt.json").exists():
            raise FileNotFoundError(f"{Path(root) / 'pbt.json'}: no PBT run there")
        return cls(root)

    def _write_new(self, base, space, config, data, work) -> dict:
        meta = {
            "base": (base or TrainConfig()).to_dict(),
            "space": space_to_dict(validate_space(space or default_space())),
            "config": dataclasses.asdict(config or PBTConfig()),
            "data": str(data) if data else None,
            "created": time.time(),
            "work": work.to_dict() if work is not None else None,
        }
        write_json(self.root / "pbt.json", meta)
        self.steering.set(
            **{k: meta["config"][k] for k in ("mutation_rate", "crossover_rate", "population")},
            paused=False,
            stopped=False,
        )
        return meta

    def _check_same(self, meta: dict, **given) -> None:
        """What the caller gave must be what the run on disk was created with."""
        as_dicts = {
            "base": given["base"] and given["base"].to_dict(),
            "space": given["space"] and space_to_dict(given["space"]),
            "config": given["config"] and dataclasses.asdict(given["config"]),
        }
        # a run written before a TrainConfig field existed holds that field's default
        stored = dict(meta, base=TrainConfig.from_dict(meta["base"]).to_dict())
        for key, value in as_dicts.items():
            plain = json.loads(json.dumps(stored[key]))
            if value is not None and json.loads(json.dumps(value)) != plain:
                raise ValueError(
                    f"{self.root / 'pbt.json'} already holds a PBT run with another {key}; "
                    f"open it with PBT.open({str(self.root)!r}) or use a new directory"
                )

    # -------------------------------------------------------------- reading the store
    def members(self, generation: int) -> list[str]:
        rec = read_json(self._gen_path(generation))
        return rec["members"] if rec else []

    def generation_record(self, generation: int) -> dict | None:
        return read_json(self._gen_path(generation))

    def finished_generations(self) -> int:
        g = 0
        while (self.generation_record(g) or {}).get("finished"):
            g += 1
        return g

    def lineage(self):
        """Every member of every generation: parents, inherited weights, hyper-parameters,
        figure of merit and fitness (a pandas DataFrame)."""
        import pandas as pd

        rows = []
        for g in range(self.finished_generations() + 1):
            ids = self.members(g)
            statuses = [self.store.status(t) for t in ids]
            fit = _fitness_or_none([st.get("val_loss") for st in statuses])
            for i, (t, st) in enumerate(zip(ids, statuses)):
                rows.append(
                    {
                        "trial": t,
                        **self.store.config(t),
                        "status": st.get("status"),
                        "val_loss": st.get("val_loss"),
                        "fitness": fit[i] if fit is not None else None,
                        "val_accuracy": st.get("val_accuracy"),
                    }
                )
        return pd.DataFrame(rows).set_index("trial") if rows else pd.DataFrame()

    def history(self) -> list[dict]:
        """Per finished generation: mean and best figure of merit, the best member, timings."""
        out = []
        for g in range(self.finished_generations()):
            rec = self.generation_record(g)
            losses = np.array(
                [self.store.status(t).get("val_loss", np.nan) for t in rec["members"]], dtype=float
            )
            ok = np.isfinite(losses)
            best = int(np.nanargmin(np.where(ok, losses, np.nan))) if ok.any() else None
            out.append(
                {
                    "generation": g,
                    "mean_val_loss": float(np.mean(losses[ok])) if ok.any() else None,
                    "best_val_loss": float(losses[best]) if best is not None else None,
                    "best": rec["members"][best] if best is not None else None,
                    **{
                        k: rec.get(k)
                        for k in (
                            "wall_s",
                            "work_s",
                            "overhead_s",
                            "overhead_fraction",
                            "checkpoint_s",
                            "workers",
                        )
                    },
                }
            )
        return out

    def best_lineage(self) -> list[str]:
        """The best member of the last finished generation and its ancestors (by inherited
        weights), oldest first: the hyper-parameter schedule that produced the best model."""
        hist = self.history()
        if not hist:
            return []
        chain, t = [], hist[-1]["best"]
        while t is not None:
            chain.append(t)
            t = self.store.config(t).get("inherit")
        return chain[::-1]

    def best_fom(self) -> float:
        """The lowest validation loss any member reached at the end of any epoch."""
        return min(
            (
                m["val_loss"]
                for t in self.store.trial_ids()
                for m in self.store.metrics(t)
                if math.isfinite(m.get("val_loss", math.nan))
            ),
            default=math.nan,
        )

    # -------------------------------------------------------------- running
    def run(
        self, client, on_generation=None, progress: bool = True, poll: float = 0.5
    ) -> list[dict]:
        """Run (or resume) generations until the last, or until the steering says stop.

        `client` is a dask.distributed Client (from `ipyparallel.Client.become_dask()` or
        dask-jobqueue); `on_generation(pbt, generation)` is called after each generation.
        Returns the history. A stop request left from an earlier run is cleared: calling run
        again is the request to go on. One driver per run: a second is refused (LockHeld)."""
        with DriverLock(self.root, holder="pbt.run"):
            if self.steering.values().get("stopped"):
                self.steering.set(stopped=False)
            g = self.finished_generations()
            while g < self.config.generations:
                values = self._apply_steering(g)
                while values.get("paused") and not values.get("stopped"):
                    time.sleep(poll)
                    values = self._apply_steering(g)
                if values.get("stopped"):
                    log.info("stopped by steering before generation %d", g)
                    break
                ids = self.members(g) or self._create_generation(g, values)
                self._run_generation(client, g, ids, progress)
                if on_generation:
                    try:
                        on_generation(self, g)
                    except Exception:  # a plot that fails to redraw must not end the run
                        log.exception("on_generation callback failed after generation %d", g)
                g += 1
        return self.history()

    def start(self, client, on_generation=None) -> threading.Thread:
        """`run` in a background thread, so the notebook stays free for the steering widgets."""
        if self._thread and self._thread.is_alive():
            raise RuntimeError("this PBT run is already running")

        def target():
            try:
                self.run(client, on_generation=on_generation, progress=False)
            except BaseException as e:  # kept for wait(), which re-raises it in the caller
                self._error = e
                log.exception("PBT run failed")

        self._error = None
        self._thread = threading.Thread(target=target, name="pbt", daemon=True)
        self._thread.start()
        return self._thread

    def wait(self, timeout: float | None = None) -> list[dict]:
        if self._thread:
            self._thread.join(timeout)
            if self._thread.is_alive():
                raise TimeoutError(f"PBT run still going after {timeout} s")
        if self._error:
            raise self._error
        return self.history()

    def running(self) -> bool:
        return bool(self._thread and self._thread.is_alive())

    # -------------------------------------------------------------- internals
    def _gen_path(self, generation: int) -> Path:
        return self.root / "generations" / f"g{generation:03d}.json"

    def _apply_steering(self, g: int) -> dict:
        """Read the steering; log what changed since the last generation that applied it."""
        values = self.steering.values()
        applied = [e for e in self.steering.events() if e["event"] == "applied"]
        last = applied[-1]["values"] if applied else None
        if values != last:
            self.steering._log({"event": "applied", "generation": g, "values": values})
        return values

    def _create_generation(self, g: int, values: dict) -> list[str]:
        cfg = self.config
        size = values.get("population", cfg.population)
        if g == 0:
            rng = np.random.default_rng([cfg.seed, 0])
            plan = [
                {"hp": ga.sample(self.space, rng), "parents": (), "inherit": None}
                for _ in range(size)
            ]
        else:
            prev = self.members(g - 1)
            losses = [self.store.status(t).get("val_loss", math.nan) for t in prev]
            hps = [{k: self.store.config(t)[k] for k in self.space} for t in prev]
            keep = min(cfg.n_survivors(size), len(prev))  # the population may have grown
            plan = ga.breed(
                hps,
                losses,
                self.space,
                np.random.default_rng([cfg.seed, g]),
                mutation_rate=values.get("mutation_rate", cfg.mutation_rate),
                crossover_rate=values.get("crossover_rate", cfg.crossover_rate),
                n_elite=keep,
                size=size,
                n_parents=min(max(2, keep), len(prev)),
            )
            for p in plan:  # indices into the previous generation -> its trial ids
                p["parents"] = sorted({prev[i] for i in p["parents"]})
                p["inherit"] = prev[p["inherit"]]
        ids = []
        for m, p in enumerate(plan):
            ids.append(
                self.store.create_trial(
                    {
                        **p["hp"],
                        "generation": g,
                        "member": m,
                        "parents": list(p["parents"]),
                        "inherit": p["inherit"],
                    },
                    trial_id=f"g{g:03d}-m{m:02d}",
                )
            )
        self._gen_path(g).parent.mkdir(exist_ok=True)
        write_json(
            self._gen_path(g),
            {"generation": g, "members": ids, "created": time.time(), "steering": values},
        )
        return ids

    def _run_generation(self, client, g: int, ids: list[str], progress: bool) -> None:
        t0 = time.perf_counter()
        todo = self._members_to_train(ids)
        self._train_members(client, g, len(ids), todo, progress)
        self._finish_generation(client, g, ids, time.perf_counter() - t0)

    def _members_to_train(self, ids: list[str]) -> list[str]:
        """The members without a result; those that failed or were stopped in an earlier run
        are queued again."""
        todo = [
            t for t in ids if self.store.status(t).get("status") not in ("completed", "diverged")
        ]
        for t in todo:
            if self.store.status(t).get("status") in ("failed", "stopped"):
                self.store.requeue(t)
        return todo

    def _train_members(self, client, g: int, size: int, todo: list[str], progress: bool) -> None:
        """Train `todo` on the Dask workers, one member per free worker thread."""
        from distributed import wait
        from tqdm.auto import tqdm

        futures = {}

        def submit(t):
            f = client.submit(
                train_member,
                str(self.root),
                t,
                self.base,
                self.data,
                self.config.epochs_per_generation,
                self.config.seed,
                self.work,
                pure=False,
                retries=1,
            )
            futures[f] = t
            return f

        # one member per free worker thread, the next when one finishes: given all at once, the
        # scheduler queues a member behind a busy worker's and moves it only later (stealing),
        # idle time measured at up to 0.9 s of a 19 s generation
        slots = sum(w["nthreads"] for w in client.scheduler_info()["workers"].values()) or 1
        pending = {submit(t) for t in todo[:slots]}
        waiting = todo[slots:]
        with tqdm(
            total=size,
            initial=size - len(todo),
            desc=f"generation {g}",
            unit="member",
            disable=not progress,
        ) as bar:
            while pending:
                try:  # wake at least every second: the allocation may have ended meanwhile
                    done, pending = wait(pending, timeout=1.0, return_when="FIRST_COMPLETED")
                except TimeoutError:
                    done = set()
                ended = allocation_ended(client)
                if ended:
                    client.cancel(list(pending))
                    raise AllocationEnded(
                        f"{ended}: generation {g} stopped with "
                        f"{len(pending) + len(waiting)} members unfinished; "
                        "run() resumes it on a new cluster"
                    )
                for f in done:
                    if waiting:
                        pending.add(submit(waiting.pop(0)))
                    self._collect(f, futures[f], bar)

    def _collect(self, future, trial_id: str, bar) -> None:
        """A finished member's task: its warnings said here, its failure recorded (fitness 0,
        the run goes on)."""
        try:
            st = future.result()
            for msg in st.get("warnings") or []:  # raised on the worker: say it here
                warnings.warn(f"{trial_id}: {msg}", RuntimeWarning, stacklevel=3)
            bar.set_postfix_str(f"{trial_id}: val_loss {st.get('val_loss', math.nan):.4f}")
        except Exception as e:  # a member that keeps failing
            self.store.fail(trial_id, f"{type(e).__name__}: {e}")
            log.warning("%s failed: %s", trial_id, e)
        bar.update()

    def _finish_generation(self, client, g: int, ids: list[str], wall: float) -> None:
        """Record the generation's timing and mark it finished; refuse a generation in which no
        member reached a finite figure of merit."""
        statuses = {t: self.store.status(t) for t in ids}
        if not any(math.isfinite(st.get("val_loss", math.nan)) for st in statuses.values()):
            # left unfinished: after the cause is fixed, run() trains these members again
            t, st = next(iter(statuses.items()))
            raise GenerationFailed(
                f"generation {g}: no member reached a finite val_loss; {t} "
                f"{st.get('status')}: {st.get('reason', 'val_loss not finite')}"
            )
        rec = self.generation_record(g)
        rec.update(
            self._timing(statuses.values(), wall, len(client.scheduler_info()["workers"]) or 1)
        )
        rec["finished"] = time.time()
        write_json(self._gen_path(g), rec)

    def _timing(self, statuses, wall: float, workers: int) -> dict:
        """Overhead of a generation as the paper counts it: checkpoint save/load and scheduling.
        Work is what a member's task does besides checkpoints (model and data setup, training,
        validation); overhead = wall time less the busiest worker's work."""
        work: dict = {}
        ckpt = setup = 0.0
        for st in statuses:
            if "task_seconds" in st:
                w = st.get("engine")
                work[w] = work.get(w, 0.0) + st["task_seconds"] - st["load_s"] - st["save_s"]
                ckpt += st["load_s"] + st["save_s"]
                setup += st["setup_s"]
        busiest = max(work.values(), default=0.0)
        return {
            "wall_s": wall,
            "work_s": busiest,
            "overhead_s": wall - busiest,
            "overhead_fraction": (wall - busiest) / wall if wall > 0 else None,
            "checkpoint_s": ckpt,
            "setup_s": setup,
            "workers": workers,
        }


def _work_from_dict(d: dict | None):
    """A run's simulated work as pbt.json records it (scale benchmarks only), or None."""
    if d is None:
        return None
    from .simulate import SimulatedWork

    return SimulatedWork(**{**d, "cost": tuple(d["cost"]), "residuals": tuple(d["residuals"])})


def _fitness_or_none(losses):
    try:
        return ga.fitness([math.nan if v is None else v for v in losses]).tolist()
    except ValueError:
        return None


def compare_with_random_search(
    client,
    root,
    base: TrainConfig,
    config: PBTConfig,
    seeds,
    space: dict | None = None,
    data=None,
    progress: bool = True,
) -> list[dict]:
    """PBT against random search at equal compute, per seed: random search trains the same
    initial population (same seed) for generations x epochs_per_generation epochs each, with no
    breeding, so both spend the same number of epochs. Best figure of merit = lowest validation
    loss reached at the end of any epoch. Times (`pbt_s`, `random_s`) are the sums of the runs'
    recorded generation wall times, so a run read back from disk reports what it took to train,
    not the moment it took to read."""
    rows = []
    for seed in seeds:
        cfg = dataclasses.replace(config, seed=seed)
        rs_cfg = dataclasses.replace(
            cfg, generations=1, epochs_per_generation=cfg.generations * cfg.epochs_per_generation
        )
        pbt = PBT(Path(root) / f"seed{seed}" / "pbt", base, space, cfg, data)
        rs = PBT(Path(root) / f"seed{seed}" / "random", base, space, rs_cfg, data)
        pbt.run(client, progress=progress)
        rs.run(client, progress=progress)
        epochs = {
            name: sum(len(r.store.metrics(i)) for i in r.store.trial_ids())
            for name, r in (("pbt", pbt), ("random", rs))
        }
        rows.append(
            {
                "seed": seed,
                "pbt_best_val_loss": pbt.best_fom(),
                "random_best_val_loss": rs.best_fom(),
                "pbt_epochs": epochs["pbt"],
                "random_epochs": epochs["random"],
                "pbt_s": sum(h["wall_s"] for h in pbt.history()),
                "random_s": sum(h["wall_s"] for h in rs.history()),
            }
        )
        rows[-1]["pbt_wins"] = rows[-1]["pbt_best_val_loss"] < rows[-1]["random_best_val_loss"]
    return rows


# ------------------------------------------------------------------ tables for the notebook


def _by_generation(history: list[dict], columns: list[str]):
    import pandas as pd

    return pd.DataFrame(history).set_index("generation")[columns]


def history_table(history: list[dict]):
    """Per generation (rows of `PBT.history`): the population's mean and best figure of merit
    and the best member, as a pandas DataFrame."""
    return _by_generation(history, ["mean_val_loss", "best_val_loss", "best"])


def timing_table(history: list[dict]):
    """Per generation: wall time, the busiest worker's work, the rest of the wall time (the
    loop's overhead) as seconds and as a fraction, and the time spent on checkpoints."""
    return _by_generation(
        history, ["wall_s", "work_s", "overhead_s", "overhead_fraction", "checkpoint_s"]
    )


def lineage_table(lineage, chain: list[str]):
    """The rows of `PBT.lineage` on the chain `PBT.best_lineage` gives: each ancestor's
    parents, hyper-parameters and figure of merit."""
    return lineage.loc[chain, ["parents", "lr", "dropout", "optimizer", "val_loss"]]


def member_costs(store: Store, trials) -> str:
    """One line: the median checkpoint load, checkpoint save and training time per member."""
    import pandas as pd

    med = pd.DataFrame([store.status(t) for t in trials])[["load_s", "save_s", "train_s"]].median()
    return (
        f"checkpoint load median {med.load_s:.3f} s, save {med.save_s:.3f} s, "
        f"training median {med.train_s:.2f} s per member"
    )


def comparison_table(rows: list[dict]):
    """`compare_with_random_search`'s rows as a pandas DataFrame, one row per seed."""
    import pandas as pd

    return pd.DataFrame(rows).set_index("seed")
