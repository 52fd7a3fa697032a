"""pytest-notebook regression: notebook 05 with a fixed seed on local engines must reproduce the
saved outputs (the lineage, its losses, the refusals, the comparison), volatile fields ignored.

The reference is tests/notebooks/reference/05_pbt_genetic.ipynb: the notebook's own cells plus
the injected parameters below. After a deliberate change, regenerate it with
`LHCCNN_REGEN=1 pytest tests/notebooks/test_regression.py` and review the diff.
"""

import os
from pathlib import Path

import nbformat
import pytest

REPO = Path(__file__).resolve().parents[2]
SOURCE = REPO / "notebooks" / "05_pbt_genetic.ipynb"
REFERENCE = Path(__file__).parent / "reference" / "05_pbt_genetic.ipynb"
PARAMETERS = "smoke = True\nlocal = True\n"  # papermill-style: a cell after the parameters cell

# what changes from run to run: times, addresses, ids, sizes, widget models, figures' bytes
VOLATILE = (
    ("/cells/*/outputs", r"\d+(\.\d+)? ?s\b", "<seconds>"),
    ("/cells/*/outputs", r"tcp://[\d.]+:\d+", "<address>"),
    ("/cells/*/outputs", r"memory=[\d.]+ \w+", "memory=<size>"),
    ("/cells/*/outputs", r"job \d+", "job <id>"),
    ("/cells/*/outputs", r"started daemon \d+", "started daemon <id>"),
    # float noise below the printed precision must not fail the test
    ("/cells/*/outputs", r"(\d\.\d{4})\d+", r"\1"),
)
# the cells whose whole output is timing: the cost table, the comparison's table (with seconds)
TIMING_CELLS = ("timing = ", "rows = pbt_lib.compare_with_random_search")
IGNORED = ("/metadata", "/cells/*/metadata", "/cells/*/execution_count",
           "/cells/*/outputs/*/execution_count", "/cells/*/outputs/*/data/image/png",
           "/cells/*/outputs/*/data/text/html",
           "/cells/*/outputs/*/data/application/vnd.jupyter.widget-view+json",
           "/cells/*/outputs/*/metadata")


def expected_source():
    nb = nbformat.read(SOURCE, as_version=4)
    at = next(i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", []))
    nb.cells.insert(at + 1, nbformat.v4.new_code_cell(PARAMETERS, metadata={"tags": ["injected-parameters"]}))
    return nb


def code_of(nb):
    return [c.source for c in nb.cells if c.cell_type == "code"]


@pytest.mark.slow
def test_notebook_05_reproduces_its_reference_outputs(tiny_data, tmp_path):
    from pytest_notebook.nb_regression import NBRegressionError, NBRegressionFixture

    regen = os.environ.get("LHCCNN_REGEN") == "1"
    if regen:
        REFERENCE.parent.mkdir(exist_ok=True)
        nbformat.write(expected_source(), REFERENCE)
    assert code_of(nbformat.read(REFERENCE, as_version=4)) == code_of(expected_source()), (
        "notebooks/05_pbt_genetic.ipynb changed: regenerate the reference (see this module's docstring)")
    timing = tuple(f"/cells/{i}/outputs" for i, c in enumerate(expected_source().cells)
                   if c.source.startswith(TIMING_CELLS))
    fixture = NBRegressionFixture(
        exec_timeout=600, exec_cwd=str(REPO / "notebooks"), diff_ignore=IGNORED + timing,
        diff_replace=VOLATILE,
        exec_env={"LHCCNN_DATA_DIR": str(tiny_data), "LHCCNN_RESULTS": str(tmp_path)},
        force_regen=regen)
    if not regen:
        fixture.check(str(REFERENCE))
        return
    try:
        fixture.check(str(REFERENCE))  # writes the executed notebook over the reference
    except NBRegressionError:
        pass
    strip_ignored(REFERENCE)
    pytest.skip("reference regenerated: review `git diff tests/notebooks/reference`")


def strip_ignored(path):
    """Keep only what is compared: no widget state, HTML or images (they hold run-specific ids
    and paths, and make the file big)."""
    nb = nbformat.read(path, as_version=4)
    nb.metadata.pop("widgets", None)
    for c in nb.cells:
        for o in c.get("outputs", []):
            for key in ("text/html", "image/png", "application/vnd.jupyter.widget-view+json"):
                o.get("data", {}).pop(key, None)
    nbformat.write(nb, path)
