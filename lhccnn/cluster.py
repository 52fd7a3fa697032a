"""Start, inspect and stop an IPyParallel cluster whose engines run in a SLURM allocation."""

from __future__ import annotations

import atexit
import logging
import os
import socket
import stat
import threading
import time
import weakref
from dataclasses import dataclass
from pathlib import Path

from . import slurm
from .watchdog import Watchdog

log = logging.getLogger(__name__)


class ClusterError(RuntimeError):
    """The cluster could not be started or stopped; the message says why (SLURM's words)."""


class AllocationEnded(ClusterError):
    """The SLURM job that holds the engines ended (time limit, node failure, scancel)."""


class _CurveNotUnsigned(logging.Filter):
    """With CurveZMQ on, ipyparallel drops the HMAC key (Curve authenticates and encrypts every
    message), and jupyter_client then warns "Message signing is disabled": not so, here."""

    def filter(self, record):
        return "Message signing is disabled" not in record.getMessage()


def _quiet_signing_warning() -> None:
    from traitlets.log import get_logger

    for logger in {get_logger(), logging.getLogger("traitlets")}:
        if not any(isinstance(f, _CurveNotUnsigned) for f in logger.filters):
            logger.addFilter(_CurveNotUnsigned())


# an IPyParallel or Dask client -> the Cluster whose allocation runs its work
_ALLOCATIONS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def allocation_ended(client) -> str | None:
    """Why the allocation behind `client` can run no more work ("SLURM job 123 ended
    CANCELLED"), or None while it runs (or for a client of no lhccnn cluster). Waiting loops
    (random search, PBT) check this, so a job that ends fails their pending work in seconds."""
    cluster = _ALLOCATIONS.get(client)
    return cluster.ended if cluster is not None else None


@dataclass(frozen=True)
class ClusterSpec:
    """What to ask for: nodes, engines and the SLURM options of Perlmutter-style sites."""

    nodes: int = 1
    engines: int | None = None  # default: one per node
    time: str = "00:30:00"
    constraint: str | None = None  # -C cpu | gpu
    qos: str | None = None  # -q interactive | debug
    partition: str | None = None
    account: str | None = None  # default: $SBATCH_ACCOUNT, as sbatch itself reads it
    mpi: bool = False  # engines as one MPI job, so that Horovod can hvd.init() across them
    wait: float = 120.0  # seconds to wait for the allocation and every engine
    local: bool = False  # engines on this machine, no SLURM, controller on loopback only
    launcher: str | None = (
        None  # how an MPI job starts: srun | mpirun; default $LHCCNN_LAUNCHER or srun
    )
    python: str | None = None  # the interpreter that runs the engines; default: this one

    def __post_init__(self):
        if self.nodes < 1:
            raise ValueError(f"nodes must be >= 1, got {self.nodes}")
        if self.engines is not None and self.engines < 1:
            raise ValueError(f"engines must be >= 1, got {self.engines}")
        if not self.local and self.engines is not None and self.engines < self.nodes:
            raise ValueError(
                f"{self.engines} engines cannot fill {self.nodes} nodes: "
                "ask for at least one engine per node"
            )
        if self.wait <= 0:
            raise ValueError(f"wait must be > 0 seconds, got {self.wait}")
        if self.launch_command not in ("srun", "mpirun"):
            raise ValueError(f"launcher must be srun or mpirun, got {self.launch_command!r}")
        # these strings are written into the engines' job script: a newline would be a shell line
        slurm.check_option("time", self.time)
        for name in ("constraint", "qos", "partition", "account"):
            if getattr(self, name) is not None:
                slurm.check_option(name, getattr(self, name))
        if self.python is not None:
            slurm.check_no_control("python", self.python)

    @property
    def n(self) -> int:
        return self.engines or self.nodes

    @property
    def launch_command(self) -> str:
        return self.launcher or os.environ.get("LHCCNN_LAUNCHER", "srun")


# The engines' batch job. {launch} starts n engine processes across the allocation: srun at
# NERSC; mpirun on the mini SLURM, whose virtual nodes share one /tmp and so break srun's PMIx.
ENGINE_TEMPLATE = """#!/bin/bash
#SBATCH --export=ALL
#SBATCH --job-name=ipengine-{cluster_id}
#SBATCH --nodes={nodes}
#SBATCH --ntasks={n}
#SBATCH --time={timelimit}
#SBATCH --output={output_file}
{extra}
{launch} {program_and_args}
"""


def _ipp_cluster(spec: ClusterSpec):
    """IPyParallel's cluster for one of the three ways to launch engines: processes on this
    machine, one local MPI job (mpirun), or a SLURM job. Returns it and the name of its engine
    launcher (whose config takes the engines' command)."""
    import ipyparallel as ipp

    common = {"n": spec.n, "engine_timeout": int(spec.wait), "log_level": logging.WARNING}
    if spec.local and spec.mpi:
        ipp_cluster = ipp.Cluster(engines="mpi", controller_ip="127.0.0.1", **common)
        ipp_cluster.config.MPIEngineSetLauncher.mpi_args = list(MPIRUN_FLAGS)
        return ipp_cluster, "MPIEngineSetLauncher"
    if spec.local:
        ipp_cluster = ipp.Cluster(engines="local", controller_ip="127.0.0.1", **common)
        return ipp_cluster, "LocalEngineSetLauncher"
    _check_request(spec)  # SLURM's own verdict before anything is started
    ipp_cluster = ipp.Cluster(
        engines="slurm", controller_ip="*", controller_location=socket.gethostname(), **common
    )
    cfg = ipp_cluster.config.SlurmEngineSetLauncher
    cfg.batch_template = ENGINE_TEMPLATE
    # ipyparallel writes the script into the current directory unless told otherwise
    cfg.batch_file_name = str(
        Path(ipp_cluster.profile_dir, "log", f"slurm_engine-{ipp_cluster.cluster_id}.sbatch")
    )
    cfg.namespace = {
        "nodes": spec.nodes,
        "timelimit": spec.time,
        "extra": _sbatch_extra(spec),
        "launch": _launch_line(spec),
    }
    if spec.mpi:  # engine ids = MPI ranks (via mpi4py), as with ipyparallel's MPI launcher
        cfg.engine_args = ["--mpi"]
    return ipp_cluster, "SlurmEngineSetLauncher"


# mpirun where ranks share cores with each other, the controller and TensorFlow on small machines:
# no pinning, more ranks than slots allowed, and MPI's busy-polling yields the core when idle
MPIRUN_FLAGS = (
    "--bind-to", "none", "--oversubscribe", "--mca", "mpi_yield_when_idle", "1"
)  # fmt: skip


def _launch_line(spec: ClusterSpec) -> str:
    # Engines that are not one MPI job always start with srun: under mpirun, one engine's death
    # would take all the others down with it (an HPO wants them independent).
    if spec.mpi and spec.launch_command == "mpirun":
        return f"mpirun -np {spec.n} {' '.join(MPIRUN_FLAGS)}"
    if spec.mpi:  # one rank's death must end the job, not leave the others hanging in MPI
        return "srun --cpu-bind=none --kill-on-bad-exit=1"
    return "srun --cpu-bind=none"  # the site's default MPI plugin (cray_shasta on Perlmutter)


def sbatch_options(spec: ClusterSpec) -> list[str]:
    """The site options of a spec as sbatch flags (constraint, qos, partition, account)."""
    opts = [
        ("--constraint", spec.constraint),
        ("--qos", spec.qos),
        ("--partition", spec.partition),
        ("--account", spec.account),
    ]
    return [f"{k}={v}" for k, v in opts if v]


def _check_request(spec: ClusterSpec) -> None:
    """Ask SLURM whether it would accept the engines' job (sbatch --test-only submits nothing)."""
    try:
        slurm.run(
            "sbatch",
            "--test-only",
            f"--nodes={spec.nodes}",
            f"--ntasks={spec.n}",
            f"--time={spec.time}",
            *sbatch_options(spec),
            "--wrap",
            "true",
        )
    except slurm.SlurmError as e:
        raise ClusterError(f"SLURM rejected the request: {e}") from None


def _sbatch_extra(spec: ClusterSpec) -> str:
    return "\n".join(f"#SBATCH {o}" for o in sbatch_options(spec))


class Cluster:
    """A running IPyParallel cluster: controller here, engines in SLURM (or local processes).

    Use `Cluster.start(spec)`; then `.client`, `.view` (a DirectView on all engines),
    `.status()` and `.stop()`. Also a context manager: `with Cluster.start(spec) as c: ...`.
    """

    def __init__(self, spec: ClusterSpec, ipp_cluster):
        self.spec = spec
        self._ipp = ipp_cluster
        self.client = None
        self.view = None
        self.started_seconds = None
        self.stopped = False  # True only once SLURM confirmed the engines' job left the queue
        self.stop_timeout = 30.0  # seconds stop() waits for SLURM to confirm, by default
        self._dask = self._dask_scheduler = None
        self.ended: str | None = None  # why the allocation ended under us, once it has
        self._processes_stopped = False
        self._watchdog: Watchdog | None = None

    # ------------------------------------------------------------------------------ start
    @classmethod
    def start(cls, spec: ClusterSpec | None = None, activate: bool = False, **kwargs) -> Cluster:
        """Allocate, start controller and engines, wait for every engine, connect.

        Raises ClusterError (after cleaning up) if SLURM rejects the request, the allocation
        is still pending after `spec.wait`, or engines die or do not register in time.
        """
        spec = spec or ClusterSpec(**kwargs)
        t0 = time.monotonic()
        ipp_cluster, launcher = _ipp_cluster(spec)
        # CurveZMQ: the controller's traffic with engines and clients is encrypted, and only a
        # holder of its public key (in the 0600 connection files) can talk to it
        ipp_cluster.controller_args = [
            *ipp_cluster.controller_args,
            "--IPController.enable_curve=True",
        ]
        _quiet_signing_warning()
        if spec.python:
            ipp_cluster.config[launcher].engine_cmd = [spec.python, "-m", "ipyparallel.engine"]
        # a busy engine (inside TensorFlow) ignores SIGTERM for a while: do not wait 5 s for it;
        # stop() kills what is left, so a kernel's shutdown window (5 s) suffices
        ipp_cluster.config.LocalProcessLauncher.stop_seconds_until_kill = 1
        self = cls(spec, ipp_cluster)
        try:
            ipp_cluster.start_controller_sync()
            self._protect_files()
            self._start_watchdog()
            ipp_cluster.start_engines_sync(spec.n)
            self._watchdog.update(jobs=[self.job_id], processes=self._launcher_pids())
            self.client = ipp_cluster.connect_client_sync()
            self._wait_for_engines(t0)
        except BaseException as e:
            try:
                self.stop()
            except ClusterError as stop_error:  # say both: why it failed, and what may be left
                log.error("%s", stop_error)
            if isinstance(e, ClusterError):
                raise
            if "sbatch" in str(e) or type(e).__name__ in ("CalledProcessError", "LauncherError"):
                raise ClusterError(f"SLURM refused the engines' job: {_slurm_message(e)}") from None
            raise
        self.started_seconds = time.monotonic() - t0
        if not spec.local:
            _ALLOCATIONS[self.client] = self
            threading.Thread(
                target=self._watch_allocation, daemon=True, name=f"lhccnn-watch-{self.job_id}"
            ).start()
        self.view = self.client[:]
        self.view.block = True
        if activate:
            self.view.activate()  # %px, %%px, %autopx in the notebook
        atexit.register(self.stop)  # the kernel's exit takes the allocation down with it
        log.info("cluster ready: %d engines in %.1f s", len(self.client.ids), self.started_seconds)
        return self

    @property
    def job_name(self) -> str:
        return f"ipengine-{self._ipp.cluster_id}"  # ENGINE_TEMPLATE's --job-name

    def _start_watchdog(self) -> None:
        """A detached process that stops all this if the driver (this kernel) dies hard."""
        ipp, security = self._ipp, Path(self._ipp.profile_dir, "security")
        paths = [ipp.cluster_file] + [
            security / f"ipcontroller-{ipp.cluster_id}-{kind}.json" for kind in ("client", "engine")
        ]
        if not self.spec.local:
            paths.append(ipp.config.SlurmEngineSetLauncher.batch_file_name)
        self._watchdog = Watchdog.start(
            Path(ipp.profile_dir, "log", f"watchdog-{ipp.cluster_id}.json"),
            # by name too: sbatch may have queued the job before we learn its id
            job_names=[] if self.spec.local else [self.job_name],
            processes=self._launcher_pids(),
            paths=paths,
        )

    def _launcher_pids(self) -> list[int]:
        """Pids of the controller and of local engine launchers (a SLURM batch launcher has
        none: its engines are the job's, for scancel)."""
        launchers = [self._ipp.controller]
        for es in self._ipp.engines.values():
            launchers += list(getattr(es, "launchers", {}).values()) or [es]
        return [pid for pid in (getattr(x, "pid", None) for x in launchers) if pid and pid > 0]

    def _engine_set(self):
        return next(iter(self._ipp.engines.values()), None)

    @property
    def job_id(self) -> str | None:
        es = self._engine_set()
        return getattr(es, "job_id", None) or None

    def _wait_for_engines(self, t0: float) -> None:
        spec, es = self.spec, self._engine_set()
        started_running = None
        while len(self.client.ids) < spec.n:
            waited = time.monotonic() - t0
            if self.job_id:  # SLURM: watch the allocation itself
                try:
                    info = slurm.job_info(self.job_id)
                except slurm.SlurmError as e:  # a busy slurmctld is no answer: the deadline holds
                    log.warning("%s", e)
                    info = {"JobState": "UNKNOWN", "Reason": f"scontrol failed: {e}"}
                state = info["JobState"]
                # PENDING, CONFIGURING, SUSPENDED, REQUEUED...: none of them runs engines
                if state != "RUNNING" and state not in slurm.DONE_STATES and waited > spec.wait:
                    raise ClusterError(
                        f"SLURM job {self.job_id} still {state.lower()} after {spec.wait:.0f} s "
                        f"(reason: {info.get('Reason')}): cancelled"
                    )
                if state in slurm.DONE_STATES:
                    raise ClusterError(
                        f"the engines' job {self.job_id} ended {state} before all engines "
                        f"registered ({len(self.client.ids)}/{spec.n});"
                        f" its log ends:\n{self._log_tail()}"
                    )
                if state == "RUNNING" and started_running is None:
                    started_running = time.monotonic()
                if started_running and time.monotonic() - started_running > spec.wait:
                    raise ClusterError(
                        f"only {len(self.client.ids)}/{spec.n} engines registered within "
                        f"{spec.wait:.0f} s of job {self.job_id} starting; its log ends:\n"
                        f"{self._log_tail()}"
                    )
            else:
                if es is not None and es.state == "after":
                    raise ClusterError(
                        f"the engines exited before registering; log:\n{self._log_tail()}"
                    )
                if waited > spec.wait:
                    raise ClusterError(
                        f"only {len(self.client.ids)}/{spec.n} engines registered "
                        f"within {spec.wait:.0f} s; log:\n{self._log_tail()}"
                    )
            time.sleep(0.2)

    def _log_tail(self, lines: int = 15) -> str:
        """The end of the engines' output (the SLURM job's file, or the local launcher's)."""
        es = self._engine_set()
        text = ""
        if es is not None:
            path = Path(getattr(es, "output_file", "") or "/nonexistent")
            if path.is_file():
                text = path.read_text(errors="replace")
            elif hasattr(es, "get_output"):  # a local launcher may have removed its file already
                text = es.get_output() or ""
        return "\n".join(text.strip().splitlines()[-lines:]) or "(the engines wrote nothing)"

    def _protect_files(self) -> None:
        """Connection and cluster files hold the cluster's keys: readable by the user only."""
        security = Path(self._ipp.profile_dir, "security")
        for p in security.glob("*.json"):
            p.chmod(stat.S_IRUSR | stat.S_IWUSR)

    # ------------------------------------------------------------------------------ status
    def _watch_allocation(self, every: float = 2.0) -> None:
        """While the cluster is up, look at its job every `every` seconds; once SLURM says it
        ended, record why in `.ended` (a failing scontrol is not taken for an ended job)."""
        job, completing_since = self.job_id, None
        while not self.stopped and self.ended is None:
            try:
                state = slurm.job_state(job)
                if state == "COMPLETING":  # ending: wait a little for why (CANCELLED, TIMEOUT...)
                    completing_since = completing_since or time.monotonic()
                    if time.monotonic() - completing_since > 10:
                        self.ended = f"SLURM job {job} ended (COMPLETING)"
                elif state in slurm.DONE_STATES:
                    self.ended = f"SLURM job {job} ended {state}"
            except slurm.SlurmError as e:
                if "Invalid job id" in str(e):  # ended long enough ago that SLURM forgot it
                    self.ended = f"SLURM job {job} ended (no longer known to SLURM)"
            if self.ended:
                log.error("%s: its engines are gone", self.ended)
                return
            time.sleep(0.5 if completing_since else every)

    def status(self) -> dict:
        """Job id and state, nodes, and every engine's host and pid."""
        info = {
            "job_id": self.job_id,
            "state": "LOCAL" if self.spec.local else None,
            "nodes": None,
            "engines": [],
        }
        ended = False
        if self.job_id and not self.stopped:
            try:
                job = slurm.job_info(self.job_id)
                info.update(state=job["JobState"], nodes=job.get("NodeList"))
                # e.g. scancel from another shell; COMPLETING: ended, its processes being killed
                ended = job["JobState"] in slurm.DONE_STATES | {"COMPLETING"}
            except slurm.SlurmError as e:
                if "Invalid job id" in str(e):  # ended long enough ago that SLURM forgot it
                    info["state"], ended = "ENDED (no longer known to SLURM)", True
                else:
                    info["state"] = f"unknown ({e})"
        if ended:
            log.warning(
                "the engines' job %s ended (%s) outside this cluster's control",
                self.job_id,
                info["state"],
            )
        elif self.client is not None and not self.stopped:  # a dead job's engines never answer
            ids = list(self.client.ids)
            if ids:
                hosts = self.client[ids].apply_async(_whereami).get(timeout=30)
                info["engines"] = [{"id": i, **h} for i, h in zip(ids, hosts)]
        if self.stopped:
            info["state"] = "STOPPED"
        return info

    # ------------------------------------------------------------------------------ dask
    def dask(self, timeout: float = 60.0, warm_up: bool = True):
        """A dask.distributed Client whose workers are this cluster's engines (one thread each).

        The scheduler runs in this process (it ends with the kernel) and listens only where
        the engines can reach it (loopback for local engines), with mutual TLS: only a process
        holding this cluster's credentials (written 0600 in its security folder) can connect;
        its web dashboard listens on loopback only (reach it through an ssh tunnel). The engines
        stay engines too, so %px cells and Dask tasks can share them (not at the same moment).
        `warm_up`: import TensorFlow on every worker first (not for work without it)."""
        if self._dask is None:
            from distributed import Client, LocalCluster
            from ipyparallel.util import become_dask_worker

            from .security import dask_tls, host_address
            from .train import warm_up_worker

            security = dask_tls(
                Path(self._ipp.profile_dir, "security", f"dask-{self._ipp.cluster_id}")
            )
            host = "127.0.0.1" if self.spec.local else host_address()
            self._dask_scheduler = LocalCluster(
                n_workers=0,
                processes=False,
                host=host,
                protocol="tls://",
                security=security,
                dashboard_address="127.0.0.1:0",
            )
            self._dask = Client(self._dask_scheduler, security=security)
            self.client[:].apply_sync(
                become_dask_worker,
                self._dask_scheduler.scheduler_address,
                nthreads=1,
                security=security,
                **({"host": "127.0.0.1"} if self.spec.local else {}),
            )
            if not self.spec.local:
                _ALLOCATIONS[self._dask] = self
            self._dask.wait_for_workers(len(self.client.ids), timeout=timeout)
            if warm_up:
                self._dask.run(warm_up_worker)  # import TensorFlow once, before any timing
            # the client's text (what a notebook shows) comes from its cached scheduler info,
            # which LocalCluster.wait_for_workers leaves as it was and distributed refreshes
            # only every 2 s: without this it may say "processes=0" with every worker there
            self._dask.scheduler_info()
        return self._dask

    # ------------------------------------------------------------------------------ stop
    def stop(self, timeout: float | None = None) -> float:
        """Stop engines and controller, cancel the allocation and wait until SLURM confirms it
        left the queue. Raises ClusterError saying what is left (or that SLURM did not answer)
        if it cannot confirm that within `timeout` (default: .stop_timeout); calling stop()
        again then tries again. Idempotent once it succeeded."""
        if self.stopped:
            return 0.0
        timeout = self.stop_timeout if timeout is None else timeout
        t0 = time.monotonic()
        if not self._processes_stopped:
            self._stop_processes()
            self._processes_stopped = True
        job = self.job_id
        if not self.spec.local:
            try:
                slurm.cancel([job] if job else [], names=[self.job_name], timeout=timeout)
            except slurm.SlurmError as e:
                raise ClusterError(
                    f"the engines' job {job or self.job_name} may still hold "
                    f"its allocation: {e}; call stop() again to retry"
                ) from None
        self.stopped = True
        if self._watchdog is not None:
            self._watchdog.stop()
        atexit.unregister(self.stop)
        return time.monotonic() - t0

    def _stop_processes(self) -> None:
        # ipyparallel warns, with the engines' whole log, about every engine it had to SIGKILL;
        # busy engines (TensorFlow, Dask worker threads) often need it, and we check below anyway
        self._ipp.log.setLevel(logging.ERROR)
        local = self._local_processes()
        try:
            if self._dask is not None:
                from ipyparallel.util import stop_distributed_worker

                try:
                    self._dask.close()
                    self.client[:].apply_sync(stop_distributed_worker)
                finally:  # the scheduler lives in this process: never leave it running
                    self._dask_scheduler.close()
        except Exception as e:  # a worker already gone, say: the engines are stopped below
            log.warning("stopping Dask: %s", e)
        try:
            if self.client is not None:
                self.client.close()
            self._ipp.stop_cluster_sync()
        except Exception as e:  # keep going: the allocation must be cancelled regardless
            log.warning("stopping the IPyParallel cluster: %s", e)
        for proc in local:  # whatever outlived the polite stop (engines, nannies, mpiexec)
            try:
                proc.kill()
            except Exception:  # already gone
                pass

    def _local_processes(self) -> list:
        """The processes this cluster started on this machine: controller, engines, their
        children (nannies, mpiexec's ranks). SLURM's scancel takes care of the rest."""
        import psutil

        procs = []
        for pid in self._launcher_pids():
            try:
                p = psutil.Process(pid)
                procs += [p] + p.children(recursive=True)
            except psutil.NoSuchProcess:
                pass
        return procs

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        try:
            self.stop()
        except ClusterError as e:
            if exc is None:
                raise
            log.error("%s", e)  # the error already on its way out is the one to see


def _whereami() -> dict:
    import os
    import socket

    return {
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "slurm_node": os.environ.get("SLURMD_NODENAME"),
        "slurm_job": os.environ.get("SLURM_JOB_ID"),
    }


def _slurm_message(e: BaseException) -> str:
    out = getattr(e, "output", None) or getattr(e, "stderr", None)
    if isinstance(out, bytes):
        out = out.decode(errors="replace")
    return (out or str(e)).strip()
