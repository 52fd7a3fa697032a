"""%ipcluster: start, status and stop on the mini SLURM and locally, and every error path."""

import json
import os
import stat
import subprocess
import time
from pathlib import Path

import pytest
from IPython.core.error import UsageError
from IPython.core.interactiveshell import InteractiveShell

from lhccnn import slurm as slurm_cli
from lhccnn.cluster import Cluster, ClusterError, ClusterSpec


@pytest.fixture
def shell():
    ip = InteractiveShell.instance()
    ip.run_line_magic("load_ext", "lhccnn.magics")
    yield ip
    ip.run_line_magic("ipcluster", "stop")  # whatever a test left running


def test_start_status_stop_on_two_slurm_nodes(shell, slurm, capsys):
    t0 = time.monotonic()
    cluster = shell.run_line_magic(
        "ipcluster", "start -N 2 -n 2 -t 00:10:00 -C cpu -q debug --wait 60"
    )
    assert time.monotonic() - t0 < 60
    assert len(cluster.client.ids) == 2
    assert not list(Path.cwd().glob("*.sbatch"))  # ipyparallel's default: its script in the cwd
    job = cluster.job_id
    assert slurm_cli.job_state(job) == "RUNNING"
    # %px runs on the engines, in the allocation
    shell.run_line_magic("px", "import os; node = os.environ['SLURMD_NODENAME']")
    assert sorted(cluster.view["node"]) == ["node1", "node2"]

    shell.run_line_magic("ipcluster", "status")
    out = capsys.readouterr().out
    assert f"job {job}" in out and "RUNNING" in out and "node[1-2]" in out
    assert out.count("engine ") == 2

    shell.run_line_magic("ipcluster", "stop")
    assert "nothing left in the queue" in capsys.readouterr().out
    assert slurm_cli.job_state(job) in slurm_cli.DONE_STATES
    assert slurm_cli.queue() == []


def test_local_cluster_listens_on_loopback_and_protects_its_keys(shell, capsys):
    cluster = shell.run_line_magic("ipcluster", "start --local -n 2 --wait 60")
    assert len(cluster.client.ids) == 2 and cluster.job_id is None
    security = Path(cluster._ipp.profile_dir, "security")
    files = list(security.glob(f"*{cluster._ipp.cluster_id}*.json"))
    assert files
    for f in files:
        assert stat.S_IMODE(f.stat().st_mode) == 0o600, f
    client_file = [f for f in files if "client" in f.name][0]
    assert json.loads(client_file.read_text())["interface"] == "tcp://127.0.0.1"
    shell.run_line_magic("ipcluster", "stop")
    assert "cluster stopped" in capsys.readouterr().out


@pytest.mark.parametrize(
    "line, message",
    [
        ("", "say what to do"),
        ("frobnicate", "invalid choice"),
        ("start -N 0", "nodes must be >= 1"),
        ("start -N 2 -n 1", "cannot fill 2 nodes"),
        ("start --wait -5", "wait must be > 0"),
        ("start -N two", "invalid int value"),
    ],
)
def test_bad_arguments_show_the_usage(shell, line, message):
    with pytest.raises(UsageError, match=message) as e:
        shell.run_line_magic("ipcluster", line)
    assert "%ipcluster start [-N NODES]" in str(e.value)


def test_request_slurm_rejects_shows_slurms_message(shell, slurm):
    with pytest.raises(UsageError, match="(?i)invalid feature specification"):
        shell.run_line_magic("ipcluster", "start -N 1 -C nosuchfeature --wait 20")
    assert slurm_cli.queue() == []


def test_allocation_still_pending_after_wait_is_cancelled(shell, slurm, tmp_path):
    # occupy every node, so that the cluster's job can only wait
    blocker = subprocess.run(
        ["sbatch", "--parsable", "-N4", "--exclusive", "-o", os.devnull, "--wrap", "sleep 300"],
        env=slurm,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    try:
        t0 = time.monotonic()
        with pytest.raises(UsageError, match=r"still pending after 3 s \(reason: .*\): cancelled"):
            shell.run_line_magic("ipcluster", "start -N 1 --wait 3")
        assert time.monotonic() - t0 < 30
        assert slurm_cli.queue() == [blocker]  # only the blocker: ours was cancelled
    finally:
        subprocess.run(["scancel", blocker], env=slurm)
        for _ in range(100):
            if not slurm_cli.queue():
                break
            time.sleep(0.2)


def test_engines_that_die_at_start_are_reported_with_their_log(slurm, tmp_path):
    fake = tmp_path / "python"
    fake.write_text("#!/bin/sh\necho 'engine crashed: no such module' >&2\nexit 1\n")
    fake.chmod(0o755)
    t0 = time.monotonic()
    with pytest.raises(ClusterError, match="(?s)ended .*engine crashed: no such module"):
        Cluster.start(ClusterSpec(nodes=1, wait=30, python=str(fake)))
    assert time.monotonic() - t0 < 30
    assert slurm_cli.queue() == []


def _kernel_with_a_cluster():
    """A real Jupyter kernel that ran `%ipcluster start -N 1`: (manager, client, SLURM job)."""
    from jupyter_client.manager import start_new_kernel

    km, kc = start_new_kernel(kernel_name="python3")
    outputs = []
    try:
        reply = kc.execute_interactive(
            "%load_ext lhccnn.magics\nc = %ipcluster start -N 1 --wait 60\nprint('JOB', c.job_id)",
            timeout=90,
            output_hook=outputs.append,
        )
        assert reply["content"]["status"] == "ok"
        text = "".join(m["content"].get("text", "") for m in outputs if m["msg_type"] == "stream")
        job = text.split("JOB ")[1].split()[0]
        assert slurm_cli.job_state(job) == "RUNNING"
    except BaseException:
        kc.stop_channels()
        km.shutdown_kernel(now=True)
        raise
    return km, kc, job


def test_kernel_shutdown_stops_the_cluster_and_cancels_the_job(slurm):
    km, kc, job = _kernel_with_a_cluster()
    kc.stop_channels()
    km.shutdown_kernel(now=False)  # a polite shutdown, as JupyterLab's "Shut Down Kernel"
    deadline = time.monotonic() + 30
    while slurm_cli.job_state(job) not in slurm_cli.DONE_STATES:
        assert time.monotonic() < deadline, "the kernel went away but its SLURM job did not"
        time.sleep(0.5)
    assert slurm_cli.queue() == []


def test_kernel_killed_by_a_restart_still_gets_its_job_cancelled(slurm):
    # A restart of a stuck kernel SIGKILLs its whole process group: no atexit handler runs,
    # and the watchdog, in a session of its own, must survive it to cancel the job.
    km, kc, job = _kernel_with_a_cluster()
    try:
        km.restart_kernel(now=True)  # SIGKILL to the kernel's process group, then a new kernel
        t0 = time.monotonic()
        while job in slurm_cli.queue():
            assert time.monotonic() - t0 < 60, "the killed kernel's job is still in the queue"
            time.sleep(0.5)
        print(f"job {job} left the queue {time.monotonic() - t0:.1f} s after the kernel's SIGKILL")
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)
