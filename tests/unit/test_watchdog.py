"""The watchdog tells a dead or reused pid from its driver, and tears down what it was given."""

import subprocess
import time

from lhccnn.watchdog import Watchdog, identity, same_process


def _wait_for(condition, timeout: float = 15.0) -> float:
    t0 = time.monotonic()
    while not condition():
        assert time.monotonic() - t0 < timeout, "not within the time allowed"
        time.sleep(0.1)
    return time.monotonic() - t0


def test_a_reused_pid_is_not_the_recorded_process():
    p = subprocess.Popen(["sleep", "30"])
    try:
        ident = identity(p.pid)
        assert same_process(ident)
        assert not same_process({**ident, "start": ident["start"] - 5})  # same pid, other process
    finally:
        p.kill()
        p.wait()
    assert not same_process(ident) and identity(p.pid) is None


def test_a_dead_driver_gets_its_processes_killed_and_files_removed(tmp_path):
    driver = subprocess.Popen(["sleep", "60"])
    engine = subprocess.Popen(["sleep", "60"])
    secret = tmp_path / "cluster.json"
    secret.write_text("{}")
    dog = Watchdog.start(
        tmp_path / "wd.json", driver_pid=driver.pid, processes=[engine.pid], paths=[secret]
    )
    try:
        time.sleep(1.5)
        assert engine.poll() is None and secret.exists(), "torn down while the driver lives"
        driver.kill()
        driver.wait()
        _wait_for(lambda: engine.poll() is not None and not secret.exists())
        _wait_for(lambda: dog.proc.poll() is not None)
        assert dog.proc.returncode == 0
    finally:
        for p in (driver, engine):
            p.kill()
            p.wait()
        dog.stop()


def test_a_clean_stop_ends_the_watchdog_without_a_teardown(tmp_path):
    engine = subprocess.Popen(["sleep", "60"])
    secret = tmp_path / "cluster.json"
    secret.write_text("{}")
    dog = Watchdog.start(tmp_path / "wd.json", processes=[engine.pid], paths=[secret])
    try:
        dog.stop()
        assert dog.proc.poll() is not None
        assert engine.poll() is None and secret.exists()
        assert not (tmp_path / "wd.json").exists()
    finally:
        engine.kill()
        engine.wait()
