"""A real JupyterLab for browser tests: started on loopback with a token, a notebook opened in
Chromium and run, the kernels and the server shut down after."""

import contextlib
import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request

import psutil

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def jupyter_lab(root, **env):
    """JupyterLab serving `root`, with `env` added to its environment; yields (url, token).
    On exit every kernel is shut down politely, as from JupyterLab's menu, then the server."""
    port, token = _free_port(), secrets.token_hex(16)
    # the token through the environment: a command line is visible to every user (ps)
    env = dict(os.environ, JUPYTER_CONFIG_DIR=str(root / "cfg"), JUPYTER_TOKEN=token, **env)
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "jupyterlab",
            "--no-browser",
            "--ip=127.0.0.1",
            f"--port={port}",
            f"--ServerApp.root_dir={root}",
            "--ServerApp.allow_root=True",
            "--LabApp.news_url=''",
            "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
        ],
        env=env,
        stdout=open(root / "lab.log", "w"),
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(f"{base}/api/status?token={token}", timeout=2)
                break
            except OSError:
                assert time.monotonic() < deadline and server.poll() is None, (
                    root / "lab.log"
                ).read_text()[-3000:]
                time.sleep(0.5)
        assert not any(token in arg for arg in psutil.Process(server.pid).cmdline())
        yield base, token
        for k in json.load(urllib.request.urlopen(f"{base}/api/kernels?token={token}")):
            req = urllib.request.Request(
                f"{base}/api/kernels/{k['id']}?token={token}", method="DELETE"
            )
            urllib.request.urlopen(req)
    finally:
        server.terminate()
        server.wait(timeout=30)


def run_notebook(page, base: str, token: str, name: str) -> None:
    """Open notebook `name` in JupyterLab and run all its cells, as a person would."""
    page.goto(f"{base}/lab/tree/{name}?token={token}")
    page.wait_for_selector(".jp-Notebook", timeout=60_000)
    _accept_kernel_dialog(page)
    page.wait_for_selector(".jp-Notebook-ExecutionIndicator[data-status='idle']", timeout=60_000)
    news = page.locator(".jp-toast-button", has_text="No")  # the news toast
    if news.count():
        news.first.click()
    # Run > Run All Cells; a click that lands before the kernel is connected does nothing, and
    # a dialog may still come up late, so look for the first cell's prompt to show that it runs
    # ("[*]") or ran, and try again. Not "[1]" alone: a first cell that runs longer than the wait
    # shows "[*]", and a second click would queue the notebook twice.
    started = re.compile(r"\[(\*|\d+)\]")
    for attempt in range(4):
        _accept_kernel_dialog(page)
        page.locator(".lm-MenuBar-itemLabel", has_text="Run").first.click()
        page.locator(".lm-Menu-itemLabel", has_text="Run All Cells").first.click()
        try:
            page.locator(".jp-InputPrompt", has_text=started).first.wait_for(timeout=10_000)
            return
        except Exception:
            assert attempt < 3, "Run All Cells never started the notebook"
            page.keyboard.press("Escape")


def _accept_kernel_dialog(page) -> None:
    """JupyterLab's "Select Kernel" dialog, if it is up: take the kernel it proposes."""
    dialog = page.locator(".jp-Dialog")
    if dialog.count():
        dialog.get_by_role("button", name="Select").click()
