"""The built image, run for real (podman/buildah, no daemon): its files, its entrypoint, its mini
SLURM with srun, Horovod, the unit tier and the notebook smoke runs inside, nothing left here.

Runs only under `make container-test` (which builds the image first and sets LHCCNN_CONTAINER=1);
skipped in `make test`, where it would add the image's whole run."""

import os
import re
import subprocess
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
CONTAINER = REPO / "recipes" / "minislurm" / "container.sh"
IMAGE = os.environ.get("LHCCNN_IMAGE", "lhccnn")
# what runs inside by default: enough to prove the image works, within CI's budget (README)
INSIDE = os.environ.get(
    "LHCCNN_CONTAINER_TESTS",
    "tests/unit "
    "tests/notebooks/test_notebooks.py::test_01_cluster_startup "
    "tests/cluster/test_minislurm.py tests/cluster/test_horovod.py",
).split()

if os.environ.get("LHCCNN_CONTAINER") != "1":
    pytest.skip("the built image's tests run under `make container-test`", allow_module_level=True)
if subprocess.run(["podman", "image", "exists", IMAGE]).returncode != 0:
    pytest.fail(f"no image '{IMAGE}': `make container` builds it", pytrace=False)


def _root(pid) -> str | None:
    try:
        st = os.stat(f"/proc/{pid}/root/")
    except OSError:  # gone meanwhile
        return None
    return f"{st.st_dev}:{st.st_ino}"


def _foreign() -> dict[int, str]:
    """Processes whose root is not this host's: a container's, as chroot isolation leaves them."""
    ours = _root("self")
    found = {}
    for p in Path("/proc").iterdir():
        if p.name.isdigit() and _root(p.name) not in (ours, None):
            try:
                found[int(p.name)] = (p / "comm").read_text().strip()
            except OSError:
                pass
    return found


def ct_run(*cmd, timeout=300):
    """`container.sh run CMD`; afterwards no process of the container may be left on the host."""
    before = _foreign()
    out = subprocess.run(
        [str(CONTAINER), "run", *cmd], capture_output=True, text=True, timeout=timeout
    )
    left = {pid: comm for pid, comm in _foreign().items() if pid not in before}
    assert not left, f"processes of the container left on the host: {left}\n{out.stderr[-3000:]}"
    return out


@pytest.fixture
def mounted():
    """The image's files, in a container mounted here (removed afterwards)."""
    c = subprocess.run(
        ["buildah", "from", "--pull=false", "-q", IMAGE], capture_output=True, text=True, check=True
    ).stdout.strip()
    try:
        yield Path(
            subprocess.run(
                ["buildah", "mount", c], capture_output=True, text=True, check=True
            ).stdout.strip()
        )
    finally:
        subprocess.run(["buildah", "umount", c], capture_output=True)
        subprocess.run(["buildah", "rm", c], capture_output=True)


def test_image_holds_no_host_venv_or_cluster_state(mounted):
    app = mounted / "lhccnn"
    assert (app / "lhccnn" / "train.py").exists() and (app / "data" / "synthetic").is_dir()
    for name in (
        ".git",
        ".minislurm",
        "results",
        ".pytest_cache",
        ".hypothesis",
        "_build",
        "book/notebooks",
    ):
        assert not (app / name).exists(), (
            f"the image holds the build context's {name} (.dockerignore)"
        )
    # The image makes its own .venv before `COPY . .`: a host's copied over it would name the
    # host's path in its scripts' first line instead of /lhccnn/.venv.
    scripts = [f for f in (app / ".venv" / "bin").iterdir() if f.is_file() and not f.is_symlink()]
    shebangs = {f.name: f.read_bytes()[:200].split(b"\n")[0] for f in scripts}
    shebangs = {k: v for k, v in shebangs.items() if v.startswith(b"#!")}
    assert len(shebangs) > 20, sorted(shebangs)
    foreign = {k: v for k, v in shebangs.items() if not v.startswith(b"#!/lhccnn/.venv/bin/python")}
    assert not foreign, f"venv scripts not made in the image: {foreign}"
    assert not list(app.rglob("*.pid")), "pid files in the image: a cluster's state was copied in"


def test_make_inside_the_image_finds_its_environment_current():
    # The environment's layer is cached by the content of the files it copies, but make compares
    # times: a fresh clone's files are newer than a cached layer's stamps, and make would then
    # reinstall at every call inside, without the build's proxy CA (CI: pip's SSL errors).
    out = ct_run("/usr/bin/make", "-q", ".venv/.installed", ".venv/.peers")
    assert out.returncode == 0, "make inside the image would reinstall the environment"


def test_entrypoint_exits_with_the_commands_status_and_stops_its_cluster():
    out = ct_run("/bin/bash", "-c", 'sinfo -h -o %D; echo "conf=$SLURM_CONF"; exit 7')
    assert out.returncode == 7, out.stdout + out.stderr
    assert "conf=/lhccnn/.minislurm/slurm.conf" in out.stdout and out.stdout.split()[0] == "4", (
        out.stdout
    )
    assert "minislurm: stopped" in out.stderr, out.stderr
    assert ct_run("/bin/true").returncode == 0


def test_a_process_left_by_the_container_is_reported_and_ended():
    # the leak check itself: a detached process outlives the command unless container.sh ends it
    out = subprocess.run(
        [str(CONTAINER), "run", "/bin/bash", "-c", "setsid sleep 600 </dev/null >/dev/null 2>&1 &"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 1 and "left on the host" in out.stderr and "sleep" in out.stderr, (
        out.stderr
    )
    time.sleep(0.5)
    assert "sleep" not in _foreign().values()


def _state(job, env, until=None, timeout=30.0) -> str:
    """The job's state in squeue; with `until`, polled until it is that or `timeout` passes."""
    deadline = time.monotonic() + timeout
    while True:
        state = subprocess.run(
            ["squeue", "-h", "-j", job, "-o", "%T"], env=env, capture_output=True, text=True
        ).stdout.strip()
        if until is None or state == until or time.monotonic() > deadline:
            return state
        time.sleep(0.5)


def test_host_cluster_and_its_job_survive_the_containers_cluster(slurm_cluster, tmp_path):
    # the host's mini SLURM (default ports) runs a job while the image's starts and stops its own
    state = Path(os.environ.get("MINISLURM_STATE", REPO / ".minislurm"))
    pids = {f.name: f.read_text().strip() for f in state.glob("*.pid")}
    job = subprocess.run(
        ["sbatch", "--parsable", "-o", "/dev/null", "--wrap", "exec sleep 300"],
        env=slurm_cluster,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    queue = ["squeue", "-h", "-o", "%i"]
    try:
        # the scheduler starts a new job within a few seconds; the container's run may be quicker
        assert _state(job, slurm_cluster, until="RUNNING") == "RUNNING", "the host's job never ran"
        before = subprocess.run(
            queue, env=slurm_cluster, capture_output=True, text=True
        ).stdout.split()
        out = ct_run("/bin/bash", "-c", "srun -N2 -n2 hostname")
        assert out.returncode == 0, out.stdout + out.stderr
        after = subprocess.run(
            queue, env=slurm_cluster, capture_output=True, text=True
        ).stdout.split()
        assert after == before, "the host's queue changed during the container's run"
        job_state = _state(job, slurm_cluster)
        assert job_state == "RUNNING", f"the host's job after the container's run: {job_state!r}"
        for name, pid in pids.items():
            assert Path(f"/proc/{pid}").exists(), f"the host's {name} ({pid}) died"
    finally:
        subprocess.run(["scancel", job], env=slurm_cluster)


def test_inside_the_image_the_mini_slurm_horovod_and_notebooks_pass():
    log = REPO / "results" / "container" / "pytest-inside.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    out = ct_run(
        "/usr/bin/make", "test", f"PYTEST_ARGS={' '.join(INSIDE)} --durations=10", timeout=3600
    )
    log.write_text(out.stdout + out.stderr)
    tail = (out.stdout + out.stderr)[-4000:]
    assert out.returncode == 0, f"inside the image (full log: {log}):\n{tail}"
    # pytest's last line, not any " failed" (pip prints "certificate verify failed")
    summary = re.findall(r"^\d+ (?:passed|failed|error).*$", out.stdout, re.M)
    assert summary and "passed" in summary[-1], tail
    assert not re.search(r"\b(failed|errors?)\b", summary[-1]), tail
    print(f"inside the image: {time.monotonic() - t0:.0f} s: {out.stdout.strip().splitlines()[-1]}")
