"""The control plane is private: Dask on the engines needs this cluster's TLS credentials, which
only the user can read, and nothing listens beyond loopback for local engines."""

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import psutil

INTRUDER = """
import sys
from distributed import Client
from distributed.security import Security

address, marker = sys.argv[1:3]
for kwargs in ({}, {"security": Security.temporary()}):  # no credentials, or someone else's
    for a in (address, address.replace("tls://", "tcp://")):
        try:
            c = Client(a, timeout=5, **kwargs)
            c.submit(open, marker, "w").result()  # code run as the notebook's user
            print("CONNECTED", a)
            sys.exit(1)
        except Exception as e:
            print("refused", a, type(e).__name__)
"""


def test_a_process_without_the_credentials_cannot_run_code_through_the_dask_scheduler(
    local_engines, tmp_path
):
    client = local_engines.dask()
    address = client.scheduler.address
    assert address.startswith("tls://127.0.0.1:")
    assert client.submit(lambda: 41 + 1).result() == 42  # the notebook itself can
    marker = tmp_path / "intruder-was-here"
    out = subprocess.run(
        [sys.executable, "-c", INTRUDER, address, str(marker)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0 and out.stdout.count("refused") == 4, out.stdout + out.stderr
    assert not marker.exists()


def test_credentials_are_private_and_nothing_listens_beyond_loopback(local_engines):
    local_engines.dask()  # started for its key, certificate and listening port
    security, cid = Path(local_engines._ipp.profile_dir, "security"), local_engines._ipp.cluster_id
    files = [*security.glob(f"ipcontroller-{cid}-*.json"), *(security / f"dask-{cid}").glob("*")]
    assert sorted(f.suffix for f in files) == [".json", ".json", ".pem", ".pem"], files
    for f in files:  # IPyParallel's connection files and Dask's key and certificate
        assert stat.S_IMODE(f.stat().st_mode) == 0o600, f
    pids = [os.getpid(), *local_engines.client[:].apply_sync(os.getpid)]
    listening = [
        (p, c.laddr)
        for p in pids
        for c in psutil.Process(p).net_connections("inet")
        if c.status == psutil.CONN_LISTEN
    ]
    assert listening  # the scheduler, its dashboard and the workers do listen...
    assert all(addr.ip in ("127.0.0.1", "::1") for _, addr in listening), (
        listening
    )  # ...on loopback


def test_the_ipyparallel_controller_talks_only_curvezmq(local_engines):
    import json

    security = Path(local_engines._ipp.profile_dir, "security")
    files = sorted(security.glob(f"ipcontroller-{local_engines._ipp.cluster_id}-*.json"))
    assert [f.name.rsplit("-", 1)[1] for f in files] == ["client.json", "engine.json"]
    for f in files:  # the controller's public key: encryption and the right to connect
        info = json.loads(f.read_text())
        assert info["curve_serverkey"] and stat.S_IMODE(f.stat().st_mode) == 0o600, f
    assert local_engines.client[:].apply_sync(abs, -1) == [1, 1]


def _run_in_a_notebook(cell: str, folder: Path):
    """`cell` as a notebook's one cell, run by papermill as `lhccnn notebooks` runs chapters."""
    import nbformat
    import papermill as pm

    from lhccnn.security import private_kernel_manager

    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(cell)])
    nbformat.write(nb, folder / "a.ipynb")
    pm.execute_notebook(
        folder / "a.ipynb",
        folder / "b.ipynb",
        kernel_name="python3",
        progress_bar=False,
        kernel_manager_class=private_kernel_manager(),
    )
    return nbformat.read(folder / "b.ipynb", as_version=4).cells[0]


def test_notebook_runs_kernels_listen_on_private_unix_sockets_not_tcp(tmp_path):
    probe = (
        "import json, os, stat\n"
        "from ipykernel.connect import get_connection_info\n"
        "info = get_connection_info(unpack=True)\n"
        "folder = os.path.dirname(info['ip'])\n"
        "print(json.dumps([info['transport'], oct(stat.S_IMODE(os.stat(folder).st_mode))]))"
    )
    out = _run_in_a_notebook(probe, tmp_path).outputs[0]["text"]
    assert json.loads(out) == ["ipc", "0o700"], out


def test_a_notebook_run_ends_its_kernel_without_interrupting_it(tmp_path):
    """jupyter_client sends SIGINT to a kernel before it asks it to shut down. A kernel that is
    then answering a last request printed "KeyboardInterrupt caught in kernel" into the output
    of `make all`. Papermill shuts a kernel down only after its last cell, so nothing needs the
    interrupt. The cell keeps a handler that records any SIGINT for the kernel's remaining life
    (ipykernel would otherwise put its own back after the cell)."""
    marker = tmp_path / "interrupted"
    cell = (
        "import signal\n"
        "from pathlib import Path\n"
        "kernel = get_ipython().kernel\n"
        "kernel.pre_handler_hook = kernel.post_handler_hook = lambda: None\n"
        f"signal.signal(signal.SIGINT, lambda *_: Path({str(marker)!r}).write_text('SIGINT'))\n"
    )
    _run_in_a_notebook(cell, tmp_path)
    assert not marker.exists(), "the kernel was sent SIGINT when its run ended"
