"""Horovod scaling study: one training driven from the notebook (IPyParallel) and as a batch job."""

from __future__ import annotations

import json
import logging
import os
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


def _summary(mode: str, workers: int, r: dict, **extra) -> dict:
    h = r["history"]
    return {
        "mode": mode,
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
) -> dict:
    """Train with Horovod on `workers` MPI engines started from here; rank 0's figures."""
    spec = ClusterSpec(
        nodes=1 if local else workers,
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
        "notebook", workers, r0, startup_seconds=cluster.started_seconds, stop_seconds=stopped
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
) -> dict:
    """The same training as a batch job: sbatch of the recipe (or plain mpirun with `local`)."""
    out_root = Path(out_root)
    out_root.mkdir(parents=True, exist_ok=True)
    args = config_to_args(config) + ["--data", str(data or data_dir()), "--n-test", str(n_test)]
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
        spec = ClusterSpec(nodes=workers, engines=workers, **(cluster_options or {}))
        job = (
            slurm.run(
                "sbatch",
                "--parsable",
                f"--nodes={workers}",
                "--ntasks-per-node=1",
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
    return _summary("batch", workers, r, out=str(out))


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
    progress=print,
) -> list[dict]:
    """For each worker count, notebook and batch runs side by side, `repeats` times each.

    The order alternates (notebook first, then batch first) so that a machine whose speed
    drifts during the study does not favour one mode; `ratios` compares medians.
    """
    out_root = Path(out_root or results_dir() / "scaling")
    rows = []
    for w in workers:
        c = weak_scaled(config, per_worker, w)
        for rep in range(repeats):
            order = (notebook_run, batch_run) if rep % 2 == 0 else (batch_run, notebook_run)
            for run in order:
                kwargs = {"out_root": out_root} if run is batch_run else {}
                row = run(
                    c,
                    w,
                    data=data,
                    local=local,
                    n_test=n_test,
                    cluster_options=cluster_options,
                    **kwargs,
                )
                rows.append({**row, "repeat": rep})
                progress(
                    f"{row['mode']:>8} x{w}: {row['samples_per_s']:8.0f} samples/s, "
                    f"val acc {row['val_accuracy']:.3f}"
                )
    return rows


def medians(rows: list[dict]) -> dict:
    """Median samples/s per (mode, workers) over the repeats."""
    groups: dict = {}
    for r in rows:
        groups.setdefault((r["mode"], r["workers"]), []).append(r["samples_per_s"])
    return {k: statistics.median(v) for k, v in groups.items()}


def ratios(rows: list[dict]) -> dict:
    """notebook/batch median throughput per worker count, and Horovod efficiency vs 1 worker."""
    by = medians(rows)
    workers = sorted({r["workers"] for r in rows})
    out = {"notebook_over_batch": {w: by[("notebook", w)] / by[("batch", w)] for w in workers}}
    if 1 in workers:
        out["efficiency"] = {
            mode: {w: by[(mode, w)] / (w * by[(mode, 1)]) for w in workers}
            for mode in ("notebook", "batch")
        }
    return out
