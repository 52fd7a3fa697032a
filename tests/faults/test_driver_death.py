"""Faults: a driver killed with SIGKILL leaves no SLURM job, controller or engine behind."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil

from lhccnn.config import results_dir

REPO = Path(__file__).resolve().parents[2]
BOUND = 60.0  # seconds from the driver's death to an empty queue and no process of it left

# The driver: what a notebook kernel does with %ipcluster start, then it hangs until killed.
CLUSTER_DRIVER = """
import glob, json, os, time
from lhccnn.cluster import Cluster, ClusterSpec
c = Cluster.start(ClusterSpec(nodes=2, wait=90))
ipp = c._ipp
keys = glob.glob(os.path.join(ipp.profile_dir, "security", f"ipcontroller-{ipp.cluster_id}-*.json"))
print(json.dumps({"job": c.job_id, "name": "ipengine-" + ipp.cluster_id,
                  "controller": ipp.controller.pid, "engines": c.view.apply(os.getpid),
                  "files": [ipp.cluster_file, *keys]}), flush=True)
time.sleep(3600)
"""

# A PBT driver killed while its Dask worker jobs still wait in the queue (here: not before
# 10 minutes): a running worker exits when its scheduler (in the driver) is gone, but a pending
# job would wait, start later and hold its allocation for nothing.
DASK_DRIVER = """
from lhccnn.jobqueue import SlurmDask
SlurmDask(workers=2, threads=1, memory="1GiB", wait=600, sbatch_options="--begin=now+600")
"""


def _start_driver(code: str, tmp_path) -> tuple[subprocess.Popen, dict]:
    env = dict(os.environ, PYTHONPATH=str(REPO), IPYTHONDIR=str(tmp_path / "ipython"))
    driver = subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, env=env, cwd=tmp_path
    )
    line = driver.stdout.readline()
    assert line, f"the driver died before its cluster was up (exit {driver.wait()})"
    return driver, json.loads(line)


def _our_jobs(job_ids, name) -> list[str]:
    out = subprocess.run(
        ["squeue", "-h", "-o", "%i %j %T"], capture_output=True, text=True, check=True
    ).stdout
    return [
        line for line in out.splitlines() if line.split()[0] in job_ids or line.split()[1] == name
    ]


def _alive(pids) -> list[int]:
    alive = []
    for pid in pids:
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                alive.append(pid)
        except psutil.NoSuchProcess:
            pass
    return alive


def _kill_and_time(driver, job_ids, name, pids, files=()) -> float:
    """SIGKILL the driver; seconds until its jobs left the queue and its processes and files
    (which hold the cluster's keys) are gone."""
    assert _our_jobs(job_ids, name), "the job should be in the queue while the driver lives"
    driver.send_signal(signal.SIGKILL)
    driver.wait()
    t0 = time.monotonic()
    while time.monotonic() - t0 < BOUND + 30:
        if (
            not _our_jobs(job_ids, name)
            and not _alive(pids)
            and not any(map(os.path.exists, files))
        ):
            return time.monotonic() - t0
        time.sleep(0.25)
    left = _our_jobs(job_ids, name)
    subprocess.run(["scancel", *job_ids, f"--name={name}"], capture_output=True)  # tidy up
    for pid in _alive(pids):
        os.kill(pid, signal.SIGKILL)
    raise AssertionError(
        f"{BOUND + 30:.0f} s after the driver's death: jobs {left}, "
        f"processes {_alive(pids)}, files {[f for f in files if os.path.exists(f)]}"
    )


def _record(name: str, seconds: float) -> None:
    out = results_dir()
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(
        json.dumps({"seconds_to_empty_queue": seconds, "bound": BOUND})
    )
    print(f"\n{name}: {seconds:.1f} s from SIGKILL to an empty queue (bound {BOUND:.0f} s)")


def test_killed_driver_leaves_no_job_controller_or_engine_within_bound(slurm, tmp_path):
    driver, info = _start_driver(CLUSTER_DRIVER, tmp_path)
    pids = [info["controller"], *info["engines"]]
    seconds = _kill_and_time(driver, [info["job"]], info["name"], pids, info["files"])
    _record("driver_death_cluster", seconds)
    assert seconds < BOUND


def test_killed_driver_leaves_no_pending_dask_worker_job_within_bound(slurm, tmp_path):
    env = dict(os.environ, PYTHONPATH=str(REPO))
    driver = subprocess.Popen([sys.executable, "-c", DASK_DRIVER], env=env, cwd=tmp_path)
    deadline = time.monotonic() + 60
    while len(jobs := _dask_jobs()) < 2:
        assert driver.poll() is None and time.monotonic() < deadline, "no worker job submitted"
        time.sleep(0.25)
    ids, names = [j for j, _ in jobs], {n for _, n in jobs}
    assert len(names) == 1
    seconds = _kill_and_time(driver, ids, names.pop(), [])
    _record("driver_death_dask", seconds)
    assert seconds < BOUND


def _dask_jobs() -> list[tuple[str, str]]:
    out = subprocess.run(
        ["squeue", "-h", "-o", "%i %j"], capture_output=True, text=True, check=True
    ).stdout
    return [
        tuple(line.split())
        for line in out.splitlines()
        if line.split()[1].startswith("lhccnn-dask")
    ]
