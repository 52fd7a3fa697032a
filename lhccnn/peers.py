"""lhccnn against Ray Tune and Optuna: one CNN, dataset, search space, epoch budget and workers.

Five methods search notebook 05's space (learning rate, dropout, optimizer) for notebook 05's
budget (population x generations x epochs per generation, 48 epochs by default) on the same
number of worker processes, each as its own documentation teaches:

- lhccnn_random and lhccnn_pbt: `lhccnn.pbt` on Dask workers that are IPyParallel engines
  (random search is a PBT run of one long generation: the same population, no breeding);
- ray_pbt: Ray Tune's PopulationBasedTraining, perturbing every epoch, with Tune's own
  checkpoints; ray_asha: Ray Tune's ASHA (random configurations, trials of up to one lineage's
  epochs, stopped early at its rungs);
- optuna_tpe: Optuna's TPE sampler with its median pruner, one process per worker sharing a
  journal-file storage.

The three peers train through `EpochTrainer` (the same model, pipelines and threads as lhccnn's
members) and claim each epoch from a `Ledger` before training it, so none trains more than the
budget; every trained epoch is a ledger row, which gives the count, the training time and the
anytime curve. Ray and Optuna are the optional `[peers]` extra.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import multiprocessing
import os
import pickle
import random
import shutil
import statistics
import sys
import threading
import time
import zlib
from dataclasses import dataclass
from pathlib import Path

from . import results
from .config import TrainConfig, data_dir
from .files import append_line, locked, read_lines
from .space import LINEAGE, Choice, LogUniform, Uniform, default_space

METHODS = ("lhccnn_random", "lhccnn_pbt", "ray_pbt", "ray_asha", "optuna_tpe")


@dataclass(frozen=True)
class Setup:
    """The problem every method gets: notebook 05's parameters (a unit test keeps them equal)."""

    population: int = 8
    generations: int = 6
    epochs_per_generation: int = 1
    n_train: int = 4096
    n_val: int = 1024
    mutation_rate: float = 0.2
    crossover_rate: float = 0.33
    survivors: float = 0.5
    workers: int = 2

    def __post_init__(self):
        for f in dataclasses.fields(self):
            if f.type == "int" and getattr(self, f.name) < 1:
                raise ValueError(f"{f.name} must be >= 1, got {getattr(self, f.name)}")

    @property
    def budget(self) -> int:
        """Epochs per method and seed."""
        return self.population * self.generations * self.epochs_per_generation

    @property
    def max_epochs(self) -> int:
        """The most epochs one trial trains (a lineage's length)."""
        return self.generations * self.epochs_per_generation

    def base(self) -> TrainConfig:
        from .pbt import member_config

        return member_config(n_train=self.n_train, n_val=self.n_val)

    def pbt_config(self, seed: int):
        from .pbt import PBTConfig

        return PBTConfig(
            population=self.population,
            generations=self.generations,
            epochs_per_generation=self.epochs_per_generation,
            mutation_rate=self.mutation_rate,
            crossover_rate=self.crossover_rate,
            survivors=self.survivors,
            seed=seed,
        )


def space() -> dict:
    """The searched dimensions: PBT's (notebook 05's), as lhccnn.space domains."""
    return default_space(LINEAGE)


def trial_seed(seed: int, trial: str) -> int:
    """A trial's training seed, from the run's seed and the peer's own trial name."""
    return zlib.crc32(f"{seed}/{trial}".encode()) % 2**31


# ---------------------------------------------------------------------------- the budget
class Ledger:
    """The epochs a method may still train and those it trained, shared by its processes
    through files under a lock: a trial claims each epoch before it trains it (no method
    trains more than its budget), and each trained epoch is one row."""

    def __init__(self, folder, budget: int):
        self.folder = Path(folder).resolve()  # Ray runs each trial in a folder of its own
        self.folder.mkdir(parents=True, exist_ok=True)
        self.budget = budget
        self._lock = self.folder / "ledger.lock"
        self._claims = self.folder / "claims.jsonl"
        self._rows = self.folder / "epochs.jsonl"

    def claim(self, trial: str) -> bool:
        with locked(self._lock):
            if self.spent() >= self.budget:
                return False
            append_line(self._claims, {"trial": trial, "time": time.time()})
            return True

    def spent(self) -> int:
        return len(read_lines(self._claims))

    def record(self, trial: str, **metrics) -> None:
        append_line(self._rows, {"trial": trial, "time": time.time(), **metrics})

    def rows(self) -> list[dict]:
        return read_lines(self._rows)

    def done(self) -> bool:
        """Every epoch of the budget trained and recorded. Not merely claimed: a search ended
        when the last claim is made would kill that epoch's training half-way."""
        return len(self.rows()) >= self.budget

    def trained(self, trial: str) -> int:
        """Epochs `trial` itself trained (not those it inherited with a checkpoint)."""
        return sum(r["trial"] == trial for r in self.rows())


# ---------------------------------------------------------------------------- one trial
class EpochTrainer:
    """One trial's CNN, trained an epoch at a time: lhccnn's model, pipelines and one thread,
    for the peers' trainables. `state()`/`restore()` are what their own checkpoints hold:
    weights, and the optimizer's state if the optimizer is the same kind."""

    def __init__(self, base: TrainConfig, hp: dict, seed: int, data=None):
        import tensorflow as tf

        from . import train
        from .hpo import trial_config
        from .model import build_model

        self.config = trial_config(base, hp).replace(epochs=1, seed=seed)
        train.configure_threads(self.config.intra_threads, self.config.inter_threads)
        tf.keras.utils.set_random_seed(seed)
        self.pipes = train.pipelines(self.config, Path(data) if data else data_dir(), epochs=1)
        self.model = build_model(self.config.model)
        self.model.optimizer._create_all_weights(self.model.trainable_variables)  # legacy
        self.epochs = 0  # along the lineage, restored with the weights

    def epoch(self) -> dict:
        from . import train

        t = time.perf_counter()
        h = train.fit(self.model, self.pipes, 1)
        self.epochs += 1
        return {
            "val_loss": h["val_loss"][-1],
            "val_accuracy": h["val_accuracy"][-1],
            "train_s": time.perf_counter() - t,
        }

    def state(self) -> dict:
        return {
            "weights": self.model.get_weights(),
            "optimizer": self.config.model.optimizer,
            "optimizer_state": self.model.optimizer.get_weights(),
            "epochs": self.epochs,
        }

    def restore(self, state: dict) -> None:
        self.model.set_weights(state["weights"])
        if state["optimizer"] == self.config.model.optimizer:
            self.model.optimizer.set_weights(state["optimizer_state"])
        self.epochs = state["epochs"]


def _context(setup: Setup, seed: int, ledger: Ledger, data, **more) -> dict:
    """What a peer's trial needs in its own process (plain values: Ray and spawn pickle it)."""
    return {
        "ledger": str(ledger.folder),
        "budget": setup.budget,
        "base": setup.base(),
        "seed": seed,
        "data": str(Path(data).resolve() if data else data_dir()),
        "max_epochs": setup.max_epochs,
        **more,
    }


# ---------------------------------------------------------------------------- Ray Tune
def _ray_space(dims: dict, mutations: bool = False) -> dict:
    """lhccnn domains as Tune's; for PBT's mutations a choice is a list, which Tune perturbs
    by moving to a neighbour (it would multiply a Domain's value, which fails on a name)."""
    from ray import tune

    out = {}
    for name, d in dims.items():
        if isinstance(d, Choice):
            out[name] = list(d.values) if mutations else tune.choice(list(d.values))
        elif isinstance(d, LogUniform):
            out[name] = tune.loguniform(d.low, d.high)
        elif isinstance(d, Uniform):
            out[name] = tune.uniform(d.low, d.high)
        else:
            raise ValueError(f"{name}: no Ray Tune domain for {d!r}")
    return out


def _clip(dims: dict, config: dict) -> dict:
    """Tune's perturbation multiplies by 0.8 or 1.2 and never clips: a dropout of 0.7 would
    reach 1.0 in two steps. Keep values inside the space (Tune's custom_explore_fn hook)."""
    out = dict(config)
    for name, d in dims.items():
        if isinstance(d, (Uniform, LogUniform)):
            out[name] = min(max(out[name], d.low), math.nextafter(d.high, d.low))
    return out


def _ray_trial(config: dict, ctx: dict) -> None:
    """A Tune function trainable: restore Tune's checkpoint if it gave one, then train an epoch
    per claim until this trial has trained a lineage's epochs itself, reporting and
    checkpointing each. Counted per trial, not along the lineage: a trial that PBT restarts
    from a member further on would otherwise train less, and the population its budget short."""
    import tempfile

    from ray import tune

    trial = tune.get_context().get_trial_id()
    ledger = Ledger(ctx["ledger"], ctx["budget"])
    hp = {k: config[k] for k in LINEAGE}
    trainer = EpochTrainer(ctx["base"], hp, trial_seed(ctx["seed"], trial), ctx["data"])
    checkpoint = tune.get_checkpoint()
    if checkpoint:
        with checkpoint.as_directory() as d:
            trainer.restore(pickle.loads((Path(d) / "state.pkl").read_bytes()))
    while ledger.trained(trial) < ctx["max_epochs"] and ledger.claim(trial):
        metrics = trainer.epoch()
        ledger.record(trial, **metrics, hp=hp)
        with tempfile.TemporaryDirectory() as d:
            (Path(d) / "state.pkl").write_bytes(pickle.dumps(trainer.state()))
            tune.report(
                {"val_loss": metrics["val_loss"], "epochs": trainer.epochs},
                checkpoint=tune.Checkpoint.from_directory(d),
            )


def _start_ray(cpus: int, tries: int = 3) -> None:
    """A local Ray with `cpus` CPUs. Its raylet gives the metrics agent a fixed 15 s to start
    and otherwise dies, which a loaded 2-core machine can exceed (ray-project/ray#65983: "The
    current node timed out during startup"); start again, at most `tries` times."""
    import ray

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    for attempt in range(1, tries + 1):
        try:
            ray.init(
                num_cpus=cpus,
                include_dashboard=False,
                log_to_driver=False,
                configure_logging=False,
            )
            return
        except Exception as e:  # Ray raises a bare Exception for this
            ray.shutdown()
            if "timed out during startup" not in str(e) or attempt == tries:
                raise
            print(f"Ray did not start ({e}); try {attempt + 1} of {tries}", file=sys.stderr)


STRICT = "TUNE_DISABLE_STRICT_METRIC_CHECKING"


def run_ray(method: str, setup: Setup, seed: int, folder: Path, data=None) -> dict:
    """Ray Tune's PBT or ASHA on `setup.workers` CPUs, one per trial, in a local Ray."""
    import ray
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler, PopulationBasedTraining
    from ray.tune.search import BasicVariantGenerator

    dims = space()
    ledger = Ledger(folder / "ledger", setup.budget)
    # A trial Tune starts after the last epoch was claimed trains and reports nothing, which
    # Tune's strict check takes for a missing metric and fails the search with; the check is
    # read from the driver's environment each time, so it is switched off for this search only.
    strict = os.environ.get(STRICT)
    os.environ[STRICT] = "1"
    try:
        t = time.perf_counter()
        _start_ray(setup.workers)  # inside `try`: a SIGTERM while Ray starts still shuts it down
        startup_s = time.perf_counter() - t
        random.seed(seed)  # Tune's PBT draws its perturbations from `random`, in this process
        if method == "ray_pbt":
            scheduler = PopulationBasedTraining(
                time_attr="training_iteration",
                perturbation_interval=setup.epochs_per_generation,
                hyperparam_mutations=_ray_space(dims, mutations=True),
                custom_explore_fn=lambda c: _clip(dims, c),
            )
            samples = setup.population
        else:  # one bracket, reduction factor 4 (Tune's defaults), up to a lineage's epochs
            scheduler = ASHAScheduler(
                time_attr="training_iteration", max_t=setup.max_epochs, grace_period=1
            )
            samples = setup.budget  # every trial trains at least one epoch: the budget ends it

        class Budget(tune.Stopper):
            def __call__(self, trial_id, result):
                return False

            def stop_all(self):
                return ledger.done()

        ctx = _context(setup, seed, ledger, data)
        trainable = tune.with_resources(tune.with_parameters(_ray_trial, ctx=ctx), {"cpu": 1})
        tuner = tune.Tuner(
            trainable,
            param_space=_ray_space(dims),
            tune_config=tune.TuneConfig(
                metric="val_loss",
                mode="min",
                scheduler=scheduler,
                num_samples=samples,  # one CPU each: `workers` at a time
                search_alg=BasicVariantGenerator(random_state=seed),
            ),
            run_config=tune.RunConfig(
                # an absolute path: Tune reads a relative one as a URI without a scheme
                storage_path=str(Path(folder, "ray").resolve()),
                name=method,
                stop=Budget(),
                verbose=0,
            ),
        )
        t = time.perf_counter()
        results = tuner.fit()
        wall = time.perf_counter() - t
        errors = [str(r.error) for r in results if r.error]
        if errors:
            raise RuntimeError(f"{method}: {len(errors)} trial(s) failed; first: {errors[0]}")
    finally:
        ray.shutdown()
        if strict is None:
            del os.environ[STRICT]
        else:
            os.environ[STRICT] = strict
    rows = ledger.rows()  # trials that trained: ASHA's unstarted samples end without training
    return _figures(method, rows, wall, startup_s, setup, trials=len({r["trial"] for r in rows}))


# ---------------------------------------------------------------------------- Optuna
def _optuna_objective(trial, ctx: dict) -> float:
    import optuna

    dims, ledger, name = space(), Ledger(ctx["ledger"], ctx["budget"]), f"t{trial.number:04d}"
    hp = {}
    for k, d in dims.items():
        if isinstance(d, Choice):
            hp[k] = trial.suggest_categorical(k, list(d.values))
        else:  # Optuna's ranges are closed; the space's high end is open
            high = math.nextafter(d.high, d.low)
            hp[k] = trial.suggest_float(k, d.low, high, log=isinstance(d, LogUniform))
    if not ledger.claim(name):
        trial.study.stop()  # the budget is spent: end the search after this trial
        raise optuna.TrialPruned("no budget left")
    trainer = EpochTrainer(ctx["base"], hp, trial_seed(ctx["seed"], name), ctx["data"])
    while True:
        metrics = trainer.epoch()
        ledger.record(name, **metrics, hp=hp)
        trial.report(metrics["val_loss"], trainer.epochs)
        if trainer.epochs >= ctx["max_epochs"]:
            return metrics["val_loss"]
        if trial.should_prune():
            raise optuna.TrialPruned()
        if not ledger.claim(name):
            trial.study.stop()
            return metrics["val_loss"]


def _optuna_worker(ctx: dict, worker: int) -> None:
    """One worker process: the shared study, TPE seeded per worker (with one seed, both
    workers would draw the same first configurations)."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.load_study(
        study_name="peers",
        storage=_optuna_storage(ctx["storage"]),
        sampler=optuna.samplers.TPESampler(seed=ctx["seed"] * 1000 + worker),
        pruner=optuna.pruners.MedianPruner(),
    )
    study.optimize(lambda t: _optuna_objective(t, ctx))


def _optuna_storage(path: str):
    import optuna

    return optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(path))


def run_optuna(setup: Setup, seed: int, folder: Path, data=None) -> dict:
    """Optuna's TPE with its median pruner: one process per worker, one journal file."""
    import optuna

    ledger = Ledger(folder / "ledger", setup.budget)
    storage = str(folder / "optuna.journal")
    optuna.create_study(study_name="peers", storage=_optuna_storage(storage), direction="minimize")
    ctx = _context(setup, seed, ledger, data, storage=storage)
    spawn = multiprocessing.get_context("spawn")  # TensorFlow is not fork-safe
    t = time.perf_counter()
    procs = [spawn.Process(target=_optuna_worker, args=(ctx, w)) for w in range(setup.workers)]
    try:
        for p in procs:
            p.start()
        for p in procs:
            p.join()
    finally:  # interrupted: no worker outlives the run
        for p in procs:
            if p.is_alive():
                p.terminate()
                p.join(10)
    wall = time.perf_counter() - t
    bad = [p.exitcode for p in procs if p.exitcode != 0]
    if bad:
        raise RuntimeError(f"optuna_tpe: worker exit status {bad} (see the output above)")
    trials = len(optuna.load_study(study_name="peers", storage=_optuna_storage(storage)).trials)
    return _figures("optuna_tpe", ledger.rows(), wall, 0.0, setup, trials=trials)


# ---------------------------------------------------------------------------- lhccnn
def run_lhccnn(method: str, setup: Setup, seed: int, folder: Path, client, data=None) -> dict:
    """lhccnn's PBT, or its random search (one generation of a lineage's epochs), on `client`."""
    from .pbt import PBT

    config = setup.pbt_config(seed)
    if method == "lhccnn_random":
        config = dataclasses.replace(config, generations=1, epochs_per_generation=setup.max_epochs)
    run = PBT.create(folder / method, setup.base(), space(), config, data)
    t = time.perf_counter()
    run.run(client, progress=False)
    wall = time.perf_counter() - t
    rows = []
    for trial in run.store.trial_ids():
        metrics, status = run.store.metrics(trial), run.store.status(trial)
        for m in metrics:  # the member's training time, shared out over its epochs
            rows.append(
                {
                    "trial": trial,
                    "time": m["time"],
                    "val_loss": m["val_loss"],
                    "train_s": status["train_s"] / len(metrics),
                }
            )
    return _figures(method, rows, wall, 0.0, setup, trials=len(run.store.trial_ids()))


# ---------------------------------------------------------------------------- figures
def _figures(method: str, rows: list[dict], wall: float, startup_s: float, setup, trials) -> dict:
    """One method's figures from its trained epochs: the best validation loss, the epochs
    spent, the time, the overhead (wall minus training time per worker) and the anytime curve
    (best loss so far against epochs spent, in the order the epochs ended)."""
    rows = sorted(rows, key=lambda r: r["time"])
    losses = [r["val_loss"] if math.isfinite(r["val_loss"]) else math.inf for r in rows]
    curve, best = [], math.inf
    for loss in losses:
        best = min(best, loss)
        curve.append(best)
    train_s = sum(r["train_s"] for r in rows)
    return {
        "method": method,
        "best_val_loss": min(losses, default=math.inf),
        "epochs": len(rows),
        "budget": setup.budget,
        "trials": trials,
        "wall_s": wall,
        "startup_s": startup_s,
        "train_s": train_s,
        "overhead_s": wall - train_s / setup.workers,
        "anytime": curve,
    }


class Watch:
    """The processes a method starts, watched every `every` seconds while in the `with` block:
    the largest resident memory of this process and its descendants together (`peak`, Ray's
    and Optuna's workers included), and, with `reap`, an end to those of its processes that
    outlive the block by `grace` seconds (Ray's agents can outlive its shutdown on a loaded
    machine, and once the raylet is gone they are no longer anyone's children here)."""

    def __init__(self, every: float = 0.25, reap: bool = False, grace: float = 10.0):
        self.every, self.reap, self.grace = every, reap, grace
        self.peak, self.started, self.reaped = 0, {}, []
        self._done = threading.Event()

    def _sample(self):
        import psutil

        me = psutil.Process()
        while not self._done.wait(self.every):
            total = 0
            for p in [me, *me.children(recursive=True)]:
                try:
                    total += p.memory_info().rss
                except psutil.Error:
                    continue  # ended meanwhile
                new = p.pid not in self._before and p.pid not in self.started
                if new and not _lives_with_python(p):  # its command line read once, not each time
                    self.started[p.pid] = p
            self.peak = max(self.peak, total)

    def __enter__(self):
        import psutil

        self._before = {p.pid for p in psutil.Process().children(recursive=True)} | {os.getpid()}
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        import psutil

        self._done.set()
        self._thread.join()
        if self.reap:
            _, alive = psutil.wait_procs(list(self.started.values()), timeout=self.grace)
            for p in alive:
                try:
                    self.reaped.append(p.name())
                    p.kill()
                except psutil.Error:
                    pass  # ended meanwhile


def _lives_with_python(p) -> bool:
    """multiprocessing's resource tracker: started by the first spawn (Optuna's workers here),
    it serves this process until it exits, not the method that happened to start it."""
    import psutil

    try:
        return "multiprocessing.resource_tracker" in " ".join(p.cmdline())
    except psutil.Error:
        return False


def run(setup: Setup, seeds, methods, folder, data=None, say=print) -> list[dict]:
    """Every method for every seed, in one process: a row of figures each, appended to
    `folder`/rows.jsonl as it ends. Run again with the same setup, it keeps the rows it has
    and starts only the others afresh, so a crash or Ctrl-C costs only the run it cut short."""
    for m in methods:
        if m not in METHODS:
            raise ValueError(f"unknown method {m!r}; valid: {', '.join(METHODS)}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    log, plan = folder / "rows.jsonl", dataclasses.asdict(setup)
    done = {(r["seed"], r["method"]): r for r in read_lines(log) if r.get("setup") == plan}
    rows, cluster = [], None
    try:
        for seed in seeds:
            for method in methods:
                if (seed, method) in done:
                    rows.append(done[seed, method])
                    say(f"seed {seed} {method:<14} kept from {log}")
                    continue
                where = folder / f"seed{seed}" / method
                shutil.rmtree(where, ignore_errors=True)  # what a cut-short run left
                if method.startswith("lhccnn") and cluster is None:
                    cluster = _lhccnn_workers(setup.workers, say)
                # lhccnn's engines are started before and serve every run: not reaped
                with Watch(reap=not method.startswith("lhccnn")) as mem:
                    if method.startswith("lhccnn"):
                        row = run_lhccnn(method, setup, seed, where, cluster.dask(), data)
                    elif method.startswith("ray"):
                        row = run_ray(method, setup, seed, where, data)
                    else:
                        row = run_optuna(setup, seed, where, data)
                if mem.reaped:
                    say(f"seed {seed} {method}: ended what it left running: {mem.reaped}")
                row.update(seed=seed, peak_rss_mib=mem.peak / 2**20, setup=plan)
                append_line(log, row)
                rows.append(row)
                say(
                    f"seed {seed} {method:<14} best val_loss {row['best_val_loss']:.4f}  "
                    f"{row['epochs']}/{row['budget']} epochs  {row['trials']} trials  "
                    f"{row['wall_s']:.0f} s  overhead {row['overhead_s']:.0f} s"
                )
    finally:
        if cluster is not None:
            cluster.stop()
    return rows


def _lhccnn_workers(n: int, say):
    """lhccnn's workers, as notebook 05 with `local=True` has them: IPyParallel engines on this
    machine that become Dask workers (started once, outside the timed runs)."""
    from .cluster import Cluster, ClusterSpec

    t = time.perf_counter()
    cluster = Cluster.start(ClusterSpec(local=True, engines=n, wait=300))
    cluster.dask()
    say(f"lhccnn: {n} local engines as Dask workers in {time.perf_counter() - t:.1f} s")
    return cluster


def summarize(rows: list[dict], reference: str = "lhccnn_pbt") -> dict:
    """Per method: median best loss and wall time over seeds; and the issue's comparison of
    `reference` with every peer (seeds where it is at least as good, wall time ratio)."""
    by = {}
    for r in rows:
        by.setdefault(r["method"], []).append(r)
    out = {
        m: {
            "best_val_loss_median": statistics.median(r["best_val_loss"] for r in rs),
            "wall_s_median": statistics.median(r["wall_s"] for r in rs),
            "overhead_s_median": statistics.median(r["overhead_s"] for r in rs),
            "peak_rss_mib_max": max(r["peak_rss_mib"] for r in rs),
            "seeds": len(rs),
        }
        for m, rs in by.items()
    }
    if reference in by:
        ref = {r["seed"]: r for r in by[reference]}
        for m, rs in by.items():
            if m == reference:
                continue
            pairs = [(ref[r["seed"]], r) for r in rs if r["seed"] in ref]
            out[m]["reference_as_good_seeds"] = sum(
                a["best_val_loss"] <= b["best_val_loss"] for a, b in pairs
            )
        peers = [m for m in by if not m.startswith("lhccnn")]
        if peers:
            fastest = min(out[m]["wall_s_median"] for m in peers)
            out[reference]["wall_over_fastest_peer"] = out[reference]["wall_s_median"] / fastest
    return out


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="lhccnn peers",
        description="lhccnn's random search and PBT against Ray Tune's PBT and ASHA and "
        "Optuna's TPE: notebook 05's CNN, data, search space and epoch budget, on the same "
        "number of workers, in one run. Needs the [peers] extra (ray[tune], optuna).",
    )
    d = Setup()
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="default: 0 1 2")
    p.add_argument(
        "--methods",
        nargs="+",
        default=list(METHODS),
        choices=METHODS,
        metavar="METHOD",
        help=f"default: all ({', '.join(METHODS)})",
    )
    for f in dataclasses.fields(Setup):
        p.add_argument(
            "--" + f.name.replace("_", "-"),
            type=type(getattr(d, f.name)),
            default=getattr(d, f.name),
            help=f"default {getattr(d, f.name)} (notebook 05's)"
            if f.name != "workers"
            else "worker processes per method (default 2)",
        )
    p.add_argument("--data", type=Path, default=None, help="train.h5/val.h5 folder")
    p.add_argument("--out", type=Path, default=None, help="where runs go (default: results/peers)")
    return p.parse_args(argv)


def main(argv=None) -> int:
    import signal

    # a SIGTERM (kill, a batch job's end) ends Python at once, skipping the `finally` blocks that
    # stop Ray and the engines, whose processes would then outlive the run: make it an exit
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    # and Ray's C++ core would put abseil's failure handler before it, which ends the process
    # with status 1 (or aborts it 3 s on) without running them; Ray reads this on import
    os.environ.setdefault("RAY_DISABLE_FAILURE_SIGNAL_HANDLER", "1")
    a = parse_args(argv)
    try:
        setup = Setup(**{f.name: getattr(a, f.name) for f in dataclasses.fields(Setup)})
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    rows = run(setup, a.seeds, a.methods, a.out or results.folder() / "peers", a.data)
    write(setup, rows)
    return 0


# the goal, per peer: lhccnn PBT at least as good in 2 of 3 seeds, within 1.1 x the time
TARGETS = {
    **{f"{m}_reference_as_good_seeds": ">= 2 of 3" for m in METHODS[2:]},
    "lhccnn_pbt_wall_over_fastest_peer": "<= 1.1",
}


def write(setup: Setup, rows: list[dict], where=None) -> Path:
    """results/bench_peers.json: the summary as figures, and every run's row, the setup and the
    versions; a table on stdout."""
    summary = summarize(rows)
    figures = {f"{m}_{k}": v for m, s in summary.items() for k, v in s.items()}
    extra = {
        "setup": dataclasses.asdict(setup),
        "rows": rows,
        "summary": summary,
        "versions": versions(),
    }
    title = "lhccnn against Ray Tune and Optuna (real training)"
    return results.write_bench("bench_peers", title, TARGETS, figures, where, extra)


def load(where=None) -> tuple[dict | None, str]:
    """The newest figures and where they come from: this checkout's results/bench_peers.json,
    else the run recorded for the book, else (None, why)."""
    return results.newest("bench_peers", where, key="rows")


def table(record: dict):
    """Per method: median best loss, each seed's best loss, wall time, overhead, memory."""
    import pandas as pd

    out = []
    for method, s in record["summary"].items():
        rs = sorted((r for r in record["rows"] if r["method"] == method), key=lambda r: r["seed"])
        out.append(
            {
                "method": method,
                "median best val_loss": s["best_val_loss_median"],
                "best val_loss per seed": ", ".join(f"{r['best_val_loss']:.4f}" for r in rs),
                "epochs per seed": ", ".join(str(r["epochs"]) for r in rs),
                "trials (median)": statistics.median(r["trials"] for r in rs),
                "wall s (median)": s["wall_s_median"],
                "overhead s (median)": s["overhead_s_median"],
                "peak memory MiB": s["peak_rss_mib_max"],
                "lhccnn PBT as good, seeds": s.get("reference_as_good_seeds", ""),
            }
        )
    one_decimal = ["wall s (median)", "overhead s (median)", "peak memory MiB"]
    return pd.DataFrame(out).set_index("method").round(4).round({c: 1 for c in one_decimal})


def reading(record: dict) -> str:
    """The comparison the issue asks for, in words, from the figures."""
    s, seeds = record["summary"], max(v["seeds"] for v in record["summary"].values())
    ref = s.get("lhccnn_pbt")
    if ref is None:
        return "lhccnn PBT was not among the methods run."
    peers_ = [m for m in s if not m.startswith("lhccnn")]
    parts = [
        f"lhccnn PBT's median best validation loss is {ref['best_val_loss_median']:.4f} "
        f"over {seeds} seeds."
    ]
    for m in peers_:
        parts.append(
            f"Against {m} ({s[m]['best_val_loss_median']:.4f}) it is at least as good in "
            f"{s[m]['reference_as_good_seeds']} of {s[m]['seeds']} seeds."
        )
    if "wall_over_fastest_peer" in ref:
        parts.append(
            f"Its median wall time is {ref['wall_over_fastest_peer']:.2f} times the fastest "
            "peer's (target: at most 1.1)."
        )
    return " ".join(parts)


def versions() -> dict:
    """The versions of what was compared."""
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in ("tensorflow-cpu", "ray", "optuna", "dask", "ipyparallel"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    raise SystemExit(main())
