"""Faults: a killed Horovod rank gives a clear error; a job cancelled from outside is reported,
and ends a running search or PBT run within seconds, naming the job."""

import os
import signal
import subprocess
import threading
import time

import pytest

from lhccnn import slurm as slurm_cli
from lhccnn.cluster import Cluster, ClusterError, ClusterSpec
from lhccnn.config import smoke
from lhccnn.train import train


def test_killed_rank_gives_an_error_within_60s_and_cluster_still_stops(slurm, tiny_data, tmp_path):
    cluster = Cluster.start(ClusterSpec(nodes=2, engines=2, mpi=True, wait=60))
    try:
        pids = cluster.view.apply(os.getpid)
        ar = cluster.view.apply_async(
            train,
            smoke().replace(epochs=200, verbose=0),
            data=tiny_data,
            out_dir=tmp_path / "run",
            use_horovod=True,
        )
        deadline = time.monotonic() + 120
        while not (tmp_path / "run" / "history.json").exists():  # training is under way
            assert time.monotonic() < deadline and not ar.ready(), (
                ar.get() if ar.ready() else "slow"
            )
            time.sleep(0.5)
        os.kill(pids[1], signal.SIGKILL)
        t0 = time.monotonic()
        with pytest.raises(Exception) as err:
            ar.get(timeout=60)
        elapsed = time.monotonic() - t0
        assert elapsed < 60
        assert not isinstance(err.value, TimeoutError), "no error within 60 s: a hang"
        print(f"error after {elapsed:.1f} s: {type(err.value).__name__}: {str(err.value)[:200]}")
    finally:
        seconds = cluster.stop()
    assert seconds < 30
    assert slurm_cli.queue() == []


def test_status_reports_a_job_cancelled_from_another_shell_with_its_id_and_state(slurm):
    cluster = Cluster.start(ClusterSpec(nodes=1, wait=60))
    job = cluster.job_id
    try:
        subprocess.run(["scancel", job], check=True)  # as from another terminal
        deadline = time.monotonic() + 30
        while True:
            t0 = time.monotonic()
            info = cluster.status()
            assert time.monotonic() - t0 < 10, "status() waited on the dead job's engines"
            if info["state"] not in ("RUNNING", "COMPLETING"):
                break
            assert time.monotonic() < deadline, info
            time.sleep(0.5)
        assert info["job_id"] == job and info["state"] == "CANCELLED", info
        assert info["engines"] == []
    finally:
        cluster.stop()
    assert cluster.stopped and job not in slurm_cli.queue()


def test_start_gives_up_on_a_suspended_job_after_its_deadline_and_says_so(slurm, tmp_path):
    # engines that never register (they sleep), in a job suspended while they "start"
    fake_python = tmp_path / "python"
    fake_python.write_text("#!/bin/bash\nexec sleep 300\n")
    fake_python.chmod(0o755)
    spec = ClusterSpec(nodes=1, wait=10, python=str(fake_python))
    result = {}

    def start():
        try:
            result["cluster"] = Cluster.start(spec)
        except Exception as e:
            result["error"] = e

    t0 = time.monotonic()
    starter = threading.Thread(target=start)
    starter.start()
    job = None
    while job is None and time.monotonic() - t0 < 8:
        out = subprocess.run(
            ["squeue", "-h", "-t", "RUNNING", "-o", "%i %j"], capture_output=True, text=True
        ).stdout.split()
        job = next((j for j, n in zip(out[::2], out[1::2]) if n.startswith("ipengine-")), None)
        time.sleep(0.1)
    assert job, "the engines' job did not start"
    subprocess.run(["scontrol", "suspend", job], check=True)
    starter.join(timeout=60)
    assert not starter.is_alive(), "Cluster.start still waiting 60 s after its deadline"
    assert isinstance(result.get("error"), ClusterError), result
    assert f"SLURM job {job} still suspended after 10 s" in str(result["error"])
    assert job not in slurm_cli.queue()  # and the suspended job was cancelled


def _cancel_when(cond, job, timeout=180):
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "the work never started"
        time.sleep(0.1)
    subprocess.run(["scancel", str(job)], check=True)  # from outside, as another shell would
    return time.monotonic()


def test_a_job_cancelled_from_outside_ends_a_running_search_in_seconds_naming_it(
    slurm, tiny_data, tmp_path
):
    from lhccnn.hpo import run_trials
    from lhccnn.store import Store

    store = Store(tmp_path / "study")
    ids = [store.create_trial({"lr": 1e-3}) for _ in range(3)]
    with Cluster.start(ClusterSpec(nodes=2, engines=2, wait=60)) as cluster:
        job = cluster.job_id
        search = threading.Thread(
            target=run_trials,
            daemon=True,
            args=(
                cluster.client.load_balanced_view(),
                store,
                ids,
                smoke().replace(n_train=1024, n_val=256, epochs=200),
            ),
            kwargs={"data": tiny_data, "n_test": 256, "progress": False},
        )
        search.start()
        t0 = _cancel_when(lambda: any(store.metrics(t) for t in ids), job)
        search.join(60)
        assert not search.is_alive(), "the search still waits for a job that is gone"
        print(f"search ended {time.monotonic() - t0:.1f} s after the scancel")
        assert time.monotonic() - t0 < 30
        assert cluster.ended == f"SLURM job {job} ended CANCELLED"
        statuses = [store.status(t) for t in ids]
        assert [st["status"] for st in statuses] == ["failed"] * 3
        assert any(f"SLURM job {job} ended CANCELLED" in st["reason"] for st in statuses)


def test_a_job_cancelled_from_outside_stops_pbt_in_seconds_naming_it(slurm, tiny_data, tmp_path):
    from lhccnn.cluster import AllocationEnded
    from lhccnn.pbt import PBT, PBTConfig

    with Cluster.start(ClusterSpec(nodes=2, engines=2, wait=60)) as cluster:
        job, client = cluster.job_id, cluster.dask()
        pbt = PBT(
            tmp_path / "run",
            smoke().replace(n_train=1024, n_val=256),
            config=PBTConfig(population=3, generations=2, epochs_per_generation=200),
            data=str(tiny_data),
        )
        pbt.start(client)
        t0 = _cancel_when(lambda: any(pbt.store.metrics(t) for t in pbt.store.trial_ids()), job)
        with pytest.raises(AllocationEnded, match=f"SLURM job {job} ended CANCELLED: generation 0"):
            pbt.wait(timeout=60)
        print(f"PBT ended {time.monotonic() - t0:.1f} s after the scancel")
        assert time.monotonic() - t0 < 30
