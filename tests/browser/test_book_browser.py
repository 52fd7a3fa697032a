"""The built book in a real Chromium: every chapter opens, its figures load and decode, its
widget views are in the page, and the table of contents links every chapter."""

import functools
import http.server
import threading

import pytest
from browser_lab import ARGS, CHROMIUM

from lhccnn.config import notebooks, results_dir

CHAPTERS = [p.stem for p in notebooks()]


@pytest.fixture
def book_server(book_html):
    """The built HTML served on loopback (as a user's browser would get it)."""
    html, out = book_html
    assert out.returncode == 0, (out.stdout + out.stderr)[-3000:]
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(html))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_book_chapters_render_figures_in_chromium(book_server):
    from playwright.sync_api import sync_playwright

    shots = results_dir() / "browser"
    shots.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.goto(f"{book_server}/index.html")
        page.wait_for_url("**/book/intro.html")  # index.html redirects to the first page
        page.wait_for_load_state("load")
        toc = page.eval_on_selector_all("nav a", "as => as.map(a => a.getAttribute('href'))")
        for chapter in CHAPTERS:
            assert any(chapter in (h or "") for h in toc), f"{chapter} not in the book's navigation"
        for chapter in CHAPTERS:
            page.goto(f"{book_server}/book/notebooks/{chapter}.html")
            page.wait_for_load_state("load")
            figures = page.eval_on_selector_all(
                "main img",
                "imgs => imgs.map(i => [i.getAttribute('src'), i.complete, i.naturalWidth])",
            )
            assert figures, f"{chapter}: no figure"
            broken = [src for src, complete, width in figures if not (complete and width > 0)]
            assert not broken, f"{chapter}: figures that did not load: {broken}"
            if chapter in ("04_widget_hpo", "05_pbt_genetic"):
                views = page.locator(
                    'script[type="application/vnd.jupyter.widget-view+json"]'
                ).count()
                assert views >= 1, f"{chapter}: no widget view in the page"
            page.screenshot(path=str(shots / f"book-{chapter}.png"), full_page=False)
        browser.close()
