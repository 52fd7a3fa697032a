"""The Jupyter Book: built from the session's executed smoke notebooks, with no warnings and
every chapter's figures and widgets in its page."""

import re
import struct

import pytest

from lhccnn.config import REPO, notebooks

CHAPTERS = [p.stem for p in notebooks()]

# figures (img) each chapter must show, and whether it carries live widgets
EXPECTED = {
    "01_cluster_startup": (1, False),
    "02_horovod_scaling": (3, False),
    "03_random_search_hpo": (4, False),
    "04_widget_hpo": (2, True),  # the dashboard's screenshot and the curves
    "05_pbt_genetic": (4, True),
}


def test_book_builds_without_warnings(book_html):
    html, out = book_html
    log = out.stdout + out.stderr
    assert out.returncode == 0, log[-4000:]
    # Sphinx's own messages ("file:line: WARNING: ..."), not the executing kernels' log lines
    assert not re.search(r"(WARNING|ERROR|CRITICAL): ", log), log[-4000:]
    # the MyST pages' kernels listen on private sockets, as the chapters' do (lhccnn.booksphinx)
    assert "running over TCP" not in log, log[-4000:]
    assert (html / "index.html").exists()


@pytest.mark.parametrize("chapter", CHAPTERS)
def test_chapter_pages_show_their_figures_and_widgets(book_html, chapter):
    html, _ = book_html
    page = (html / "book" / "notebooks" / f"{chapter}.html").read_text()
    n_img, widgets = EXPECTED[chapter]
    imgs = re.findall(r'<img[^>]+src="([^"]+)"', page)
    assert len(imgs) >= n_img, imgs
    for src in imgs:
        if not src.startswith("data:"):
            assert (html / "book" / "notebooks" / src).resolve().exists(), src
    if widgets:  # saved widget state, rendered by the ipywidgets embed script
        assert "application/vnd.jupyter.widget-view+json" in page
        assert "application/vnd.jupyter.widget-state+json" in page


@pytest.mark.parametrize("chapter", CHAPTERS)
def test_chapters_end_with_a_summary_and_exercises_and_the_footer_has_this_projects_year(
    book_html, chapter
):
    html, _ = book_html
    page = (html / "book" / "notebooks" / f"{chapter}.html").read_text()
    headings = re.findall(r"<h2>([^<]+)<a", page)
    assert headings[-2:] == ["Summary", "Exercises"], headings
    assert re.search(r"©\s*(<a [^>]*>)?Copyright 2026", page) and "Copyright 2023" not in page


# the package's own source each chapter shows (literalinclude), so that book and code cannot drift
INCLUDED = {
    "02_horovod_scaling": "scaled_lr",
    "03_random_search_hpo": "run_attempt",
    "04_widget_hpo": "steering_plan",
    "05_pbt_genetic": "breed",
}


@pytest.mark.parametrize("chapter", sorted(INCLUDED))
def test_chapters_show_the_source_of_the_functions_they_teach(book_html, chapter):
    html, _ = book_html
    page = (html / "book" / "notebooks" / f"{chapter}.html").read_text()
    assert f'<span class="nf">{INCLUDED[chapter]}</span>' in page


def test_no_broken_internal_links(book_html):
    html, _ = book_html
    for page in html.rglob("*.html"):
        for href in re.findall(r'href="([^"#:?]+\.html)(?:#[^"]*)?"', page.read_text()):
            assert (page.parent / href).resolve().exists(), f"{page.relative_to(html)} -> {href}"


def test_chapter_04_shows_the_browser_tests_screenshot_of_the_live_dashboard():
    # a saved page cannot run the widgets: the chapter shows the dashboard as Chromium drew it
    source = (REPO / "notebooks" / "04_widget_hpo.ipynb").read_text()
    assert "```{figure} /book/images/04_dashboard.png" in source
    assert "tests/browser/test_dashboard_browser.py" in source  # says where the picture is from
    png = (REPO / "book" / "images" / "04_dashboard.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and png[12:16] == b"IHDR"
    width, height = struct.unpack(">II", png[16:24])
    assert width >= 800 and height >= 400, (width, height)
    assert 20_000 < len(png) < 1_500_000
