"""Small helpers around the SLURM command-line tools: job state, waiting, the queue."""

from __future__ import annotations

import logging
import shutil
import subprocess
import sys
import time
from pathlib import Path

log = logging.getLogger(__name__)

# Terminal states (squeue/scontrol); COMPLETED is the only good one.
DONE_STATES = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "PREEMPTED",
               "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE"}


class SlurmError(RuntimeError):
    """A SLURM command failed or a job ended badly; the message carries SLURM's own words."""


def run(*args: str, timeout: float = 30, env: dict | None = None) -> str:
    """Run a SLURM client command and return its stdout; SLURM's stderr goes into the error."""
    if shutil.which(args[0]) is None:
        raise SlurmError(f"{args[0]} not found: is SLURM installed and on PATH?")
    p = subprocess.run(args, capture_output=True, text=True, timeout=timeout, env=env)
    if p.returncode != 0:
        raise SlurmError(f"{' '.join(args)} failed: {p.stderr.strip() or p.stdout.strip()}")
    return p.stdout


def job_info(job_id: str) -> dict[str, str]:
    """`scontrol show job` as a dict (JobState, ExitCode, NodeList, ...)."""
    out = run("scontrol", "show", "job", "-o", str(job_id))
    info = {}
    for item in out.split():
        key, _, value = item.partition("=")
        info.setdefault(key, value)
    return info


def job_state(job_id: str) -> str:
    return job_info(job_id)["JobState"]


def queue(user_only: bool = True) -> list[str]:
    """Job ids in the queue (pending or running)."""
    args = ["squeue", "-h", "-o", "%i"] + (["--me"] if user_only else [])
    return run(*args).split()


def wait_job(job_id: str, log_file: str | Path | None = None, timeout: float | None = None,
             poll: float = 1.0, stream=sys.stdout) -> str:
    """Wait for a job to end, echoing new lines of its log; raise SlurmError unless COMPLETED."""
    start, pos, state = time.monotonic(), 0, "PENDING"
    log_file = Path(log_file) if log_file else None

    def echo_new():
        nonlocal pos
        if log_file and log_file.exists():
            with open(log_file, errors="replace") as f:
                f.seek(pos)
                text = f.read()
                pos = f.tell()
            if text:
                stream.write(text)
                stream.flush()

    while True:
        state = job_state(job_id)
        echo_new()
        if state in DONE_STATES:
            break
        if timeout is not None and time.monotonic() - start > timeout:
            run("scancel", str(job_id))
            raise SlurmError(f"job {job_id} still {state} after {timeout:.0f} s: cancelled")
        time.sleep(poll)
    if state != "COMPLETED":
        info = job_info(job_id)
        raise SlurmError(f"job {job_id} ended {state} (exit code {info.get('ExitCode')}, "
                         f"reason {info.get('Reason')}); log: {log_file}")
    return state
