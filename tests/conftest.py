"""Shared fixtures: a tiny synthetic dataset, the mini SLURM cluster with an empty-queue check,
and benchmark records (results/<name>.json with the machine, targets and figures)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from lhccnn import results
from lhccnn.config import notebook_parameters, notebooks
from lhccnn.security import private_kernel_manager

REPO = Path(__file__).resolve().parents[1]
MINISLURM = REPO / "recipes" / "minislurm" / "minislurm.sh"

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# mpirun refuses to start as root unless told (CI and the container run as root)
os.environ.setdefault("OMPI_ALLOW_RUN_AS_ROOT", "1")
os.environ.setdefault("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
# ranks share the 2 cores here: without yielding, MPI's busy-polling starves TensorFlow
os.environ.setdefault("OMPI_MCA_mpi_yield_when_idle", "1")

TINY = {"train": 2048, "val": 512, "test": 512}
BOOK_CHAPTERS = [p.stem for p in notebooks()]


@pytest.fixture(scope="session")
def write_record():
    """write_record(name, title, targets, figures): results/<name>.json and a table on stdout."""
    return results.write_bench


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    """train/val/test.h5 of the embedded generator, small enough to train on in seconds."""
    from lhccnn.synthetic import write_file

    d = tmp_path_factory.mktemp("data")
    for i, (split, n) in enumerate(TINY.items()):
        write_file(d / f"{split}.h5", n, seed=100 + i, progress=False)
    return d


@pytest.fixture(scope="module")
def local_engines():
    """Two IPyParallel engines on this machine (no SLURM), for one test module."""
    from lhccnn.cluster import Cluster, ClusterSpec

    with Cluster.start(ClusterSpec(local=True, engines=2, wait=60)) as cluster:
        yield cluster


@pytest.fixture(scope="module")
def local_dask(local_engines):
    """A Dask client whose two workers are the module's local engines (become_dask)."""
    return local_engines.dask()


class SmokeRuns:
    """Each notebook executed once per session with papermill (smoke=True) on the mini SLURM:
    the notebook tests check their records, the book tests build the book from the same copies."""

    def __init__(self, root: Path, data: Path):
        self.root, self.data = root, data
        self.notebooks = root / "book" / "notebooks"  # the layout the book expects
        self.results = root / "results"
        self._done: dict = {}

    def __call__(self, name: str) -> Path:
        """The executed copy of notebooks/<name>.ipynb (raises what papermill raised)."""
        import papermill as pm

        if name not in self._done:
            self.notebooks.mkdir(parents=True, exist_ok=True)
            old = os.environ.get("LHCCNN_DATA_DIR")
            os.environ["LHCCNN_DATA_DIR"] = str(self.data)  # the kernel and engines inherit it
            try:
                pm.execute_notebook(
                    REPO / "notebooks" / f"{name}.ipynb",
                    self.notebooks / f"{name}.ipynb",
                    cwd=str(REPO / "notebooks"),
                    kernel_name="python3",
                    parameters=notebook_parameters(name, smoke=True, results_dir=str(self.results)),
                    kernel_manager_class=private_kernel_manager(),
                    progress_bar=False,
                )
                self._done[name] = self.notebooks / f"{name}.ipynb"
            except Exception as e:
                self._done[name] = e
            finally:
                if old is None:
                    os.environ.pop("LHCCNN_DATA_DIR")
                else:
                    os.environ["LHCCNN_DATA_DIR"] = old
        if isinstance(self._done[name], Exception):
            raise self._done[name]
        return self._done[name]

    def record(self, name: str) -> dict:

        self(name)
        return results.read(name, self.results)


@pytest.fixture(scope="session")
def smoke_runs(slurm_cluster, tiny_data, tmp_path_factory) -> SmokeRuns:
    return SmokeRuns(tmp_path_factory.mktemp("smoke_runs"), tiny_data)


@pytest.fixture(scope="session")
def book_html(smoke_runs):
    """Build the book into the smoke runs' folder: the repo's pages + the executed chapters."""
    for name in BOOK_CHAPTERS:
        smoke_runs(name)
    root = smoke_runs.root
    for f in ("_config.yml", "_toc.yml"):
        shutil.copy(REPO / f, root / f)
    shutil.copytree(
        REPO / "book",
        root / "book",
        ignore=shutil.ignore_patterns("notebooks", "_build"),
        dirs_exist_ok=True,
    )
    if not (root / "lhccnn").exists():  # the chapters include functions' source from the package
        (root / "lhccnn").symlink_to(REPO / "lhccnn")
    env = {**os.environ, "LHCCNN_RESULTS": str(smoke_runs.results)}  # the benchmarks page reads it
    jb = Path(sys.executable).with_name("jupyter-book")
    out = subprocess.run(
        [str(jb), "build", str(root), "--warningiserror", "--nitpick", "--keep-going"],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    return root / "_build" / "html", out


def _slurm_env() -> dict:
    env = dict(os.environ)
    env.setdefault("SLURM_CONF", str(REPO / ".minislurm" / "slurm.conf"))
    env.setdefault("LHCCNN_LAUNCHER", "mpirun")  # what `minislurm.sh env` says for this cluster
    return env


@pytest.fixture(scope="session")
def slurm_cluster():
    """The mini SLURM cluster: started if it is not running, stopped again if we started it."""
    if shutil.which("slurmctld") is None:
        pytest.fail("SLURM is not installed: run `make system` (Debian slurm-wlm, munge)")
    env = _slurm_env()
    was_up = subprocess.run([MINISLURM, "status"], env=env, capture_output=True).returncode == 0
    subprocess.run([MINISLURM, "start"], env=env, check=True)
    os.environ["SLURM_CONF"] = env["SLURM_CONF"]
    os.environ["LHCCNN_LAUNCHER"] = env["LHCCNN_LAUNCHER"]
    yield env
    if not was_up:
        subprocess.run([MINISLURM, "stop"], env=env, check=True)


def _queue(env) -> dict[str, str]:
    out = subprocess.run(
        ["squeue", "-h", "-o", "%i %j %T"], env=env, capture_output=True, text=True
    ).stdout
    return {line.split()[0]: line for line in out.splitlines() if line.strip()}


@pytest.fixture
def slurm(slurm_cluster):
    """Per test: the cluster's environment; afterwards the queue must hold no job of the test's."""
    before = _queue(slurm_cluster)
    yield slurm_cluster
    left = {j: line for j, line in _queue(slurm_cluster).items() if j not in before}
    if left:
        subprocess.run(["scancel", *left], env=slurm_cluster)  # only the test's own jobs
        pytest.fail("jobs left in the SLURM queue after the test:\n" + "\n".join(left.values()))


def pytest_runtest_makereport(item, call):
    """On a failing SLURM test, dump sinfo/squeue and the daemon logs' tails to help debugging."""
    if call.when == "call" and call.excinfo is not None and "slurm" in item.fixturenames:
        env = _slurm_env()
        for cmd in (["sinfo", "-N"], ["squeue"]):
            out = subprocess.run(cmd, env=env, capture_output=True, text=True)
            item.add_report_section("call", " ".join(cmd), out.stdout + out.stderr)
        state = Path(
            os.environ.get("MINISLURM_STATE", REPO / ".minislurm")
        )  # where minislurm.sh keeps it
        for log in sorted((state / "log").glob("*.log")):
            item.add_report_section("call", log.name, "\n".join(log.read_text().splitlines()[-15:]))
