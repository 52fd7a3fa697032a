"""A private control plane: Dask's TLS credentials only this user can read; kernels on sockets."""

from __future__ import annotations

import functools
import os
import socket
import stat
from pathlib import Path


def write_private(path: Path, text: str) -> Path:
    """Create `path` readable and writable by its owner only (0600) before anything is in it."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(path, 0o600)  # an existing file keeps its mode through O_CREAT
    return path


def check_private(path) -> Path:
    """Refuse a credentials file or folder that others than its owner can read or write."""
    path = Path(path)
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        raise PermissionError(
            f"{path} is mode {mode:o}: other users could read the cluster's "
            "credentials; it must be readable by its owner only"
        )
    return path


def dask_tls(directory):
    """Credentials for one Dask cluster: a fresh self-signed key and certificate (distributed's
    `Security.temporary`), written as files in `directory` (0700; files 0600) and used by the
    scheduler, its workers and the client alike, with encryption required. Workers started
    elsewhere (engines, SLURM jobs on a shared filesystem) read them by path, so no key
    travels on a command line or over the network; a process without them cannot connect."""
    from distributed.security import Security

    d = Path(directory)
    d.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(d, 0o700)
    tmp = Security.temporary()
    cert = write_private(d / "dask-cert.pem", tmp.tls_scheduler_cert)
    key = write_private(d / "dask-key.pem", tmp.tls_scheduler_key)
    roles = {
        f"tls_{role}_{kind}": str(path)
        for role in ("scheduler", "worker", "client")
        for kind, path in (("cert", cert), ("key", key))
    }
    return Security(require_encryption=True, tls_ca_file=str(cert), **roles)


def host_address() -> str:
    """This host's address as other nodes reach it: where a scheduler for workers on other
    nodes listens, instead of on every interface."""
    return socket.gethostbyname(socket.gethostname())


@functools.cache  # one class, however many notebooks a process runs
def private_kernel_manager():
    """The Jupyter kernel manager for notebooks run by papermill: the kernel listens on Unix
    sockets in a folder of its own that only this user can enter (mode 0700), instead of TCP
    ports on loopback that any local user could connect to. (It is also why such a run no
    longer prints the kernel's "running over TCP without encryption" warning.)"""
    import shutil
    import tempfile

    from jupyter_client.manager import AsyncKernelManager
    from traitlets import CaselessStrEnum, default

    class PrivateKernelManager(AsyncKernelManager):
        transport = CaselessStrEnum(["tcp", "ipc"], default_value="ipc", config=True)

        @default("ip")
        def _private_folder(self):  # jupyter_client's default is "kernel-ipc" in the cwd
            return os.path.join(tempfile.mkdtemp(prefix="lhccnn-kernel-"), "kernel")

        async def _async_interrupt_kernel(self) -> None:
            # jupyter_client interrupts every kernel before asking it to shut down. Papermill
            # shuts one down only after its last cell, so the SIGINT can only hit a last
            # request and print "KeyboardInterrupt caught in kernel". A kernel that ignores the
            # shutdown request is still killed after `shutdown_wait_time`.
            if not self.shutting_down:
                await super()._async_interrupt_kernel()

        def cleanup_ipc_files(self) -> None:
            super().cleanup_ipc_files()
            if os.path.basename(os.path.dirname(self.ip)).startswith("lhccnn-kernel-"):
                shutil.rmtree(os.path.dirname(self.ip), ignore_errors=True)

    return PrivateKernelManager
