"""Notebook 04 in a real JupyterLab in a real Chromium: the table renders and updates, a click on
a row plots that trial, Stop really stops it and Add trial adds one. Screenshots are kept in
results/browser/; with LHCCNN_BOOK_SCREENSHOT=1 the dashboard's is also written to the book
(book/images/04_dashboard.png, which chapter 04 shows)."""

import os
import shutil
import time
from pathlib import Path

import nbformat
import psutil
import pytest
from browser_lab import ARGS, CHROMIUM, jupyter_lab, run_notebook

from lhccnn.config import results_dir

REPO = Path(__file__).resolve().parents[2]
NOTEBOOK = REPO / "notebooks" / "04_widget_hpo.ipynb"
BOOK_SCREENSHOT = REPO / "book" / "images" / "04_dashboard.png"


@pytest.fixture
def lab(tmp_path, tiny_data):
    """JupyterLab on loopback with a token, serving a copy of notebook 04 that stops after
    showing the dashboard (so the kernel stays free to answer button clicks)."""
    nb = nbformat.read(NOTEBOOK, as_version=4)
    show = next(i for i, c in enumerate(nb.cells) if c.source.strip().endswith("dash"))
    nb.cells = nb.cells[: show + 1]
    params = {
        "smoke": False,
        "local": True,
        "n_trials": 3,
        "epochs": 40,
        "n_train": 2048,
        "n_val": 512,
        "study": str(tmp_path / "study"),
    }
    at = next(i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", []))
    nb.cells.insert(
        at + 1,
        nbformat.v4.new_code_cell(  # what papermill would inject
            "\n".join(f"{k} = {v!r}" for k, v in params.items())
        ),
    )
    nbformat.write(nb, tmp_path / "dashboard.ipynb")
    started = time.time()
    with jupyter_lab(tmp_path, LHCCNN_DATA_DIR=str(tiny_data)) as (base, token):
        yield base, token, tmp_path
    # the kernel's exit (a polite shutdown, as from JupyterLab's menu) stops its engines
    deadline = time.monotonic() + 30
    while _engines_since(started) and time.monotonic() < deadline:
        time.sleep(0.5)
    left = _engines_since(started)
    for proc in left:
        proc.kill()
    assert not left, f"engines left running after the kernel shut down: {left}"


def _engines_since(t0: float) -> list:
    found = []
    for proc in psutil.process_iter(["cmdline", "create_time", "status"]):
        cmd = " ".join(proc.info["cmdline"] or [])
        if proc.info["status"] == psutil.STATUS_ZOMBIE:  # exited; this VM's init reaps slowly
            continue
        if "ipyparallel.engine" in cmd and proc.info["create_time"] >= t0 - 1:
            found.append(proc)
    return found


def test_dashboard_renders_updates_plots_stops_a_trial_and_adds_one(lab):
    from playwright.sync_api import expect, sync_playwright

    from lhccnn.store import Store

    base, token, root = lab
    store = Store(root / "study")
    shots = results_dir() / "browser"
    shots.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        try:
            run_notebook(page, base, token, "dashboard.ipynb")

            # the table renders its rows, and their status cells follow the store
            rows = page.locator(".q-grid .slick-row")
            expect(rows).to_have_count(3, timeout=120_000)
            expect(page.locator(".q-grid .slick-cell", has_text="running").first).to_be_visible(
                timeout=120_000
            )
            # a trial with two epochs behind it, so that its curves have something to show
            deadline = time.monotonic() + 180
            while True:
                trained = [
                    t
                    for t in store.trial_ids()
                    if store.status(t)["status"] == "running" and len(store.metrics(t)) >= 2
                ]
                if trained:
                    break
                assert time.monotonic() < deadline, "no running trial finished two epochs"
                time.sleep(0.5)
            running = trained[0]

            # click its row: the curves panel now plots that trial
            page.locator(".q-grid .slick-row", has_text=running).first.click()
            expect(page.locator(".bqplot text.mainheading", has_text=running)).to_be_visible(
                timeout=30_000
            )
            page.screenshot(path=str(shots / "dashboard-selected.png"))

            # Stop selected: the trial really stops, and the table says so
            page.get_by_role("button", name="Stop selected").click()
            deadline = time.monotonic() + 90
            while store.status(running)["status"] != "stopped":
                assert time.monotonic() < deadline, store.status(running)
                time.sleep(0.5)
            expect(
                page.locator(".q-grid .slick-row", has_text=running).locator(
                    ".slick-cell", has_text="stopped"
                )
            ).to_be_visible(timeout=30_000)
            page.screenshot(path=str(shots / "dashboard-stopped.png"))

            # Add trial: a fourth row, made from the form (the stopped trial's own values)
            page.get_by_role("button", name="Add trial").click()
            expect(rows).to_have_count(4, timeout=30_000)
            expect(page.get_by_text("trial-0004 added")).to_be_visible(timeout=30_000)
            assert len(store.trial_ids()) == 4
            dashboard = page.locator(".jp-OutputArea-output", has=page.locator(".q-grid")).first
            dashboard.screenshot(path=str(shots / "dashboard.png"))
            if os.environ.get("LHCCNN_BOOK_SCREENSHOT") == "1":
                shutil.copy(shots / "dashboard.png", BOOK_SCREENSHOT)
        except Exception:
            page.screenshot(path=str(shots / "dashboard-failure.png"))
            raise
        finally:
            browser.close()
