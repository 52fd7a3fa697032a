"""`lhccnn peers` ended by SIGTERM (kill, a batch job's time limit) leaves none of the processes
it started: Ray's (raylet, GCS, workers) or Optuna's worker processes."""

import signal
import subprocess
import sys
import time

import psutil
import pytest

pytest.importorskip("ray.tune", reason="the [peers] extra: make peers-env")
pytest.importorskip("optuna", reason="the [peers] extra: make peers-env")

TINY = ["--seeds", "0", "--population", "2", "--generations", "2", "--n-train", "256"]


@pytest.mark.parametrize("method", ["ray_pbt", "optuna_tpe"])
def test_sigterm_leaves_no_process_behind(method, tmp_path):
    cmd = [sys.executable, "-m", "lhccnn.peers", "--methods", method, *TINY, "--n-val", "128"]
    run = subprocess.Popen(
        [*cmd, "--out", str(tmp_path)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # its own group, as a batch job's step would be
    )
    parent, started = psutil.Process(run.pid), []
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and run.poll() is None:
        started = parent.children(recursive=True)
        if len(started) >= 2 and (tmp_path / "seed0" / method / "ledger").exists():
            break  # its workers are up
        time.sleep(0.5)
    assert run.poll() is None and started, "the run ended or never started its workers"
    time.sleep(3)
    started = parent.children(recursive=True)
    run.send_signal(signal.SIGTERM)
    # an exit, not a death by the signal: 143 from lhccnn's handler, 15 from the one Ray installs
    # in its driver (both raise SystemExit, so the `finally` blocks run)
    assert run.wait(timeout=120) in (128 + signal.SIGTERM, signal.SIGTERM)
    _, alive = psutil.wait_procs(started, timeout=30)
    assert not alive, [" ".join(p.cmdline())[:120] for p in alive]
