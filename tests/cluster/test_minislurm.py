"""The mini SLURM cluster: multi-node srun, sbatch to completion, clean stop."""

import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lhccnn.cluster import ClusterSpec, _launch_line
from lhccnn.slurm import SlurmError, wait_job

REPO = Path(__file__).resolve().parents[2]
MINISLURM = REPO / "recipes" / "minislurm" / "minislurm.sh"


def test_srun_spans_two_nodes(slurm):
    out = subprocess.run(
        ["srun", "-N2", "-n2", "bash", "-c", "echo $SLURMD_NODENAME"],
        env=slurm,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    assert len(set(out.split())) == 2, out  # two different virtual nodes


def test_sbatch_job_completes_and_failure_is_reported(slurm, tmp_path):
    ok = tmp_path / "ok.sh"
    ok.write_text("#!/bin/bash\nsrun -N2 -n2 hostname\n")
    jid = subprocess.run(
        ["sbatch", "--parsable", "-N2", "-o", str(tmp_path / "ok.out"), str(ok)],
        env=slurm,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert wait_job(jid, timeout=60, stream=open(os.devnull, "w")) == "COMPLETED"
    assert len((tmp_path / "ok.out").read_text().split()) == 2

    bad = tmp_path / "bad.sh"
    bad.write_text("#!/bin/bash\necho about to fail\nexit 3\n")
    jid = subprocess.run(
        ["sbatch", "--parsable", "-o", str(tmp_path / "bad.out"), str(bad)],
        env=slurm,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    with pytest.raises(SlurmError, match=r"FAILED \(exit code 3:0"):
        wait_job(jid, timeout=60, stream=open(os.devnull, "w"))


def test_batch_recipe_trains_with_horovod_on_two_nodes(slurm, tiny_data, tmp_path):
    env = dict(
        slurm,
        LHCCNN_LAUNCHER="mpirun",
        LHCCNN_RESULTS=str(tmp_path),
        PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}",
    )
    recipe = REPO / "recipes" / "nersc" / "train_horovod.sbatch"
    jid = subprocess.run(
        [
            "sbatch",
            "--parsable",
            "-N2",
            "--ntasks-per-node=1",
            "-o",
            str(tmp_path / "job.out"),
            str(recipe),
            "--smoke",
            "--data",
            str(tiny_data),
            "--n-test",
            "256",
            "--verbose",
            "0",
        ],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        cwd=tmp_path,
    ).stdout.strip()
    wait_job(jid, timeout=300, stream=open(os.devnull, "w"))
    metrics = json.loads((tmp_path / f"train-{jid}" / "metrics.json").read_text())
    assert metrics["size"] == 2
    assert metrics["test"]["auc"] > 0.6
    nodes = subprocess.run(
        ["scontrol", "show", "job", jid], env=slurm, capture_output=True, text=True
    ).stdout
    assert "NodeList=node[1-2]" in nodes or "NumNodes=2" in nodes


def test_rank_killed_under_srun_ends_the_mpi_job_step_promptly(slurm):
    # Engines as one MPI job under srun (NERSC): the launch line of lhccnn's engines. Two ranks
    # on ONE virtual node (srun's PMIx breaks across the mini SLURM's nodes); rank 1 dies hard,
    # rank 0 would sleep on, as a Horovod rank waits in an allreduce for a peer that is gone.
    launch = shlex.split(_launch_line(ClusterSpec(mpi=True, launcher="srun")))
    name = f"bad-exit-{os.getpid()}"
    script = '[ "$SLURM_PROCID" = 1 ] && kill -9 $$; exec sleep 120'
    t0 = time.monotonic()
    p = subprocess.Popen(
        [*launch, "-J", name, "-N1", "-n2", "bash", "-c", script],
        env=slurm,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        out = p.communicate(timeout=45)[0]
    except subprocess.TimeoutExpired:
        p.kill()
        subprocess.run(["scancel", f"--name={name}"], env=slurm)
        pytest.fail("the job step still runs 45 s after one of its ranks died")
    assert p.returncode != 0, out
    while subprocess.run(
        ["squeue", "-h", "-n", name, "-o", "%i"], env=slurm, capture_output=True, text=True
    ).stdout.strip():  # and the job itself leaves the queue
        assert time.monotonic() - t0 < 30, "the job is still in the queue 30 s after it started"
        time.sleep(0.2)
    print(f"job gone {time.monotonic() - t0:.1f} s after srun started (rank 1 killed at once)")


@pytest.mark.parametrize("recipe", ["start_cluster.sh", "train_horovod.sbatch"])
def test_recipes_launch_mpi_ranks_with_kill_on_bad_exit(recipe):
    text = (REPO / "recipes" / "nersc" / recipe).read_text()
    launches = [line for line in text.splitlines() if "launch=(srun" in line]
    assert launches and all("--kill-on-bad-exit=1" in line for line in launches)


def test_second_cluster_starts_and_stops_leaving_no_daemon(tmp_path, slurm_cluster):
    # A separate cluster (own state, ports 100 above the shared one's) so the shared one keeps
    # serving other tests, also when that one already runs on non-default ports.
    ctld = int(os.environ.get("MINISLURM_CTLD_PORT", 16817)) + 100
    node = int(os.environ.get("MINISLURM_NODE_PORT", 17001)) + 100
    env = dict(
        os.environ,
        MINISLURM_STATE=str(tmp_path / "ms"),
        MINISLURM_NODES="2",
        MINISLURM_CTLD_PORT=str(ctld),
        MINISLURM_NODE_PORT=str(node),
    )
    env["SLURM_CONF"] = str(tmp_path / "ms" / "slurm.conf")
    subprocess.run([MINISLURM, "start"], env=env, check=True, timeout=90)
    subprocess.run([MINISLURM, "start"], env=env, check=True, timeout=30)  # idempotent
    out = subprocess.run(
        ["srun", "-N2", "hostname"], env=env, capture_output=True, text=True, timeout=60, check=True
    ).stdout
    assert len(out.split()) == 2
    pids = [int(f.read_text()) for f in (tmp_path / "ms").glob("slurm*.pid")]
    assert len(pids) == 3  # slurmctld + 2 slurmd
    # a running job: stop cancels it and waits for its processes to end before the daemons
    marker = tmp_path / "job-pid"
    subprocess.run(
        ["sbatch", "-o", "/dev/null", "--wrap", f"echo $$ > {marker}; exec sleep 300"],
        env=env,
        check=True,
        capture_output=True,
    )
    for _ in range(100):
        if marker.exists() and marker.read_text().strip():
            break
        time.sleep(0.1)
    sleeper = [int(marker.read_text())]
    assert _alive(sleeper[0]), "the job did not start"
    # and a job of the shared cluster, whose slurmstepd this stop must leave alone
    shared = tmp_path / "shared-pid"
    shared_job = subprocess.run(
        [
            "sbatch",
            "--parsable",
            "-o",
            "/dev/null",
            "--wrap",
            f"echo $$ > {shared}; exec sleep 300",
        ],
        env=slurm_cluster,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    for _ in range(100):
        if shared.exists() and shared.read_text().strip():
            break
        time.sleep(0.1)
    stepd = _ppid(int(shared.read_text()))
    subprocess.run([MINISLURM, "stop"], env=env, check=True, timeout=60)
    alive = [pid for pid in pids + sleeper if _alive(pid)]
    assert not alive, f"daemons or job processes still running after stop: {alive}"
    try:
        assert _alive(stepd), "stopping one mini SLURM killed another one's job step"
    finally:
        subprocess.run(["scancel", shared_job], env=slurm_cluster)
    assert subprocess.run([MINISLURM, "status"], env=env, capture_output=True).returncode == 3


def test_stop_does_not_signal_an_unrelated_process_named_by_a_stale_pid_file(tmp_path):
    # After a container restart the pid in a pid file may belong to anything: here a `sleep`.
    state = tmp_path / "ms"
    state.mkdir()
    other = subprocess.Popen(["sleep", "60"])
    try:
        (state / "slurmd.node1.pid").write_text(f"{other.pid}\n")
        (state / "slurmctld.pid").write_text(f"{other.pid}\n")
        (state / "slurmctld.pid.id").write_text("slurmctld 12345\n")  # recorded: not this one
        env = dict(os.environ, MINISLURM_STATE=str(state))
        out = subprocess.run(
            [MINISLURM, "stop"], env=env, capture_output=True, text=True, timeout=30
        )
        assert out.returncode == 0, out.stderr
        assert other.poll() is None, "stop signalled an unrelated process"
        assert "not signalled" in out.stderr
        assert subprocess.run([MINISLURM, "status"], env=env, capture_output=True).returncode == 3
    finally:
        other.kill()
        other.wait()


def _ppid(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie still answers kill(0); count it as gone
    return "Z" not in Path(f"/proc/{pid}/stat").read_text().split()[2]
