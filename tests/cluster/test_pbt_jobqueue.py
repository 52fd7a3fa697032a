"""PBT from the command line on Dask workers that are SLURM jobs (dask-jobqueue), mini SLURM."""

import json
import signal
import subprocess
import sys
import time

import pytest

from lhccnn.jobqueue import SlurmDask
from lhccnn.pbt import PBT


def _pbt_cli(root, data, *extra):
    return [
        sys.executable,
        "-m",
        "lhccnn.cli",
        "pbt",
        str(root),
        "--workers",
        "2",
        "--memory",
        "1GiB",
        "--wait",
        "120",
        "--population",
        "3",
        "--generations",
        "3",
        "--n-train",
        "512",
        "--n-val",
        "256",
        "--data",
        str(data),
        *extra,
    ]


def _dask_jobs(env) -> list[str]:
    # each SlurmDask names its jobs lhccnn-dask-<random>, so that one run's cancel spares another's
    out = subprocess.run(
        ["squeue", "-h", "-o", "%i %j %T"], env=env, capture_output=True, text=True, check=True
    ).stdout
    return [line for line in out.splitlines() if line.split()[1].startswith("lhccnn-dask-")]


def _as_in_a_terminal():
    # Ctrl-C in a terminal reaches a process whose SIGINT is not ignored; a test suite started in
    # the background (`make test &`) has it ignored, and Python then never raises
    # KeyboardInterrupt, so the run would not see the Ctrl-C this test sends
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _finished(record) -> bool:
    try:
        return bool(json.loads(record.read_text()).get("finished"))
    except FileNotFoundError:  # not written yet (it is written atomically)
        return False


def test_interrupted_run_cancels_its_worker_jobs_and_resumes(slurm, tiny_data, tmp_path):
    root = tmp_path / "run"
    args = _pbt_cli(root, tiny_data)
    p = subprocess.Popen(
        args,
        env=slurm,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        preexec_fn=_as_in_a_terminal,
    )
    deadline = time.monotonic() + 300
    while not _finished(root / "generations" / "g000.json"):
        assert p.poll() is None, (
            f"the run ended before generation 0 finished:\n{p.communicate()[0]}"
        )
        assert time.monotonic() < deadline, "generation 0 did not finish in 300 s"
        time.sleep(0.5)
    assert len(_dask_jobs(slurm)) == 2
    p.send_signal(signal.SIGINT)
    out = p.communicate(timeout=120)[0]
    assert p.returncode == 130, out
    assert "generation 0: best val_loss" in out and "Run the same command again to resume" in out
    assert _dask_jobs(slurm) == [], "worker jobs left after Ctrl-C"
    gen0 = PBT(root).members(0)
    before = {t: PBT(root).store.status(t) for t in gen0}

    again = subprocess.run(args, env=slurm, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "generation 0 " not in again.stdout  # resumed after it, not rerun
    assert "best val_loss" in again.stdout and _dask_jobs(slurm) == []
    run = PBT(root)
    assert run.finished_generations() == 3
    assert {t: run.store.status(t) for t in gen0} == before
    statuses = [run.store.status(t) for g in range(3) for t in run.members(g)]
    assert all(st["status"] == "completed" for st in statuses)
    assert len({st["engine"] for st in statuses}) >= 2  # members spread over the worker jobs
    assert any((root / "dask-logs").glob("*.err"))  # the workers' own logs, beside the store


def test_a_job_slurm_would_refuse_is_reported_before_submitting(slurm, tiny_data, tmp_path):
    out = subprocess.run(
        _pbt_cli(tmp_path / "run", tiny_data, "--sbatch", "-C nosuchfeature"),
        env=slurm,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 1, out.stdout + out.stderr
    assert "SLURM refuses the Dask worker's job" in out.stderr
    assert "nosuchfeature" in out.stderr and "#SBATCH" in out.stderr  # the job script is shown
    assert _dask_jobs(slurm) == []
    # the store was made; the same root with other settings is refused, naming what differs
    other = subprocess.run(
        _pbt_cli(tmp_path / "run", tiny_data, "--survivors", "0.25"),
        env=slurm,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert other.returncode == 1 and "already holds a PBT run with another config" in other.stderr


@pytest.mark.parametrize(
    "bad, code, message",
    [
        (("--workers", "0"), 2, "argument --workers: must be an integer >= 1, got '0'"),
        (("--memory", "lots"), 2, "argument --memory: must be a size like 4GiB"),
        (("--survivors", "2"), 1, "survivors must be a fraction in (0, 1)"),
        (("--data", "nowhere"), 1, "nowhere/train.h5: no such file"),
    ],
)
def test_bad_command_line_values_are_refused_before_anything_starts(
    bad, code, message, tiny_data, tmp_path
):
    out = subprocess.run(
        _pbt_cli(tmp_path / "run", tiny_data, *bad),  # the later option wins
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert out.returncode == code and message in out.stderr, out.stdout + out.stderr
    assert not (tmp_path / "run" / "pbt.json").exists()  # no store made from a refused command


@pytest.mark.parametrize(
    "kwargs, message",
    [({"workers": 0}, "workers"), ({"threads": 1.5}, "threads"), ({"wait": 0}, "wait")],
)
def test_bad_worker_requests_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SlurmDask(**kwargs)
