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

# long enough (40 epochs) that the signal always finds the search going
TINY = ["--seeds", "0", "--population", "2", "--generations", "20", "--n-train", "256"]


@pytest.mark.parametrize(
    "method,moment",
    [("ray_pbt", "starting"), ("ray_pbt", "training"), ("optuna_tpe", "training")],
)
def test_sigterm_leaves_no_process_behind(method, moment, tmp_path):
    """`starting`: as soon as the run has a child (Ray's GCS and raylet come up inside
    `ray.init`); `training`: once an epoch has been trained, every worker is up."""
    cmd = [sys.executable, "-m", "lhccnn.peers", "--methods", method, *TINY, "--n-val", "128"]
    run = subprocess.Popen(
        [*cmd, "--out", str(tmp_path)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # its own group, as a batch job's step would be
    )
    parent, started = psutil.Process(run.pid), []
    epochs = tmp_path / "seed0" / method / "ledger" / "epochs.jsonl"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and run.poll() is None:
        started = parent.children(recursive=True)
        if started and (moment == "starting" or epochs.exists()):
            break
        time.sleep(0.2)
    assert run.poll() is None and started, "the run ended or never started its workers"
    if moment == "training":
        time.sleep(1)
        started = parent.children(recursive=True)
    run.send_signal(signal.SIGTERM)
    # an exit, not a death by the signal, so the `finally` blocks run: 143 from lhccnn's
    # handler, 15 from the one Ray's driver installs, 1 from its node's (which stops the node's
    # processes, then raises SystemExit(1))
    assert run.wait(timeout=120) in (128 + signal.SIGTERM, signal.SIGTERM, 1)
    _, alive = psutil.wait_procs(started, timeout=30)
    assert not alive, [" ".join(p.cmdline())[:120] for p in alive]
