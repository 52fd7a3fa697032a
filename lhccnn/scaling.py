"""Horovod scaling study: one training driven from the notebook (IPyParallel) and as a batch job."""

from __future__ import annotations

import json
import logging
import os
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

from . import slurm
from .cluster import MPIRUN_FLAGS, Cluster, ClusterSpec, sbatch_options
from .config import REPO, TrainConfig, data_dir, results_dir
from .train import config_to_args, train

log = logging.getLogger(__name__)
RECIPE = REPO / "recipes" / "nersc" / "train_horovod.sbatch"


def weak_scaled(config: TrainConfig, per_worker: int, workers: int) -> TrainConfig:
    """Same work per rank at every worker count: n_train = per_worker x workers."""
    return config.replace(n_train=per_worker * workers)


def layout(workers: int, ranks_per_node: int = 1) -> tuple[int, int]:
    """(nodes, ranks per node) for `workers` ranks packed `ranks_per_node` to a node. One per
    node is the paper's layout. Where SLURM's nodes share one machine (the mini SLURM), ranks
    on different nodes talk through TCP, whose busy-polled progress costs each rank about a
    quarter of a core (notebook 02 explains it): packed onto one node they use shared memory."""
    if (
        isinstance(ranks_per_node, bool)
        or not isinstance(ranks_per_node, int)
        or ranks_per_node < 1
    ):
        raise ValueError(f"ranks_per_node must be a whole number >= 1, got {ranks_per_node!r}")
    return -(-workers // ranks_per_node), min(ranks_per_node, workers)


IDLE = "+idle"  # the mode's suffix for runs with Horovod's threads at SCHED_IDLE
MODES = ("notebook", "batch", "notebook" + IDLE, "batch" + IDLE)


def _summary(mode: str, workers: int, r: dict, **extra) -> dict:
    h = r["history"]
    idle = bool(r.get("idle_comm_threads"))  # as the ranks ran, not as asked
    return {
        "mode": mode + (IDLE if idle else ""),
        "idle_comm_threads": idle,
        "workers": workers,
        "samples_per_s": r["samples_per_s"],
        "per_worker_samples_per_s": r["samples_per_s"] / workers,
        "val_accuracy": h["val_accuracy"][-1],
        "test_accuracy": r["test"]["accuracy"],
        "majority_rate": r["test"]["majority_rate"],
        "collapsed": r["collapsed"],
        "wall_seconds": r["wall_seconds"],
        **extra,
    }


def notebook_run(
    config: TrainConfig,
    workers: int,
    data=None,
    local=False,
    n_test=1024,
    cluster_options: dict | None = None,
    ranks_per_node: int = 1,
) -> dict:
    """Train with Horovod on `workers` MPI engines started from here; rank 0's figures."""
    spec = ClusterSpec(
        nodes=1 if local else layout(workers, ranks_per_node)[0],
        engines=workers,
        mpi=True,
        local=local,
        **(cluster_options or {}),
    )
    cluster = Cluster.start(spec)
    try:
        results = cluster.view.apply(
            train, config, data=data or data_dir(), use_horovod=True, n_test=n_test
        )
    finally:
        stopped = cluster.stop()
    r0 = next(r for r in results if r["rank"] == 0)
    return _summary(
        "notebook",
        workers,
        r0,
        nodes=spec.nodes,
        startup_seconds=cluster.started_seconds,
        stop_seconds=stopped,
    )


def batch_run(
    config: TrainConfig,
    workers: int,
    out_root: Path,
    data=None,
    local=False,
    n_test=1024,
    cluster_options: dict | None = None,
    timeout=3600,
    ranks_per_node: int = 1,
) -> dict:
    """The same training as a batch job: sbatch of the recipe (or plain mpirun with `local`)."""
    out_root = Path(out_root)
    out_root.mkdir(parents=True, exist_ok=True)
    args = config_to_args(config) + ["--data", str(data or data_dir()), "--n-test", str(n_test)]
    nodes, per_node = (1, workers) if local else layout(workers, ranks_per_node)
    if local:
        out = out_root / f"batch-local-{workers}-{int(time.time() * 1000)}"
        cmd = [
            "mpirun",
            "-np",
            str(workers),
            *MPIRUN_FLAGS,
            sys.executable,
            "-m",
            "lhccnn.train",
            "--horovod",
            "--out",
            str(out),
            *args,
        ]
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        if p.returncode:
            raise RuntimeError(f"mpirun training failed ({p.returncode}): {p.stderr[-2000:]}")
    else:
        env = dict(os.environ, LHCCNN_RESULTS=str(out_root), LHCCNN_PYTHON=sys.executable)
        spec = ClusterSpec(nodes=nodes, engines=workers, **(cluster_options or {}))
        job = (
            slurm.run(
                "sbatch",
                "--parsable",
                f"--nodes={nodes}",
                f"--ntasks={workers}",
                f"--ntasks-per-node={per_node}",
                f"--time={spec.time}",
                *sbatch_options(spec),
                f"--output={out_root}/%x-%j.out",
                str(RECIPE),
                *args,
                env=env,
            )
            .strip()
            .split(";")[0]
        )
        log.info("batch job %s: %d workers", job, workers)
        with open(os.devnull, "w") as quiet:
            slurm.wait_job(job, log_file=None, timeout=timeout, stream=quiet)
        out = out_root / f"train-{job}"
    r = json.loads((out / "metrics.json").read_text())
    r["history"] = {
        k: [h[k] for h in json.loads((out / "history.json").read_text())] for k in ("val_accuracy",)
    }
    return _summary("batch", workers, r, nodes=nodes, out=str(out))


def ceiling_run(
    config: TrainConfig,
    workers: int,
    out_root: Path,
    data=None,
    local=False,
    n_test=1024,
    cluster_options: dict | None = None,
    timeout=3600,
    ranks_per_node: int = 1,
) -> dict:
    """The ceiling for `workers` ranks: as many independent one-process trainings of one rank's
    share, started together and never talking to each other. Their summed throughput is what
    Horovod would reach if its allreduce and coordination were free; ranks that share a
    machine's caches and memory bandwidth fall short of `workers` x one alone even so. Local:
    processes here; otherwise one srun step laid out as the batch job's ranks."""
    out = Path(out_root) / f"ceiling-{workers}-{int(time.time() * 1000)}"
    share = config.replace(n_train=config.n_train // workers)
    args = config_to_args(share) + ["--data", str(data or data_dir()), "--n-test", str(n_test)]
    cmd = [sys.executable, "-m", "lhccnn.train", *args]
    if local:
        procs = [
            subprocess.Popen(
                [*cmd, "--out", str(out / f"task{i}")],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                text=True,
            )
            for i in range(workers)
        ]
        errors = [p.communicate(timeout=timeout)[1] for p in procs]
        failed = [(p.returncode, e) for p, e in zip(procs, errors) if p.returncode]
        if failed:
            code, err = failed[0]
            raise RuntimeError(f"an independent training failed ({code}): {err[-2000:]}")
    else:
        nodes, per_node = layout(workers, ranks_per_node)
        spec = ClusterSpec(nodes=nodes, engines=workers, **(cluster_options or {}))
        task = shlex.join(cmd) + f' --out "{out}/task$SLURM_PROCID"'
        slurm.run(
            "srun",
            f"--nodes={nodes}",
            f"--ntasks={workers}",
            f"--ntasks-per-node={per_node}",
            f"--time={spec.time}",
            *sbatch_options(spec),
            "bash",
            "-c",
            task,
            timeout=timeout,
        )
    tasks = [
        json.loads((out / f"task{i}" / "metrics.json").read_text())["samples_per_s"]
        for i in range(workers)
    ]
    total = sum(tasks)
    return {
        "mode": "independent",
        "workers": workers,
        "samples_per_s": total,
        "per_worker_samples_per_s": total / workers,
        "task_samples_per_s": tasks,
        "out": str(out),
    }


def study(
    config: TrainConfig,
    workers=(1, 2),
    per_worker=4096,
    out_root=None,
    data=None,
    local=False,
    n_test=1024,
    cluster_options: dict | None = None,
    repeats: int = 1,
    ceiling: bool = True,
    progress=print,
    ranks_per_node: int = 1,
    idle_comm_threads=None,
) -> list[dict]:
    """For each worker count, notebook and batch runs side by side, `repeats` times each, and
    with `ceiling` (above one worker) the independent trainings that bound both (`ceiling_run`).

    `idle_comm_threads`: the settings of that option to run above one worker, e.g. (False, True)
    to measure both side by side (default: the config's own); runs with it are the modes with
    the suffix IDLE. One worker has no one to talk to and runs without it, as the base of both.
    The order rotates from repeat to repeat, so that a machine whose speed drifts during the
    study does not favour one mode; `ratios` compares medians.
    """
    out_root = Path(out_root or results_dir() / "scaling")
    settings = tuple(idle_comm_threads or (config.idle_comm_threads,))
    rows = []
    for w in workers:
        c = weak_scaled(config, per_worker, w)
        runs = [
            (run, c.replace(idle_comm_threads=idle and w > 1))
            for idle in (settings if w > 1 else (False,))
            for run in (notebook_run, batch_run)
        ]
        runs += [(ceiling_run, c)] if ceiling and w > 1 else []
        for rep in range(repeats):
            for run, rc in runs[rep % len(runs) :] + runs[: rep % len(runs)]:
                kwargs = {} if run is notebook_run else {"out_root": out_root}
                row = run(
                    rc,
                    w,
                    data=data,
                    local=local,
                    n_test=n_test,
                    cluster_options=cluster_options,
                    ranks_per_node=ranks_per_node,
                    **kwargs,
                )
                rows.append({**row, "repeat": rep})
                progress(
                    f"{row['mode']:>13} x{w}: {row['samples_per_s']:8.0f} samples/s"
                    + (f", val acc {row['val_accuracy']:.3f}" if "val_accuracy" in row else "")
                )
    return rows


def medians(rows: list[dict]) -> dict:
    """Median samples/s per (mode, workers) over the repeats."""
    groups: dict = {}
    for r in rows:
        groups.setdefault((r["mode"], r["workers"]), []).append(r["samples_per_s"])
    return {k: statistics.median(v) for k, v in groups.items()}


def ratios(rows: list[dict]) -> dict:
    """notebook/batch median throughput per worker count (`notebook_over_batch`, and with the
    suffix IDLE for the runs with idle_comm_threads); Horovod's efficiency against the ideal
    (`workers` x the same mode's one-worker speed) and, where measured, against the ceiling (the
    independent trainings of `ceiling_run`, which no communication cost can beat), per mode."""
    by = medians(rows)
    modes = [m for m in MODES if any(mode == m for mode, _ in by)]
    ws = {m: sorted(w for mode, w in by if mode == m) for m in modes}
    out: dict = {}
    for suffix in ("", IDLE):
        nb, batch = "notebook" + suffix, "batch" + suffix
        if nb in ws and batch in ws:
            both = [w for w in ws[nb] if w in ws[batch]]
            out["notebook_over_batch" + suffix] = {w: by[(nb, w)] / by[(batch, w)] for w in both}
    base = {m: by.get((m.removesuffix(IDLE), 1)) for m in modes}  # one worker runs without it
    if any(base.values()):
        out["efficiency"] = {
            m: {w: by[(m, w)] / (w * base[m]) for w in ws[m]} for m in modes if base[m]
        }
    if any(mode == "independent" for mode, _ in by):
        out["of_ceiling"] = {
            m: {w: by[(m, w)] / by[("independent", w)] for w in ws[m] if ("independent", w) in by}
            for m in modes
        }
    return out
