"""A detached process that tears a cluster down when the process that started it dies."""

# A kernel killed with SIGKILL (or by the OOM killer, or a restart that finds it stuck) runs no
# atexit handler: its controller, engines and SLURM jobs would live on until the time limit.
# Cluster.start and SlurmDask therefore start one watchdog each, in its own session (a kernel
# restart kills the kernel's process group, and must not take the watchdog with it). It polls
# the driver's pid about once a second; the driver is gone when the pid is gone, a zombie, or
# a different process (pids are reused: the start time recorded at launch must match). Then it
# cancels the jobs (by id and by name, verified with squeue), kills the recorded local processes
# with their children, removes the files that hold the cluster's keys, and exits.
#
# The state is a JSON file the owner rewrites as it learns more (job ids arrive after sbatch):
#   {"driver": {"pid", "start"}, "jobs": [...], "job_names": [...],
#    "processes": [{"pid", "start"}], "paths": [...]}
# A clean stop removes the file and ends the watchdog; a missing file also ends it.

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

log = logging.getLogger(__name__)

POLL = 1.0  # seconds between looks at the driver: most of the teardown bound's slack
CANCEL_TIMEOUT = 45.0  # seconds to get SLURM to confirm the jobs left the queue
GIVE_UP = 600.0  # seconds of retrying an incomplete teardown (SLURM not answering)


def identity(pid: int) -> dict | None:
    """{"pid", "start"} of a live process (start: its creation time), or None if none."""
    import psutil

    try:
        p = psutil.Process(pid)
        if p.status() == psutil.STATUS_ZOMBIE:
            return None
        return {"pid": pid, "start": p.create_time()}
    except psutil.Error:
        return None


def same_process(ident: dict) -> bool:
    """Whether the process recorded as `ident` is still alive (a reused pid is not)."""
    now = identity(int(ident["pid"]))
    return now is not None and abs(now["start"] - float(ident["start"])) < 0.05


class Watchdog:
    """The owner's handle: start() launches the detached process, update() tells it more,
    stop() ends it without a teardown (the owner stopped everything itself)."""

    def __init__(self, state_file: Path, proc):  # proc: the watchdog's subprocess.Popen
        self.state_file = Path(state_file)
        self.proc = proc
        self._state: dict = {}

    @classmethod
    def start(
        cls,
        state_file: str | Path,
        *,
        jobs=(),
        job_names=(),
        processes=(),
        paths=(),
        driver_pid: int | None = None,
    ) -> Watchdog:
        state_file = Path(state_file)
        state_file.parent.mkdir(parents=True, exist_ok=True)
        driver = identity(driver_pid or os.getpid())
        state = {"driver": driver, "jobs": [], "job_names": [], "processes": [], "paths": []}
        _write(state_file, state)
        logfile = open(state_file.with_suffix(".log"), "ab")
        # own session: a kernel restart signals the kernel's process group, not this one;
        # cwd /: the watchdog must not keep a directory busy that the owner wants to delete
        proc = subprocess.Popen(
            [sys.executable, "-m", "lhccnn.watchdog", str(state_file)],
            stdin=subprocess.DEVNULL,
            stdout=logfile,
            stderr=logfile,
            start_new_session=True,
            close_fds=True,
            cwd="/",
            env=dict(os.environ, PYTHONPATH=_package_root()),
        )
        logfile.close()
        self = cls(state_file, proc)
        self._state = state
        self.update(jobs=jobs, job_names=job_names, processes=processes, paths=paths)
        return self

    def update(self, *, jobs=(), job_names=(), processes=(), paths=()) -> None:
        """Add to what the watchdog tears down; processes are pids (their start time read now)."""
        s = self._state
        s["jobs"] = sorted(set(s["jobs"]) | {str(j) for j in jobs if j})
        s["job_names"] = sorted(set(s["job_names"]) | set(job_names))
        known = {p["pid"] for p in s["processes"]}
        s["processes"] += [i for i in map(identity, processes) if i and i["pid"] not in known]
        s["paths"] = sorted(set(s["paths"]) | {str(p) for p in paths})
        _write(self.state_file, s)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stop(self) -> None:
        """End the watchdog without a teardown. Idempotent."""
        self.state_file.unlink(missing_ok=True)
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def _package_root() -> str:
    # the watchdog imports lhccnn from where its owner does (a checkout, not only site-packages)
    root = str(Path(__file__).resolve().parents[1])
    rest = os.environ.get("PYTHONPATH")
    return f"{root}{os.pathsep}{rest}" if rest else root


def _write(path: Path, state: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(state))
    tmp.chmod(0o600)
    os.replace(tmp, path)  # the watchdog never reads a half-written file


def _read(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except ValueError:  # cannot happen with os.replace; keep the last good state if it does
        return {}


def teardown(state: dict, cancel_timeout: float = CANCEL_TIMEOUT) -> bool:
    """Cancel the jobs (verified), kill the processes, remove the files; True if all is gone."""
    import psutil

    from . import slurm

    ok = True
    if state.get("jobs") or state.get("job_names"):
        try:
            slurm.cancel(
                state.get("jobs", []), names=state.get("job_names", []), timeout=cancel_timeout
            )
            log.info(
                "jobs %s / names %s: none left in the queue",
                state.get("jobs"),
                state.get("job_names"),
            )
        except slurm.SlurmError as e:
            log.error("%s", e)
            ok = False
    procs = []
    for ident in state.get("processes", []):
        if not same_process(ident):
            continue  # gone already, or its pid now belongs to someone else
        p = psutil.Process(int(ident["pid"]))
        try:
            procs += p.children(recursive=True) + [p]
        except psutil.Error:
            pass
    for p in procs:
        try:
            p.terminate()
        except psutil.Error:
            pass
    _, alive = psutil.wait_procs(procs, timeout=3)
    for p in alive:  # a busy engine may ignore SIGTERM for a while
        try:
            p.kill()
        except psutil.Error:
            pass
    _, alive = psutil.wait_procs(alive, timeout=3)
    if alive:
        log.error("processes still alive: %s", [p.pid for p in alive])
        ok = False
    for path in state.get("paths", []):
        try:
            Path(path).unlink(missing_ok=True)
        except OSError as e:
            log.error("removing %s: %s", path, e)
    return ok


def watch(state_file: Path, poll: float = POLL) -> int:
    """Poll until the driver dies (then tear down) or the state file goes (the owner stopped)."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # the owner's clean stop
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C in the driver's terminal is not for us
    state: dict = {}
    while True:
        new = _read(state_file)
        if new is None:
            return 0
        state = new or state
        driver = state.get("driver")
        if driver and not same_process(driver):
            t0 = time.monotonic()
            log.warning("driver pid %s is gone: tearing its cluster down", driver["pid"])
            ok = teardown(state)
            while not ok and time.monotonic() - t0 < GIVE_UP:  # no one else will: keep trying
                time.sleep(5)
                ok = teardown(state)
            log.warning(
                "teardown %s in %.1f s", "complete" if ok else "INCOMPLETE", time.monotonic() - t0
            )
            state_file.unlink(missing_ok=True)
            return 0 if ok else 1
        time.sleep(poll)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m lhccnn.watchdog STATE_FILE", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s watchdog %(levelname)s %(message)s")
    return watch(Path(argv[0]))


if __name__ == "__main__":
    sys.exit(main())
