"""Dask workers as SLURM batch jobs (dask-jobqueue), the other way to give PBT a cluster."""

from __future__ import annotations

import logging
import secrets
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path

from . import slurm
from .cluster import ClusterError
from .security import dask_tls, host_address
from .watchdog import Watchdog

log = logging.getLogger(__name__)


def _import_slurm_cluster():
    """dask_jobqueue's SLURMCluster, with Ctrl-C left as it was: importing dask_jobqueue turns
    SIGINT into a silent sys.exit() (exit status 0), which would hide an interrupted run."""
    before = signal.getsignal(signal.SIGINT)
    from dask_jobqueue import SLURMCluster

    # only the main thread may set handlers; None: a handler not set from Python, left alone
    if before is not None and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, before)
    return SLURMCluster


class SlurmDask:
    """`workers` SLURM jobs, each one Dask worker that runs `threads` tasks (PBT members) at a
    time on `cpus` CPUs, and a client to them (`.client`). The scheduler runs in this process,
    so it lives as long as the notebook or script that made it, on a login node or in a job.

    A context manager: on exit the client closes, the jobs are cancelled and the queue is
    checked for them. A job script SLURM would refuse (an unknown constraint, too much memory)
    is caught before anything is submitted, with SLURM's own words. If this process dies
    without closing (SIGKILL), a watchdog process cancels the jobs (by their unique job name).
    """

    def __init__(
        self,
        workers: int = 2,
        threads: int = 1,
        cpus: int | None = None,
        memory: str = "4GiB",
        walltime: str = "00:30:00",
        sbatch_options: str = "",
        log_dir: str | Path | None = None,
        prologue=(),
        interface: str | None = None,
        python: str | None = None,
        wait: float = 300.0,
        warm_up: bool = True,
    ):
        for name, value in (("workers", workers), ("threads", threads), ("cpus", cpus or threads)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        if wait <= 0:
            raise ValueError(f"wait must be > 0 seconds, got {wait}")
        # each value lands in the job script: refuse what would be a shell line or a bad option
        extra = slurm.check_sbatch_args(sbatch_options)  # one checked option per #SBATCH line
        slurm.check_option("time", walltime)
        for name, value in (("python", python), ("interface", interface)):
            if value is not None:
                slurm.check_no_control(name, value)
        from distributed import Client

        SLURMCluster = _import_slurm_cluster()

        self.workers = workers
        # unique: a watchdog cancelling by name must not touch another run's workers
        self.job_name = f"lhccnn-dask-{secrets.token_hex(4)}"
        self.log_dir = Path(log_dir) if log_dir else Path(tempfile.mkdtemp(prefix="lhccnn-dask-"))
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.cluster = SLURMCluster(
            cores=threads,
            processes=1,
            job_cpu=cpus or threads,
            memory=memory,
            walltime=walltime,
            job_name=self.job_name,
            job_extra_directives=extra,
            job_script_prologue=list(prologue),
            log_directory=str(self.log_dir),
            interface=interface,
            python=python or sys.executable,
            silence_logs="error",
            # mutual TLS with credentials only this user can read (workers read them by path on
            # the shared filesystem); the scheduler listens on this host's address only (or the
            # interface asked for), its dashboard on loopback (any free port: 8787 may be taken)
            security=dask_tls(self.log_dir / "security"),
            protocol="tls://",
            scheduler_options={
                "dashboard_address": "127.0.0.1:0",
                **({} if interface else {"host": host_address()}),
            },
        )
        self.client = None
        self._job_ids: set[str] = set()
        self._watchdog: Watchdog | None = None
        self._submitted = False  # nothing to cancel before the first sbatch
        try:
            self._check_job_script()
            self._watchdog = Watchdog.start(
                self.log_dir / "watchdog.json", job_names=[self.job_name]
            )
            self._submitted = True
            self.cluster.scale(workers)
            self.client = Client(self.cluster, security=self.cluster.security)
            self._wait(wait)
            self._watchdog.update(jobs=self.job_ids())
            if warm_up:
                from .train import warm_up_worker

                self.client.run(warm_up_worker)  # import TensorFlow once, before any timing
        except BaseException:
            try:
                self.close()
            except ClusterError as e:  # the first error is the one to raise; say this one too
                log.error("%s", e)
            raise

    def job_script(self) -> str:
        return self.cluster.job_script()

    def job_ids(self) -> list[str]:
        """The SLURM jobs submitted so far (also those already gone)."""
        for job in self.cluster.workers.values():
            if getattr(job, "job_id", None):
                self._job_ids.add(str(job.job_id))
        return sorted(self._job_ids)

    def _check_job_script(self) -> None:
        """`sbatch --test-only` on the worker's job script: refused now, not pending forever."""
        script = self.log_dir / "worker-job.sh"  # kept: what each worker job runs
        text = self.job_script()
        script.write_text(text)
        try:
            slurm.run("sbatch", "--test-only", str(script))
        except slurm.SlurmError as e:
            raise ClusterError(
                f"SLURM refuses the Dask worker's job: {e}\njob script ({script}):\n{text}"
            ) from None

    def _wait(self, timeout: float) -> None:
        """Until every worker has connected; else say what the jobs are doing (squeue's reason)."""
        start = time.monotonic()
        while (up := len(self.client.scheduler_info()["workers"])) < self.workers:
            if time.monotonic() - start > timeout:
                states = self._queue_states()
                raise ClusterError(
                    f"{up} of {self.workers} Dask workers "
                    f"connected after {timeout:.0f} s; their jobs: "
                    + ("; ".join(f"{j} {s}" for j, s in states.items()) or "none in the queue")
                    + f". Worker logs: {self.log_dir}"
                )
            time.sleep(1.0)

    def _queue_states(self) -> dict[str, str]:
        ids = set(self.job_ids())
        if not ids:
            return {}
        # not `squeue -j`: it fails on a job that has already left the queue
        out = slurm.run("squeue", "-h", "--me", "-o", "%i %T %r")
        rows = (line.split(maxsplit=1) for line in out.splitlines() if line.strip())
        return {job: rest for job, rest in rows if job in ids}

    def close(self, timeout: float = 30.0) -> None:
        """Close the client and the cluster (which cancels the jobs), then cancel by id and name
        whatever is still queued until SLURM confirms none is left; else ClusterError says what
        is left. Idempotent; after a failure, close() again tries again."""
        ids = self.job_ids()
        try:
            if self.client is not None:
                self.client.close()
            self.cluster.close()
        except Exception as e:  # the jobs are checked below regardless
            log.warning("closing the Dask cluster: %s", e)
        self.client = None
        try:
            if self._submitted:
                slurm.cancel(ids, names=[self.job_name], timeout=timeout)
        except slurm.SlurmError as e:
            raise ClusterError(f"Dask worker jobs may still be queued: {e}") from None
        if self._watchdog is not None:
            self._watchdog.stop()

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        try:
            self.close()
        except ClusterError as e:
            if exc is None:
                raise
            log.error("%s", e)  # the error already on its way out (Ctrl-C, say) is the one to see
