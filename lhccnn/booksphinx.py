"""Sphinx extension for the book: its text pages' code runs in kernels on private sockets."""

from __future__ import annotations

import functools


def setup(app) -> dict:
    """Make myst-nb execute the book's MyST pages (the benchmarks, scale and peers pages) with
    `security.private_kernel_manager`, as `lhccnn notebooks` runs the chapters, instead of
    kernels on TCP ports of loopback that any local user could connect to (and that printed
    "Kernel is running over TCP without encryption" into every `make book`). myst-nb gives no
    setting for the kernel manager: its executor calls jupyter-cache's `executenb`, which
    forwards keyword arguments to nbclient, so that name is wrapped here."""
    from jupyter_cache.executors import utils

    from .security import private_kernel_manager

    if not getattr(utils.executenb, "lhccnn_private", False):
        wrapped = functools.partial(utils.executenb, kernel_manager_class=private_kernel_manager())
        wrapped.lhccnn_private = True
        utils.executenb = wrapped
    return {"parallel_read_safe": True, "parallel_write_safe": True}
