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
PINNED = "+pinned"  # and for runs whose processes split their machines' cores (pin_cores)
SUFFIXES = ("", IDLE, PINNED, IDLE + PINNED)  # every combination of the two options
MODES = ("notebook", "batch", "notebook" + IDLE, "batch" + IDLE)
ALL_MODES = tuple(m + s for s in SUFFIXES for m in ("notebook", "batch"))


def _summary(mode: str, workers: int, r: dict, **extra) -> dict:
    h = r["history"]
    idle = bool(r.get("idle_comm_threads"))  # as the ranks ran, not as asked
    pinned = r.get("pinned_cores") is not None
    return {
        "mode": mode + (IDLE if idle else "") + (PINNED if pinned else ""),
        "idle_comm_threads": idle,
        "pinned_cores": r.get("pinned_cores"),
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
    timeline: Path | None = None,
) -> dict:
    """Train with Horovod on `workers` MPI engines started from here; rank 0's figures (with
    `timeline`, a file for Horovod's timeline: where rank 0's time went, `timeline_steps`)."""
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
            train,
            config,
            data=data or data_dir(),
            use_horovod=True,
            n_test=n_test,
            timeline=timeline and str(timeline),
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
        **({"timeline": timeline_steps(timeline)} if timeline else {}),
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
    timeline: Path | None = None,
) -> dict:
    """The same training as a batch job: sbatch of the recipe (or plain mpirun with `local`);
    `timeline` as in notebook_run."""
    out_root = Path(out_root)
    out_root.mkdir(parents=True, exist_ok=True)
    args = config_to_args(config) + ["--data", str(data or data_dir()), "--n-test", str(n_test)]
    args += ["--timeline", str(timeline)] if timeline else []
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
    extra = {"timeline": timeline_steps(timeline)} if timeline else {}
    return _summary("batch", workers, r, nodes=nodes, out=str(out), **extra)


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
    processes here; otherwise one srun step laid out as the batch job's ranks. With
    config.pin_cores, the trainings on one machine split its cores as Horovod's ranks would."""
    out = Path(out_root) / f"ceiling-{workers}-{int(time.time() * 1000)}"
    share = config.replace(n_train=config.n_train // workers)
    args = config_to_args(share) + ["--data", str(data or data_dir()), "--n-test", str(n_test)]
    cmd = [sys.executable, "-m", "lhccnn.train", *args]
    pins = str(out / "pins")  # where the pinned trainings find each other's machines
    if local:
        procs = [
            subprocess.Popen(
                [
                    *cmd,
                    *("--out", str(out / f"task{i}")),
                    *(("--pin-group", pins, str(i), str(workers)) if config.pin_cores else ()),
                ],
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
        if config.pin_cores:
            task += f" --pin-group {shlex.quote(pins)} $SLURM_PROCID $SLURM_NTASKS"
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
    metrics = [json.loads((out / f"task{i}" / "metrics.json").read_text()) for i in range(workers)]
    tasks = [m["samples_per_s"] for m in metrics]
    cores = [m.get("pinned_cores") for m in metrics]
    total = sum(tasks)
    return {
        "mode": "independent" + (PINNED if all(c is not None for c in cores) else ""),
        "workers": workers,
        "samples_per_s": total,
        "per_worker_samples_per_s": total / workers,
        "task_samples_per_s": tasks,
        "task_cores": cores,
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
    timeline: bool = False,
    pin_cores=None,
) -> list[dict]:
    """For each worker count, notebook and batch runs side by side, `repeats` times each, and
    with `ceiling` (above one worker) the independent trainings that bound both (`ceiling_run`).

    `idle_comm_threads`: the settings of that option to run above one worker, e.g. (False, True)
    to measure both side by side (default: the config's own); runs with it are the modes with
    the suffix IDLE. One worker has no one to talk to and runs without it, as the base of both.
    `pin_cores`: likewise for pinning, e.g. (False, True); the pinned runs (suffix PINNED) have
    a pinned ceiling of their own, and one worker, alone on its machine, runs unpinned.
    With `timeline`, each Horovod run above one worker records Horovod's timeline under
    out_root/timelines, and its row says where rank 0's time went (`timeline_steps`): the
    recording costs a little time of its own, so compare such runs with each other.
    The order rotates from repeat to repeat, so that a machine whose speed drifts during the
    study does not favour one mode; `ratios` compares medians.
    """
    out_root = Path(out_root or results_dir() / "scaling")
    settings = tuple(idle_comm_threads or (config.idle_comm_threads,))
    pinning = tuple(pin_cores or (config.pin_cores,))
    rows = []
    for w in workers:
        c = weak_scaled(config, per_worker, w)
        # one worker, alone, is the base of every mode: it runs without either option
        idles, pins = (settings, pinning) if w > 1 else ((False,), (False,))
        runs = []
        for pin in pins:
            runs += [
                (run, c.replace(idle_comm_threads=idle, pin_cores=pin))
                for idle in idles
                for run in (notebook_run, batch_run)
            ]
            runs += [(ceiling_run, c.replace(pin_cores=pin))] if ceiling and w > 1 else []
        for rep in range(repeats):
            for run, rc in runs[rep % len(runs) :] + runs[: rep % len(runs)]:
                kwargs = {} if run is notebook_run else {"out_root": out_root}
                if timeline and w > 1 and run is not ceiling_run:
                    flags = f"{int(rc.idle_comm_threads)}{int(rc.pin_cores)}"
                    name = f"{run.__name__}-{w}-{flags}-{rep}.json"
                    kwargs["timeline"] = out_root / "timelines" / name
                    kwargs["timeline"].parent.mkdir(parents=True, exist_ok=True)
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
                    f"{row['mode']:>21} x{w}: {row['samples_per_s']:8.0f} samples/s"
                    + (f", val acc {row['val_accuracy']:.3f}" if "val_accuracy" in row else "")
                )
    return rows


def timeline_steps(path) -> dict:
    """Where rank 0's time goes, from Horovod's timeline (HOROVOD_TIMELINE, which rank 0
    writes). A step allreduces each gradient once; after rank 0 has queued its last gradient it
    can only wait: for the other ranks to queue theirs (`waiting_for_peers`: their straggling),
    then for the allreduce itself. The rest of the span is rank 0's own work (`compute`: its
    passes, input and callbacks). The other ranks' waits for rank 0 are not in rank 0's
    timeline. A file cut off by a crash is read up to its last event."""
    text = Path(path).read_text().rstrip().rstrip(",")
    events = json.loads(text if text.endswith("]") else text + "]")
    open_spans: dict = {}
    spans = []  # (begin, end, phase, tensor) in microseconds
    for e in events:
        if e.get("ph") == "B":
            open_spans.setdefault(e["pid"], []).append(e)
        elif e.get("ph") == "E" and open_spans.get(e["pid"]):
            b = open_spans[e["pid"]].pop()
            if b["name"] in ("NEGOTIATE_ALLREDUCE", "ALLREDUCE"):
                spans.append((b["ts"], e["ts"], b["name"], e["pid"]))
    steps: list[dict] = []  # a tensor queued again starts the next step
    for b, e, phase, tensor in sorted(spans):
        if phase == "NEGOTIATE_ALLREDUCE":
            if not steps or tensor in steps[-1]["tensors"]:
                steps.append({"tensors": set(), "queued": [], "agreed": [], "end": e})
            steps[-1]["tensors"].add(tensor)
            steps[-1]["queued"].append(b)
            steps[-1]["agreed"].append(e)
        if steps:
            steps[-1]["end"] = max(steps[-1]["end"], e)
    if not steps:
        raise ValueError(f"{path}: no allreduce in this Horovod timeline")
    waits, reduces = [], []
    for st in steps:
        last_queued, agreed = max(st["queued"]), max(st["agreed"])
        waits.append(max(0, agreed - last_queued))
        reduces.append(st["end"] - max(agreed, last_queued))
    span = steps[-1]["end"] - min(steps[0]["queued"])
    return {
        "steps": len(steps),
        "span_s": span * 1e-6,
        "waiting_for_peers_s": sum(waits) * 1e-6,
        "allreduce_s": sum(reduces) * 1e-6,
        "compute_s": (span - sum(waits) - sum(reduces)) * 1e-6,
        "median_waiting_for_peers_ms": statistics.median(waits) * 1e-3,
        "median_allreduce_ms": statistics.median(reduces) * 1e-3,
    }


def time_shares(rows: list[dict]) -> dict:
    """Per (mode, workers) with recorded timelines: the median over the repeats of each part's
    share of rank 0's time (compute, waiting_for_peers, allreduce; see timeline_steps)."""
    groups: dict = {}
    for r in rows:
        if "timeline" in r:
            groups.setdefault((r["mode"], r["workers"]), []).append(r["timeline"])
    parts = ("compute", "waiting_for_peers", "allreduce")
    return {
        key: {p: statistics.median(t[f"{p}_s"] / t["span_s"] for t in ts) for p in parts}
        for key, ts in groups.items()
    }


def medians(rows: list[dict]) -> dict:
    """Median samples/s per (mode, workers) over the repeats."""
    groups: dict = {}
    for r in rows:
        groups.setdefault((r["mode"], r["workers"]), []).append(r["samples_per_s"])
    return {k: statistics.median(v) for k, v in groups.items()}


def ratios(rows: list[dict]) -> dict:
    """notebook/batch median throughput per worker count (`notebook_over_batch`, and with the
    suffixes IDLE and PINNED for the runs with those options); Horovod's efficiency against the
    ideal (`workers` x the same mode's one-worker speed, which runs without either option) and,
    where measured, against the ceiling (the independent trainings of `ceiling_run`, which no
    communication cost can beat; pinned likewise for the pinned modes), per mode."""
    by = medians(rows)
    modes = [m for m in ALL_MODES if any(mode == m for mode, _ in by)]
    ws = {m: sorted(w for mode, w in by if mode == m) for m in modes}
    out: dict = {}
    for suffix in SUFFIXES:
        nb, batch = "notebook" + suffix, "batch" + suffix
        if nb in ws and batch in ws:
            both = [w for w in ws[nb] if w in ws[batch]]
            out["notebook_over_batch" + suffix] = {w: by[(nb, w)] / by[(batch, w)] for w in both}
    base = {m: by.get((m.split("+")[0], 1)) for m in modes}  # one worker runs without options
    if any(base.values()):
        out["efficiency"] = {
            m: {w: by[(m, w)] / (w * base[m]) for w in ws[m]} for m in modes if base[m]
        }
    if any(mode.startswith("independent") for mode, _ in by):
        ceiling = {m: "independent" + (PINNED if m.endswith(PINNED) else "") for m in modes}
        out["of_ceiling"] = {
            m: {w: by[(m, w)] / by[(ceiling[m], w)] for w in ws[m] if (ceiling[m], w) in by}
            for m in modes
        }
    return out
