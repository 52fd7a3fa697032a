"""Faults: scancel/squeue/scontrol that fail or hang do not make "nothing left" a false claim."""

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from lhccnn import slurm as slurm_cli
from lhccnn.cluster import Cluster, ClusterError, ClusterSpec

# A stand-in for a SLURM client on a busy cluster: the first FAILS calls fail like a socket
# time-out (or hang, with HANG set), later ones run the real command.
FAKE = """#!/bin/bash
count={dir}/{name}.count
n=$(cat "$count" 2>/dev/null || echo 0); echo $((n + 1)) > "$count"
if ((n < $(cat {dir}/{name}.fails))); then
  [[ -f {dir}/{name}.hang ]] && exec sleep 30   # exec: a time-out kills the whole call
  echo "{name}: error: Socket timed out on send/recv operation" >&2; exit 1
fi
exec {real} "$@"
"""


class FlakySlurm:
    """Fake scancel/squeue/scontrol first on PATH, each failing its next `fails` calls."""

    def __init__(self, bin_dir: Path, monkeypatch):
        self.dir = bin_dir
        self.real = {name: shutil.which(name) for name in ("scancel", "squeue", "scontrol")}
        bin_dir.mkdir()
        for name, real in self.real.items():
            (bin_dir / name).write_text(FAKE.format(dir=bin_dir, name=name, real=real))
            (bin_dir / name).chmod(0o755)
            self.fail(name, 0)
        monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")

    def fail(self, name: str, times: int, hang: bool = False) -> None:
        (self.dir / f"{name}.fails").write_text(str(times))
        (self.dir / f"{name}.count").write_text("0")
        (self.dir / f"{name}.hang").unlink(missing_ok=True)
        if hang:
            (self.dir / f"{name}.hang").touch()

    def calls(self, name: str) -> int:
        return int((self.dir / f"{name}.count").read_text())


@pytest.fixture
def flaky(tmp_path, monkeypatch):
    return FlakySlurm(tmp_path / "bin", monkeypatch)


def _sleeper(tmp_path) -> str:
    return subprocess.run(
        ["sbatch", "--parsable", "-o", str(tmp_path / "job.out"), "--wrap", "sleep 300"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()


def _listed(flaky, job: str) -> bool:
    out = subprocess.run(
        [flaky.real["squeue"], "-h", "-o", "%i"], capture_output=True, text=True, check=True
    ).stdout
    return job in out.split()


def test_cancel_retries_failing_scancel_and_hanging_squeue_until_slurm_confirms(
    slurm, flaky, tmp_path
):
    job = _sleeper(tmp_path)
    flaky.fail("scancel", 2)
    flaky.fail("squeue", 2, hang=True)
    slurm_cli.cancel([job], timeout=30, call_timeout=1, poll=0.2)
    assert flaky.calls("scancel") >= 3 and flaky.calls("squeue") >= 3
    assert not _listed(flaky, job)


def test_cancel_that_slurm_never_confirms_says_so_and_a_later_one_empties_the_queue(
    slurm, flaky, tmp_path
):
    job = _sleeper(tmp_path)
    flaky.fail("scancel", 1000)
    flaky.fail("squeue", 1000)
    with pytest.raises(
        slurm_cli.SlurmError, match=rf"could not confirm that jobs {job} left the queue"
    ):
        slurm_cli.cancel([job], timeout=3, call_timeout=1)
    assert _listed(flaky, job)  # and it really is still there: the message was true

    flaky.fail("squeue", 0)  # squeue answers, scancel still fails: say what is left
    with pytest.raises(
        slurm_cli.SlurmError, match=rf"still in the queue 3 s after scancel: {job} RUNNING"
    ):
        slurm_cli.cancel([job], timeout=3, call_timeout=1)

    flaky.fail("scancel", 0)
    slurm_cli.cancel([job], timeout=30)
    assert not _listed(flaky, job)


def test_timed_out_slurm_command_is_a_slurm_error(flaky):
    flaky.fail("squeue", 1, hang=True)
    with pytest.raises(slurm_cli.SlurmError, match="did not answer within 1 s"):
        slurm_cli.run("squeue", timeout=1)


def test_failed_stop_is_truthful_and_a_second_stop_cancels_the_job(slurm, flaky):
    cluster = Cluster.start(ClusterSpec(nodes=1, wait=60))
    job = cluster.job_id
    try:
        for name in ("scancel", "squeue", "scontrol"):  # scontrol's error once read as "gone"
            flaky.fail(name, 1000)
        with pytest.raises(
            ClusterError, match=rf"engines' job {job} may still hold its allocation"
        ):
            cluster.stop(timeout=3)
        assert not cluster.stopped and _listed(flaky, job)
        for name in ("scancel", "squeue", "scontrol"):
            flaky.fail(name, 0)
        cluster.stop()
        assert cluster.stopped and not _listed(flaky, job)
        assert cluster._watchdog.proc.poll() is not None, "a clean stop ends the watchdog"
    finally:
        if not cluster.stopped:
            subprocess.run([flaky.real["scancel"], job])


def test_an_error_leaving_the_with_block_is_not_replaced_by_a_failed_stop(slurm, flaky):
    with pytest.raises(KeyError):  # the user's error, not the ClusterError of the stop
        with Cluster.start(ClusterSpec(nodes=1, wait=60)) as cluster:
            for name in ("scancel", "squeue", "scontrol"):
                flaky.fail(name, 1000)
            cluster.stop_timeout = 3
            raise KeyError("the user's own error")
    assert not cluster.stopped
    for name in ("scancel", "squeue", "scontrol"):
        flaky.fail(name, 0)
    cluster.stop()
    assert not _listed(flaky, cluster.job_id)


def test_cancel_without_slurm_installed_fails_at_once(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    t0 = time.monotonic()
    with pytest.raises(slurm_cli.SlurmError, match="scancel not found"):
        slurm_cli.cancel(["1"], timeout=30)
    assert time.monotonic() - t0 < 1
