"""Train the CNN in one process or data-parallel with Horovod; a CLI for batch jobs."""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import logging
import math
import os
import socket
import sys
import time
from pathlib import Path
from typing import NamedTuple

from .config import (
    LR_SCALING,
    OPTIMIZERS,
    PRECISIONS,
    ModelConfig,
    TrainConfig,
    data_dir,
    smoke,
)
from .files import write_json

log = logging.getLogger("lhccnn.train")  # not __main__ under python -m


def scaled_lr(lr: float, size: int, rule: str) -> float:
    """The learning rate for `size` data-parallel ranks under a scaling rule."""
    if rule not in LR_SCALING:
        raise ValueError(f"unknown lr_scaling {rule!r}; valid: {', '.join(LR_SCALING)}")
    return {"none": lr, "linear": lr * size, "sqrt": lr * math.sqrt(size)}[rule]


def configure_threads(intra: int, inter: int) -> None:
    """Set TensorFlow's thread pools; must run before TensorFlow executes any op."""
    import tensorflow as tf

    try:
        tf.config.threading.set_intra_op_parallelism_threads(intra)
        tf.config.threading.set_inter_op_parallelism_threads(inter)
    except RuntimeError:  # already initialised (e.g. a second call in one notebook kernel)
        log.warning("TensorFlow already initialised; thread settings unchanged")


def horovod_init(idle_comm_threads: bool = False, timeline: str | Path | None = None):
    """hvd.init() (Horovod's Keras binding, returned), and with `idle_comm_threads` the threads
    it starts (Horovod's background loop, MPI's progress threads) moved to SCHED_IDLE, where
    they run only on a core that TensorFlow leaves idle. Where ranks share cores and talk over
    TCP (the mini SLURM's one rank per node), their polling otherwise takes the cores' time
    from the training (notebook 02's study measures both settings side by side). Linux only;
    the threads carry no names, so they are found as the ones hvd.init() adds. `timeline`: the
    file where rank 0 records Horovod's timeline (`scaling.timeline_steps` reads it)."""
    import horovod.tensorflow.keras as hvd

    global _comm_threads_idle
    if hvd.is_initialized():  # e.g. train() after a notebook's own horovod_init()
        if idle_comm_threads and not _comm_threads_idle:
            log.warning("Horovod was initialised without idle_comm_threads: not applied")
        if timeline:
            log.warning("Horovod was initialised before: no timeline recorded in %s", timeline)
        return hvd
    if timeline:  # read by hvd.init() only; only rank 0 writes the file
        os.environ["HOROVOD_TIMELINE"] = str(timeline)
    before = set(os.listdir("/proc/self/task")) if idle_comm_threads else set()
    hvd.init()
    if idle_comm_threads:
        started = set(os.listdir("/proc/self/task")) - before
        on_threads(
            started, lambda tid: os.sched_setscheduler(tid, os.SCHED_IDLE, os.sched_param(0))
        )
        _comm_threads_idle = True
    return hvd


_comm_threads_idle = False  # whether horovod_init() has lowered this process's threads


def on_threads(tids, call) -> None:
    """call(tid) for each of this process's threads `tids` (names in /proc/self/task)."""
    for tid in tids:
        with contextlib.suppress(ProcessLookupError):  # a thread that has already ended
            call(int(tid))


def core_share(machines: list, rank: int, cores: list[int]) -> list[int]:
    """The cores of rank `rank`: the ranks on one machine (equal entries of `machines`, one
    per rank) split that machine's `cores` into contiguous slices, in rank order, as evenly as
    the count allows; with more such ranks than cores, they take the cores in turn."""
    peers = [r for r, m in enumerate(machines) if m == machines[rank]]
    i, k, n = peers.index(rank), len(peers), len(cores)
    if k > n:
        return [cores[i % n]]
    return cores[i * n // k : (i + 1) * n // k]


def machine_key() -> str:
    """Which machine this process runs on and which of its cores it may use: host name, the
    kernel's boot id (SLURM's node names can differ where one machine runs several nodes, as
    in the mini SLURM) and the allowed cores. Processes split only the cores they were all
    given: ranks that a launcher bound already (srun --cpu-bind, mpirun --bind-to) differ here
    and keep their own."""
    boot = Path("/proc/sys/kernel/random/boot_id")
    boot_id = boot.read_text().strip() if boot.exists() else ""
    return f"{socket.gethostname()}/{boot_id} cores {sorted(os.sched_getaffinity(0))}"


def group_machines(folder, rank: int, size: int, timeout: float = 300) -> list[str]:
    """machine_key() of each of `size` processes started together without a communicator (the
    scaling study's independent trainings): each writes its own into `folder` and waits for
    the others'. A process that never comes ends the wait with an error naming who is missing."""
    if not 0 <= rank < size:
        raise ValueError(f"pin group rank must be in 0..{size - 1}, got {rank}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    write_json(folder / f"{rank}.json", machine_key())
    deadline = time.monotonic() + timeout
    while True:
        missing = [r for r in range(size) if not (folder / f"{r}.json").exists()]
        if not missing:
            return [json.loads((folder / f"{r}.json").read_text()) for r in range(size)]
        if time.monotonic() > deadline:
            raise RuntimeError(
                f"pin group {folder}: after {timeout:.0f} s no machine from rank(s) {missing}"
            )
        time.sleep(0.05)


def pin_threads(cores: list[int]) -> list[int]:
    """Bind every thread of this process to `cores`; threads started later inherit it."""
    on_threads(os.listdir("/proc/self/task"), lambda tid: os.sched_setaffinity(tid, cores))
    return cores


def pin_to_share(use_horovod: bool, rank: int, pin_group: tuple | None) -> list[int]:
    """Pin this process to its share of its machine's cores (core_share) among the processes
    that share them: Horovod's ranks (all must call this), or the group `pin_group`, (folder,
    index, count) for group_machines; else it is alone. Runs TensorFlow ops with Horovod."""
    if use_horovod:
        import horovod.tensorflow

        machines, me = horovod.tensorflow.allgather_object(machine_key()), rank
    elif pin_group:
        machines, me = group_machines(*pin_group), pin_group[1]
    else:
        machines, me = [machine_key()], 0
    return pin_threads(core_share(machines, me, sorted(os.sched_getaffinity(0))))


def warm_up_worker() -> str:
    """Import TensorFlow on a worker before its first task, so that the first task's time (and
    PBT's first overhead figure) is not the one-off import."""
    import tensorflow as tf

    return tf.__version__


def weights_digest(model) -> str:
    """A short hash of all weights: equal on every rank when Horovod keeps them in sync."""
    h = hashlib.sha256()
    for w in model.get_weights():
        h.update(w.tobytes())
    return h.hexdigest()[:16]


def collapsed(accuracy: float, majority_rate: float) -> bool:
    """The upstream failure mode: a model that predicts one class for every event scores the
    majority-class rate, 1 - mean(y) for a background majority."""
    return bool(abs(accuracy - majority_rate) < 0.005)


def evaluate(model, path, n=None, batch_size=512) -> dict:
    """Accuracy and ROC AUC (unweighted and weighted by the physics weights) on one file."""
    import numpy as np

    from .data import load_arrays
    from .physics import roc_auc

    x, y, w = load_arrays(path, n=n)
    p = model.predict(x, batch_size=batch_size, verbose=0).ravel()
    pred = (p > 0.5).astype(np.float32)
    return {
        "n": int(len(y)),
        "accuracy": float(np.mean(pred == y)),
        "weighted_accuracy": float(np.sum(w * (pred == y)) / np.sum(w)),
        "auc": float(roc_auc(y, p)),
        "weighted_auc": float(roc_auc(y, p, w)),
        "majority_rate": float(max(np.mean(y), 1 - np.mean(y))),
    }


def load_trained(out_dir) -> tuple:
    """The model that a run wrote to out_dir (config.json + model.h5), and its TrainConfig."""
    from .model import build_model

    out_dir = Path(out_dir)
    raw = json.loads((out_dir / "config.json").read_text())
    config = TrainConfig.from_dict(
        {k: v for k, v in raw.items() if k not in ("ranks", "target_lr")}
    )
    model = build_model(config.model, compile=False)
    model.load_weights(str(out_dir / "model.h5"))
    return model, config


def predict_file(model, path, n=None, batch_size=512) -> dict:
    """Labels, weights, CNN scores and the cut-based baseline's scores for one event file."""
    import h5py

    from .data import load_arrays
    from .physics import baseline_score

    x, y, w = load_arrays(path, n=n)
    with h5py.File(path, "r") as f:  # the baseline cuts on raw energies, not network inputs
        hist = f["all_events/hist"][: len(y)]
    return {
        "y": y,
        "weight": w,
        "cnn": model.predict(x, batch_size=batch_size, verbose=0).ravel(),
        "baseline": baseline_score(hist),
    }


class Pipelines(NamedTuple):
    """One rank's training and validation pipelines (repeating) and their steps per epoch."""

    train: object
    val: object
    steps: int
    val_steps: int
    shard: object


def pipelines(
    config: TrainConfig,
    data: Path,
    rank: int = 0,
    size: int = 1,
    seed: int | None = None,
    epochs: int | None = None,
) -> Pipelines:
    """The datasets every training path uses: this rank's shards of train.h5 and val.h5,
    shuffled with `seed` (default: config.seed + rank). For a single epoch (`epochs=1`) they
    do not repeat: a repeating pipeline reads ahead into an epoch nobody trains, and the end
    of fit waits for that read (about 1 s for a 4,096-event shuffle buffer)."""
    from .data import make_dataset, steps_per_epoch

    seed = config.seed + rank if seed is None else seed
    train_ds, shard = make_dataset(
        data / "train.h5",
        config.batch_size,
        n=config.n_train,
        rank=rank,
        size=size,
        shuffle=True,
        seed=seed,
        streaming=config.streaming,
        repeat=epochs != 1,
        shuffle_buffer=config.shuffle_buffer,
    )
    val_ds, val_shard = make_dataset(
        data / "val.h5",
        config.batch_size,
        n=config.n_val,
        rank=rank,
        size=size,
        shuffle=False,
        streaming=config.streaming,
        repeat=epochs != 1,
    )
    return Pipelines(
        train_ds,
        val_ds,
        steps_per_epoch(shard, config.batch_size),
        steps_per_epoch(val_shard, config.batch_size),
        shard,
    )


def fit(
    model, pipes: Pipelines, epochs: int, initial_epoch: int = 0, callbacks=(), verbose: int = 0
) -> dict:
    """The one training loop of lhccnn (batch jobs, Horovod ranks, HPO trials, PBT members):
    Keras fit from `initial_epoch` to `epochs` with validation every epoch; returns the
    history as plain floats."""
    hist = model.fit(
        pipes.train,
        epochs=epochs,
        initial_epoch=initial_epoch,
        steps_per_epoch=pipes.steps,
        validation_data=pipes.val,
        validation_steps=pipes.val_steps,
        callbacks=list(callbacks),
        verbose=verbose,
    )
    return {k: [float(v) for v in vs] for k, vs in hist.history.items()}


def train(
    config: TrainConfig,
    data: str | Path | None = None,
    out_dir: str | Path | None = None,
    use_horovod: bool = False,
    n_test: int | None = None,
    callbacks=None,
    timeline: str | Path | None = None,
    pin_group: tuple | None = None,
) -> dict:
    """Train one model; return a result dict (history, test metrics, throughput, shard).

    With `use_horovod`, every rank calls this: each reads its own shard of the training and
    validation files, gradients are averaged by Horovod's DistributedOptimizer, and only rank 0
    writes files. `callbacks` are extra Keras callbacks (a fresh list each call: never mutated).
    `timeline`: with Horovod, where rank 0 records Horovod's timeline (see horovod_init).
    With config.pin_cores, the processes that share a machine split its cores (core_share):
    Horovod's ranks find each other's machines through Horovod, independent trainings
    started together through `pin_group` (see pin_to_share).
    """
    import numpy as np
    import tensorflow as tf

    from .model import build_model, make_optimizer

    data = Path(data) if data else data_dir()
    rank, size = 0, 1
    if use_horovod:
        # Horovod: hvd.init() joins the ranks started by mpirun/srun/horovodrun
        hvd = horovod_init(config.idle_comm_threads, timeline)
        rank, size = hvd.rank(), hvd.size()
    configure_threads(config.intra_threads, config.inter_threads)
    # after configure_threads: with Horovod, the pinning's allgather runs TensorFlow ops
    cores = pin_to_share(use_horovod, rank, pin_group) if config.pin_cores else None
    tf.keras.utils.set_random_seed(
        config.seed + rank
    )  # per-rank shuffles; weights come from rank 0

    pipes = pipelines(config, data, rank=rank, size=size)
    steps, shard = pipes.steps, pipes.shard

    mc = config.model
    target_lr = scaled_lr(mc.lr, size, config.lr_scaling)
    opt = make_optimizer(mc.optimizer, target_lr)
    if use_horovod:
        opt = hvd.DistributedOptimizer(opt)  # Horovod: average gradients across ranks
    model = build_model(mc, optimizer=opt, precision=config.precision)

    from .callbacks import EpochLog, Throughput, WarmupLR  # imports TensorFlow

    cbs = []
    if use_horovod:
        cbs += [
            hvd.callbacks.BroadcastGlobalVariablesCallback(0),  # Horovod: same start on all ranks
            hvd.callbacks.MetricAverageCallback(),  # Horovod: epoch metrics averaged over ranks
        ]
    if config.warmup_epochs > 0 and target_lr != mc.lr:
        cbs.append(WarmupLR(mc.lr, target_lr, config.warmup_epochs, steps))
    cbs.append(Throughput(steps * config.batch_size * size))
    out = Path(out_dir) if out_dir else None
    if rank == 0:  # rank-0-only side effects: the log and the files
        if out is not None:
            out.mkdir(parents=True, exist_ok=True)
            write_json(
                out / "config.json",
                {**config.to_dict(), "ranks": size, "target_lr": target_lr},
                indent=1,
            )
        cbs.append(EpochLog(out))
    cbs += list(callbacks or [])

    t0 = time.perf_counter()
    history = fit(
        model, pipes, config.epochs, callbacks=cbs, verbose=config.verbose if rank == 0 else 0
    )
    wall = time.perf_counter() - t0

    result = {
        "rank": rank,
        "size": size,
        "shard": [shard.start, shard.stop],
        "history": history,
        "wall_seconds": wall,
        "target_lr": target_lr,
        "weights_digest": weights_digest(model),
        # what the ranks ran with, not what was asked (a notebook's own earlier hvd.init() wins)
        "idle_comm_threads": _comm_threads_idle,
        "pinned_cores": cores,
        # epoch 1 includes graph tracing: report the median of the later epochs when there are any
        "samples_per_s": float(np.median(history["samples_per_s"][1:] or history["samples_per_s"])),
    }
    if rank == 0:
        result["test"] = evaluate(model, data / "test.h5", n=n_test)
        val_acc = history.get("val_accuracy", [0.0])[-1]
        result["collapsed"] = collapsed(val_acc, result["test"]["majority_rate"])
        if out is not None:
            metrics = {k: v for k, v in result.items() if k != "history"}
            write_json(out / "metrics.json", metrics, indent=1)
            model.save_weights(str(out / "model.h5"))
    return result


def _sizes(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(s) for s in text.split(",") if s.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers like 8,16,32, got {text!r}"
        ) from None


def parse_args(argv=None) -> argparse.Namespace:
    d, m = TrainConfig(), ModelConfig()
    p = argparse.ArgumentParser(
        prog="lhccnn train",
        description="Train the LHC-image CNN on train/val/test.h5, in one process or with Horovod "
        "(run under mpirun/srun/horovodrun with --horovod). Rank 0 writes "
        "config.json, history.json (every epoch), checkpoint.h5, model.h5 and "
        "metrics.json (test accuracy, AUC unweighted and weighted, samples/s) to --out.",
        epilog="example: mpirun -np 2 python -m lhccnn.train --horovod --epochs 4 "
        "--out results/hvd2",
    )
    p.add_argument(
        "--data",
        type=Path,
        default=None,
        help="folder with train.h5, val.h5, test.h5 (default: $LHCCNN_DATA_DIR or data/synthetic)",
    )
    p.add_argument(
        "--out",
        type=Path,
        default=None,
        help="output folder (rank 0 writes here; default: none, nothing written)",
    )
    p.add_argument("--horovod", action="store_true", help="data-parallel training with Horovod")
    p.add_argument("--smoke", action="store_true", help="tiny sizes that train in seconds")
    s = smoke()
    # sizes default to None and are filled from the preset (--smoke or the paper's values)
    for flag, attr, help_ in [
        ("--epochs", "epochs", "epochs"),
        ("--batch-size", "batch_size", "per rank"),
        ("--n-train", "n_train", "training events, all ranks together"),
        ("--n-val", "n_val", "validation events, all ranks together"),
        ("--warmup-epochs", "warmup_epochs", "epochs of lr warm-up"),
    ]:
        kind = float if attr == "warmup_epochs" else int
        p.add_argument(
            flag,
            type=kind,
            default=None,
            help=f"{help_} (default {getattr(d, attr)}; with --smoke {getattr(s, attr)})",
        )
    p.add_argument("--n-test", type=int, default=None, help="test events (default: the whole file)")
    p.add_argument(
        "--optimizer", choices=OPTIMIZERS, default=m.optimizer, help="(default: %(default)s)"
    )
    p.add_argument(
        "--lr", type=float, default=m.lr, help="learning rate of one rank (default: %(default)s)"
    )
    p.add_argument(
        "--lr-scaling",
        choices=LR_SCALING,
        default=d.lr_scaling,
        help="how the lr grows with the number of ranks (default: %(default)s)",
    )
    p.add_argument("--dropout", type=float, default=m.dropout, help="(default: %(default)s)")
    p.add_argument(
        "--conv-sizes",
        type=_sizes,
        default=m.conv_sizes,
        help="conv filters per block (default: 8,16,32)",
    )
    p.add_argument(
        "--dense-sizes", type=_sizes, default=m.dense_sizes, help="dense layer sizes (default: 64)"
    )
    p.add_argument(
        "--threads",
        type=int,
        default=d.intra_threads,
        help="TensorFlow intra-op threads (default: %(default)s)",
    )
    p.add_argument(
        "--inter-threads", type=int, default=d.inter_threads, help="(default: %(default)s)"
    )
    p.add_argument(
        "--in-memory", action="store_true", help="load the shard into memory instead of streaming"
    )
    p.add_argument(
        "--precision",
        choices=PRECISIONS,
        default=d.precision,
        help="Keras dtype policy; mixed_bfloat16 computes in bfloat16, fast only on CPUs "
        "with AMX or AVX-512 BF16 (default: %(default)s)",
    )
    p.add_argument(
        "--idle-comm-threads",
        action="store_true",
        help="with --horovod: run Horovod's and MPI's polling threads at SCHED_IDLE, so that "
        "they use only cores the training leaves idle (helps where ranks share cores)",
    )
    p.add_argument(
        "--pin-cores",
        action="store_true",
        help="bind each process to its share of its machine's cores: ranks on one machine "
        "split them (with --horovod; or independent trainings started together, --pin-group)",
    )
    p.add_argument(
        "--pin-group",
        nargs=3,
        metavar=("FOLDER", "INDEX", "COUNT"),
        help="with --pin-cores and without --horovod: this training is INDEX of COUNT started "
        "together, which find each other's machines through FOLDER (a new one per group)",
    )
    p.add_argument(
        "--timeline",
        metavar="FILE",
        help="with --horovod: rank 0 records Horovod's timeline here (chrome://tracing reads it; "
        "lhccnn.scaling.timeline_steps says where rank 0's time went)",
    )
    p.add_argument("--seed", type=int, default=d.seed, help="(default: %(default)s)")
    p.add_argument(
        "--verbose",
        type=int,
        default=0,
        choices=(0, 1, 2),
        help="Keras progress output of rank 0, besides the one log line per epoch (default: 0)",
    )
    return p.parse_args(argv)


def config_from_args(a: argparse.Namespace) -> TrainConfig:
    base = smoke() if a.smoke else TrainConfig()
    sizes = {
        k: getattr(a, k)
        for k in ("epochs", "batch_size", "n_train", "n_val", "warmup_epochs")
        if getattr(a, k) is not None
    }
    return base.replace(
        **sizes,
        lr_scaling=a.lr_scaling,
        intra_threads=a.threads,
        inter_threads=a.inter_threads,
        streaming=not a.in_memory,
        precision=a.precision,
        idle_comm_threads=a.idle_comm_threads,
        pin_cores=a.pin_cores,
        seed=a.seed,
        verbose=a.verbose,
        model_optimizer=a.optimizer,
        model_lr=a.lr,
        model_dropout=a.dropout,
        model_conv_sizes=a.conv_sizes,
        model_dense_sizes=a.dense_sizes,
    )


def config_to_args(config: TrainConfig) -> list[str]:
    """The CLI arguments that reproduce `config` (inverse of config_from_args), for batch jobs."""
    m = config.model
    args = [
        "--epochs",
        config.epochs,
        "--batch-size",
        config.batch_size,
        "--warmup-epochs",
        config.warmup_epochs,
        "--lr-scaling",
        config.lr_scaling,
        "--threads",
        config.intra_threads,
        "--inter-threads",
        config.inter_threads,
        "--seed",
        config.seed,
        "--precision",
        config.precision,
        *(["--idle-comm-threads"] if config.idle_comm_threads else []),
        *(["--pin-cores"] if config.pin_cores else []),
        "--optimizer",
        m.optimizer,
        "--lr",
        m.lr,
        "--dropout",
        m.dropout,
        "--conv-sizes",
        ",".join(map(str, m.conv_sizes)),
        "--dense-sizes",
        ",".join(map(str, m.dense_sizes)),
    ]
    if config.n_train is not None:
        args += ["--n-train", config.n_train]
    if config.n_val is not None:
        args += ["--n-val", config.n_val]
    if not config.streaming:
        args.append("--in-memory")
    return [str(a) for a in args]


def log_to_stdout(level=logging.INFO) -> None:
    """Send lhccnn's log lines to stdout: on IPyParallel engines, %px then shows them live."""
    logger = logging.getLogger("lhccnn")
    logger.setLevel(level)
    if not any(getattr(h, "_lhccnn_stdout", False) for h in logger.handlers):
        handler = logging.StreamHandler(sys.stdout)
        handler.setFormatter(logging.Formatter("%(message)s"))
        handler._lhccnn_stdout = True
        logger.addHandler(handler)


def main(argv=None) -> int:
    a = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    try:
        config = config_from_args(a)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if a.timeline and not a.horovod:
        print("error: --timeline records Horovod's timeline: it needs --horovod", file=sys.stderr)
        return 2
    pin_group = None
    if a.pin_group:
        if a.horovod or not a.pin_cores:
            print("error: --pin-group needs --pin-cores and no --horovod", file=sys.stderr)
            return 2
        folder, index, count = a.pin_group
        if not (index.isdigit() and count.isdigit() and int(index) < int(count)):
            print(
                f"error: --pin-group needs whole numbers 0 <= INDEX < COUNT, got {index!r} "
                f"and {count!r}",
                file=sys.stderr,
            )
            return 2
        pin_group = (folder, int(index), int(count))
    from .data import DataError

    try:
        result = train(
            config,
            data=a.data,
            out_dir=a.out,
            use_horovod=a.horovod,
            n_test=a.n_test or (1024 if a.smoke else None),
            timeline=a.timeline,
            pin_group=pin_group,
        )
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if result["rank"] == 0:
        t = result["test"]
        print(
            f"ranks={result['size']} test_accuracy={t['accuracy']:.4f} "
            f"auc={t['auc']:.4f} weighted_auc={t['weighted_auc']:.4f} "
            f"samples_per_s={result['samples_per_s']:.1f} collapsed={result['collapsed']}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
