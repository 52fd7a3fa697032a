"""pytest-notebook regression: notebook 05 with a fixed seed on local engines must reproduce the
saved outputs (the lineage, its losses, the refusals, the comparison), volatile fields ignored.

The reference, tests/notebooks/reference/05_pbt_genetic.<isa>.outputs.json, holds each code
cell's source and expected outputs (not a notebook: committed notebooks carry no outputs); the test
puts them back into the notebook (plus the injected parameters below) and lets pytest-notebook
execute and compare it. After a deliberate change, regenerate it with
`LHCCNN_REGEN=1 pytest tests/notebooks/test_regression.py` and review the diff.

There is one reference per vector instruction set (<isa>: avx512, avx2, else the machine's name):
TensorFlow's CPU kernels sum in a different order with 16-float AVX-512 registers than with
8-float AVX2 ones, and a few generations of training turn that last-bit difference into a
different third digit of the losses (0.4833 against 0.4898 at generation 2). On one instruction
set the run is exactly reproducible; that is what this test holds.
"""

import contextlib
import json
import os
from pathlib import Path

import nbformat
import pytest

from lhccnn.config import notebook_parameters

REPO = Path(__file__).resolve().parents[2]
SOURCE = REPO / "notebooks" / "05_pbt_genetic.ipynb"


def instruction_set() -> str:
    """avx512 or avx2 (what TensorFlow's x86 kernels dispatch on), else the machine's name."""
    import platform

    flags = set()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    return next(
        (isa for isa in ("avx512", "avx2") if f"{isa}f" in flags or isa in flags),
        platform.machine(),
    )


REFERENCE = Path(__file__).parent / "reference" / f"05_pbt_genetic.{instruction_set()}.outputs.json"
# papermill-style: a cell after the parameters cell, with CI's smoke sizes and local engines
PARAMETERS = "".join(
    f"{k} = {v!r}\n"
    for k, v in notebook_parameters("05_pbt_genetic", smoke=True, local=True).items()
)

# what changes from run to run: times, addresses, ids, sizes, widget models, figures' bytes
VOLATILE = (
    ("/cells/*/outputs", r"\d+(\.\d+)? ?s\b", "<seconds>"),
    ("/cells/*/outputs", r"(tcp|tls)://[\d.]+:\d+", "<address>"),
    ("/cells/*/outputs", r"memory=[\d.]+ \w+", "memory=<size>"),
    ("/cells/*/outputs", r"job \d+", "job <id>"),
    ("/cells/*/outputs", r"started daemon \d+", "started daemon <id>"),
    # float noise below the printed precision must not fail the test
    ("/cells/*/outputs", r"(\d\.\d{4})\d+", r"\1"),
)
# the cells whose whole output is timing: the cost table, the comparison's table (with seconds)
TIMING_CELLS = ("timing = ", "rows = pbt_lib.compare_with_random_search")
IGNORED = (
    "/metadata",
    "/cells/*/metadata",
    "/cells/*/execution_count",
    "/cells/*/outputs/*/execution_count",
    "/cells/*/outputs/*/data/image/png",
    "/cells/*/outputs/*/data/text/html",
    "/cells/*/outputs/*/data/application/vnd.jupyter.widget-view+json",
    "/cells/*/outputs/*/metadata",
)


def expected_source():
    nb = nbformat.read(SOURCE, as_version=4)
    at = next(i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", []))
    nb.cells.insert(
        at + 1, nbformat.v4.new_code_cell(PARAMETERS, metadata={"tags": ["injected-parameters"]})
    )
    return nb


def code_of(nb):
    return [c.source for c in nb.cells if c.cell_type == "code"]


@pytest.mark.slow
def test_notebook_05_reproduces_its_reference_outputs(tiny_data, tmp_path):
    from pytest_notebook.nb_regression import NBRegressionError, NBRegressionFixture

    regen = os.environ.get("LHCCNN_REGEN") == "1"
    nb = expected_source()
    if not regen:
        if not REFERENCE.exists():
            pytest.fail(
                f"no reference for this CPU ({REFERENCE.name}): make one on it with "
                "LHCCNN_REGEN=1 (see this module's docstring), review it and commit it"
            )
        expected = json.loads(REFERENCE.read_text())
        assert [c["source"] for c in expected] == code_of(nb), (
            "notebooks/05_pbt_genetic.ipynb changed: regenerate the reference "
            "(see this module's docstring)"
        )
        for cell, ref in zip((c for c in nb.cells if c.cell_type == "code"), expected):
            cell.outputs = [nbformat.from_dict(o) for o in ref["outputs"]]
    path = tmp_path / "05_pbt_genetic.ipynb"
    nbformat.write(nb, path)
    timing = tuple(
        f"/cells/{i}/outputs" for i, c in enumerate(nb.cells) if c.source.startswith(TIMING_CELLS)
    )
    fixture = NBRegressionFixture(
        exec_timeout=600,
        exec_cwd=str(REPO / "notebooks"),
        diff_ignore=IGNORED + timing,
        diff_replace=VOLATILE,
        force_regen=regen,
        exec_env={"LHCCNN_DATA_DIR": str(tiny_data), "LHCCNN_RESULTS": str(tmp_path / "results")},
    )
    if not regen:
        fixture.check(str(path))
        return
    try:
        fixture.check(str(path))  # writes the executed notebook over `path`
    except NBRegressionError:
        pass
    REFERENCE.parent.mkdir(exist_ok=True)
    REFERENCE.write_text(
        json.dumps(compared_outputs(nbformat.read(path, as_version=4)), indent=1) + "\n"
    )
    pytest.skip("reference regenerated: review `git diff tests/notebooks/reference`")


def compared_outputs(nb) -> list[dict]:
    """Each code cell's source and outputs, without what is never compared (widget views, HTML,
    images, output metadata): they hold run-specific ids and paths, and make the file big."""
    cells = []
    for c in nb.cells:
        if c.cell_type != "code":
            continue
        outputs = []
        for o in c.outputs:
            o = {k: v for k, v in o.items() if k not in ("metadata", "execution_count")}
            if "data" in o:
                o["data"] = {k: v for k, v in o["data"].items() if k == "text/plain"}
            if o["output_type"] == "execute_result":
                o.update(metadata={}, execution_count=None)
            elif o["output_type"] == "display_data":
                o["metadata"] = {}
            outputs.append(o)
        cells.append({"source": c.source, "outputs": outputs})
    return cells
