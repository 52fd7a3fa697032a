"""The NERSC shell recipes: syntax, env.sh, the Jupyter kernel, start_cluster.sh on mini SLURM."""

import json
import os
import re
import signal
import subprocess
import time
import uuid
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
NERSC = REPO / "recipes" / "nersc"
RECIPES = sorted(NERSC.glob("*.sh")) + sorted(NERSC.glob("*.sbatch"))
VENV = REPO / ".venv"


def _clean_env(**extra) -> dict:
    """This environment without the venv, modules, SLURM job or lhccnn settings, plus `extra`."""
    drop = ("LHCCNN_", "SLURM_JOB", "SLURM_NTASKS", "SLURM_NNODES", "BASH_FUNC_", "MODULE", "LMOD")
    env = {k: v for k, v in os.environ.items() if not k.startswith(drop)}
    for k in ("VIRTUAL_ENV", "HDF5_USE_FILE_LOCKING", "OMPI_MCA_mpi_yield_when_idle"):
        env.pop(k, None)
    env["PATH"] = os.pathsep.join(
        p for p in env["PATH"].split(os.pathsep) if not p.startswith(str(VENV))
    )
    env.update(extra)
    return env


def _bash(script: str, **extra) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", "-c", script],
        env=_clean_env(**extra),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=30,
    )


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.name)
def test_recipe_is_valid_bash_with_a_header_and_no_site_paths(recipe):
    subprocess.run(["bash", "-n", str(recipe)], check=True)
    text = recipe.read_text()
    lines = text.splitlines()
    assert len(lines) <= 45, "one screen per recipe"
    assert lines[1].startswith("#"), "a header comment says what it does and how to call it"
    if recipe.name != "env.sh":  # env.sh is sourced: `set -e` would leak into the caller's shell
        assert "set -euo pipefail" in text
        assert os.access(recipe, os.X_OK)
    assert not re.search(r"(?<![\w$}])/(work|tmp|home|global|pscratch)/", text)


def test_env_sh_without_modules_activates_the_venv_and_can_be_sourced_twice():
    if not (VENV / "bin" / "activate").exists():
        pytest.skip("no .venv in this checkout")
    out = _bash(
        "source recipes/nersc/env.sh; source recipes/nersc/env.sh; echo rc=$?;"
        "command -v python; echo $LHCCNN_LAUNCHER $OMPI_MCA_mpi_yield_when_idle "
        "$HDF5_USE_FILE_LOCKING ${LHCCNN_DATA_DIR-unset}"
    )
    assert out.returncode == 0, out.stderr
    assert "modules skipped" in out.stderr
    assert out.stdout.split() == [
        "rc=0",
        str(VENV / "bin" / "python"),
        "srun",
        "1",
        "FALSE",
        "unset",
    ]


def test_env_sh_keeps_settings_and_takes_the_nersc_data_path():
    script = "source recipes/nersc/env.sh; echo $LHCCNN_LAUNCHER $LHCCNN_DATA_DIR"
    out = _bash(script, LHCCNN_LAUNCHER="mpirun", LHCCNN_NERSC_DATA="nersc-data")
    assert out.stdout.split() == ["mpirun", "nersc-data"]
    out = _bash(script, LHCCNN_NERSC_DATA="nersc-data", LHCCNN_DATA_DIR="mine")
    assert out.stdout.split() == ["srun", "mine"]


def test_env_sh_loads_the_tensorflow_module_and_returns_instead_of_exiting():
    fake = 'module() { echo "module $*"; }; '
    out = _bash(fake + "source recipes/nersc/env.sh")
    assert out.stdout.strip() == "module load tensorflow" and "skipped" not in out.stderr
    out = _bash(fake + "source recipes/nersc/env.sh", LHCCNN_TF_MODULE="tensorflow/2.15.0")
    assert out.stdout.strip() == "module load tensorflow/2.15.0"
    # a failing `module load` returns an error but leaves the caller's shell running
    out = _bash("module() { return 1; }; source recipes/nersc/env.sh; echo rc=$? alive")
    assert out.stdout.strip() == "rc=1 alive" and "failed" in out.stderr


def test_install_kernel_points_the_kernel_at_the_helper_which_starts_it(tmp_path, monkeypatch):
    install = [str(NERSC / "install_kernel.sh")]
    for _ in range(2):  # idempotent: the second run replaces the first
        subprocess.run(
            install,
            env=_clean_env(JUPYTER_DATA_DIR=str(tmp_path / "user")),
            check=True,
            capture_output=True,
            timeout=60,
        )
    out = subprocess.run(
        install + ["--prefix", str(tmp_path / "prefix")],
        env=_clean_env(),
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout
    kernels = [
        tmp_path / "user" / "kernels" / "lhccnn",
        tmp_path / "prefix" / "share" / "jupyter" / "kernels" / "lhccnn",
    ]
    assert str(kernels[1]) in out
    for k in kernels:
        spec = json.loads((k / "kernel.json").read_text())
        assert spec["argv"] == [
            str(NERSC.resolve() / "kernel-helper.sh"),
            "-f",
            "{connection_file}",
        ]

    from jupyter_client.manager import KernelManager

    for key in [k for k in os.environ if k.startswith(("LHCCNN_", "HDF5_USE_FILE_LOCKING"))]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "prefix" / "share" / "jupyter"))
    km = KernelManager(kernel_name="lhccnn")
    km.start_kernel()
    try:
        kc = km.client()
        kc.start_channels()
        kc.wait_for_ready(timeout=30)
        seen = []
        hook = lambda msg: seen.append(msg["content"])  # noqa: E731
        kc.execute_interactive(
            "import os; print(os.environ['HDF5_USE_FILE_LOCKING']); 1+1",
            timeout=30,
            output_hook=hook,
        )
        kc.stop_channels()
    finally:
        km.shutdown_kernel(now=True)
    assert {"name": "stdout", "text": "FALSE\n"} in seen  # env.sh ran inside the kernel
    assert any(c.get("data", {}).get("text/plain") == "2" for c in seen)


# Run by start_cluster.sh as its command: both engines up, on two nodes, behind private files.
CHECK = """
import os, stat, ipyparallel as ipp
cid, prof = os.environ["LHCCNN_CLUSTER_ID"], os.environ["LHCCNN_PROFILE_DIR"]
rc = ipp.Client(cluster_id=cid, profile_dir=prof)
nodes = rc[:].apply_sync(lambda: __import__("os").environ["SLURMD_NODENAME"])
assert len(rc.ids) == 2 and len(set(nodes)) == 2, nodes
for kind in ("client", "engine"):
    f = os.path.join(prof, "security", f"ipcontroller-{cid}-{kind}.json")
    assert stat.S_IMODE(os.stat(f).st_mode) == 0o600, oct(os.stat(f).st_mode)
print("engines on", *sorted(nodes))
"""


def _salloc_cluster(
    slurm, tmp_path, *command, launcher="mpirun", wait="60"
) -> subprocess.CompletedProcess:
    name = f"recipes-{uuid.uuid4().hex[:8]}"
    env = _clean_env(
        SLURM_CONF=slurm["SLURM_CONF"],
        LHCCNN_LAUNCHER=launcher,
        LHCCNN_WAIT=wait,
        IPYTHONDIR=str(tmp_path / "ipython"),
    )
    out = subprocess.run(
        [
            "salloc",
            "-J",
            name,
            "-N",
            "2",
            "-n",
            "2",
            "-t",
            "5",
            str(NERSC / "start_cluster.sh"),
            *command,
        ],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=150,
    )
    deadline = time.monotonic() + 30  # let SLURM finish completing the job before the queue check
    while (
        time.monotonic() < deadline
        and subprocess.run(
            ["squeue", "-h", "-n", name], env=env, capture_output=True, text=True
        ).stdout.strip()
    ):
        time.sleep(0.2)
    return out


def _assert_nothing_left(out: subprocess.CompletedProcess) -> None:
    """No live ipcontroller/ipengine of the cluster named in the output (zombies, which init has
    not reaped yet, don't count); kills any it finds, so a failure leaves nothing behind either."""
    cid = re.search(r"(lhccnn-\d+)", out.stdout + out.stderr).group(1)
    found = subprocess.run(
        ["pgrep", "-af", "--", f"cluster-id={cid}( |$)"], capture_output=True, text=True
    ).stdout.splitlines()
    live = []
    for line in found:
        pid = int(line.split()[0])
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z":
            live.append(line)
            os.kill(pid, signal.SIGTERM)
    assert not live, "controller or engines left running:\n" + "\n".join(live)


# srun is what NERSC uses; it works here too, as ipengine needs no PMIx across virtual nodes
@pytest.mark.parametrize("launcher", ["mpirun", "srun"])
def test_start_cluster_runs_a_command_on_engines_of_two_nodes_and_cleans_up(
    slurm, tmp_path, launcher
):
    out = _salloc_cluster(slurm, tmp_path, "python", "-c", CHECK, launcher=launcher)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "engines on node" in out.stdout and "ipp.Client(cluster_id=" in out.stdout
    _assert_nothing_left(out)


def test_start_cluster_returns_the_commands_exit_code(slurm, tmp_path):
    out = _salloc_cluster(slurm, tmp_path, "bash", "-c", "exit 3")
    assert out.returncode == 3, out.stdout + out.stderr
    _assert_nothing_left(out)


def test_start_cluster_fails_cleanly_when_engines_are_late(slurm, tmp_path):
    out = _salloc_cluster(slurm, tmp_path, "true", wait="1")  # registration takes >= 3 s
    assert out.returncode == 1 and "engines not up within 1s" in out.stderr, out.stderr
    _assert_nothing_left(out)


def test_start_cluster_outside_an_allocation_says_so():
    out = subprocess.run(
        [str(NERSC / "start_cluster.sh"), "true"],
        env=_clean_env(),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode != 0 and "inside an allocation" in out.stderr
