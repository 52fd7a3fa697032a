"""Small helpers around the SLURM command-line tools: job state, waiting, the queue."""

from __future__ import annotations

import getpass
import logging
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

log = logging.getLogger(__name__)

# Terminal states (squeue/scontrol); COMPLETED is the only good one.
DONE_STATES = {
    "COMPLETED",
    "FAILED",
    "CANCELLED",
    "TIMEOUT",
    "NODE_FAIL",
    "PREEMPTED",
    "OUT_OF_MEMORY",
    "BOOT_FAIL",
    "DEADLINE",
}


class SlurmError(RuntimeError):
    """A SLURM command failed or a job ended badly; the message carries SLURM's own words."""


# What each sbatch option accepts. User strings are written into `#SBATCH` lines of job scripts:
# a newline there starts a shell line, so anything outside these patterns is refused.
_NAME = r"[A-Za-z0-9_.+-]+"
OPTION_PATTERNS = {
    "constraint": r"[A-Za-z0-9_.+\-&|,()\[\]*:]+",  # features with & | , [] () and *counts
    "qos": _NAME,
    "partition": rf"{_NAME}(,{_NAME})*",
    "account": _NAME,
    "job-name": _NAME,
    # minutes, MM:SS, HH:MM:SS, D-HH, D-HH:MM, D-HH:MM:SS, or no limit
    "time": r"\d+(:\d{1,2}){0,2}|\d+-\d{1,2}(:\d{1,2}){0,2}|UNLIMITED|INFINITE",
    "nodes": r"\d+(-\d+)?",
    "ntasks": r"\d+",
    "ntasks-per-node": r"\d+",
    "cpus-per-task": r"\d+",
    "gpus": r"([A-Za-z0-9_]+:)?\d+",
    "gpus-per-node": r"([A-Za-z0-9_]+:)?\d+",
    "mem": r"\d+[KMGT]?",
}
# short sbatch flags and the long names they stand for
SHORT_OPTIONS = {
    "-C": "constraint",
    "-q": "qos",
    "-p": "partition",
    "-A": "account",
    "-t": "time",
    "-J": "job-name",
    "-N": "nodes",
    "-n": "ntasks",
    "-c": "cpus-per-task",
    "-G": "gpus",
}
# flags without a value that job scripts may carry
FLAG_OPTIONS = {"exclusive", "requeue", "no-requeue", "overcommit"}
# any other long option: one word of ordinary characters (paths, lists, mail addresses)
_OTHER_OPTION = r"[A-Za-z][A-Za-z0-9-]*"
_OTHER_VALUE = r"[A-Za-z0-9_.,:=@%+/-]+"


def check_no_control(name: str, value: str) -> str:
    """Refuse newlines and other control characters: in a job script they start a new line."""
    if not isinstance(value, str):
        raise ValueError(f"{name} must be a string, got {value!r}")
    if any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise ValueError(f"{name} {value!r} contains a newline or control character")
    return value


def check_option(name: str, value: str) -> str:
    """`value` if it is what sbatch's --`name` expects; else ValueError naming the value."""
    check_no_control(name, value)
    if not re.fullmatch(OPTION_PATTERNS[name], value):
        raise ValueError(f"{name} {value!r} is not a valid SLURM {name}")
    return value


def check_sbatch_args(args: str) -> list[str]:
    """Split extra sbatch options ("-C cpu -q regular --exclusive") and check each one."""
    check_no_control("sbatch options", args)
    tokens = shlex.split(args)
    checked = []
    while tokens:
        tok = tokens.pop(0)
        if tok.startswith("--"):
            name, eq, value = tok[2:].partition("=")
            if name in FLAG_OPTIONS and not eq:
                checked.append(tok)
                continue
            if not re.fullmatch(_OTHER_OPTION, name):
                raise ValueError(f"{tok!r} in sbatch options {args!r} is not an sbatch option")
            if not eq:
                if not tokens:
                    raise ValueError(f"sbatch option {tok!r} needs a value")
                value = tokens.pop(0)
        elif tok[:2] in SHORT_OPTIONS:
            name = SHORT_OPTIONS[tok[:2]]
            value = tok[2:] or (tokens.pop(0) if tokens else "")
        else:
            raise ValueError(f"{tok!r} in sbatch options {args!r} is not an option")
        if name in OPTION_PATTERNS:
            check_option(name, value)
        elif not re.fullmatch(_OTHER_VALUE, value):
            raise ValueError(
                f"sbatch option --{name} value {value!r} has characters a job "
                "script line should not carry"
            )
        checked.append(f"--{name}={value}")
    return checked


def run(*args: str, timeout: float = 30, env: dict | None = None) -> str:
    """Run a SLURM client command and return its stdout; SLURM's stderr goes into the error."""
    if shutil.which(args[0]) is None:
        raise SlurmError(f"{args[0]} not found: is SLURM installed and on PATH?")
    try:
        p = subprocess.run(args, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:  # a busy slurmctld: the caller decides whether to retry
        raise SlurmError(f"{' '.join(args)} did not answer within {timeout:.0f} s") from None
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


def listed(timeout: float = 10) -> dict[str, tuple[str, str]]:
    """{job id: (name, state)} of this user's jobs that squeue lists (pending, running,
    completing, ...). Raises SlurmError if squeue fails: no answer is not an empty queue."""
    out = run("squeue", "-h", "--me", "-o", "%i|%j|%T", timeout=timeout)
    rows = (line.split("|", 2) for line in out.splitlines() if line.count("|") == 2)
    return {job: (name, state) for job, name, state in rows}


def cancel(
    job_ids=(), names=(), timeout: float = 30.0, call_timeout: float = 10.0, poll: float = 0.5
) -> None:
    """scancel jobs by id, and by name (this user's only) for jobs whose id was never learnt,
    then wait until squeue no longer lists any of them. Failed or slow scancel/squeue calls are
    retried until `timeout`; then SlurmError says what is still listed, or that SLURM never
    answered, so that nothing is reported gone unless SLURM said so."""
    ids, names = {str(j) for j in job_ids if j}, set(names)
    if not ids and not names:
        return
    for tool in ("scancel", "squeue"):  # not installed: no retry will change that
        if shutil.which(tool) is None:
            raise SlurmError(
                f"{tool} not found: cannot cancel or check jobs {sorted(ids)} {sorted(names)}"
            )
    user = getpass.getuser()
    deadline = time.monotonic() + timeout
    left: dict | None = None  # None: squeue has not answered yet
    errors: list[str] = []
    to_cancel = set(ids)
    while True:
        call = max(1.0, min(call_timeout, deadline - time.monotonic()))
        try:
            if to_cancel:
                run("scancel", *sorted(to_cancel), timeout=call)
            for name in sorted(names):
                run("scancel", f"--name={name}", f"--user={user}", timeout=call)
        except SlurmError as e:  # an id that already ended makes scancel fail too: squeue decides
            errors.append(str(e))
        try:
            jobs = listed(timeout=max(1.0, min(call_timeout, deadline - time.monotonic())))
            left = {j: s for j, (n, s) in jobs.items() if j in ids or n in names}
            if not left:
                return
            to_cancel = set(left)
        except SlurmError as e:
            errors.append(str(e))
        if time.monotonic() >= deadline:
            break
        time.sleep(poll)
    what = ", ".join(sorted(ids) + [f"name={n}" for n in sorted(names)])
    last = f" (last error: {errors[-1]})" if errors else ""
    if left is None:
        raise SlurmError(
            f"could not confirm that jobs {what} left the queue: squeue did not "
            f"answer within {timeout:.0f} s{last}; check with `squeue --me`"
        )
    raise SlurmError(
        f"still in the queue {timeout:.0f} s after scancel: "
        + "; ".join(f"{j} {s}" for j, s in sorted(left.items()))
        + last
    )


def wait_job(
    job_id: str,
    log_file: str | Path | None = None,
    timeout: float | None = None,
    poll: float = 1.0,
    stream=sys.stdout,
) -> str:
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
        raise SlurmError(
            f"job {job_id} ended {state} (exit code {info.get('ExitCode')}, "
            f"reason {info.get('Reason')}); log: {log_file}"
        )
    return state
