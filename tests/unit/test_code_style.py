"""The code's own rules, run by CI: ruff lint and format at 100 columns, the layer contract."""

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def _run(*cmd):
    tool = BIN / cmd[0]
    if not tool.exists():
        pytest.fail(f"{cmd[0]} is not installed in this environment: make env installs it (dev)")
    return subprocess.run([str(tool), *cmd[1:]], cwd=REPO, capture_output=True, text=True)


def test_ruff_finds_nothing():
    out = _run("ruff", "check", "--no-cache", ".")
    assert out.returncode == 0, out.stdout + out.stderr


def test_code_is_formatted():
    out = _run("ruff", "format", "--check", "--no-cache", ".")
    assert out.returncode == 0, "run `ruff format .`:\n" + out.stdout + out.stderr


def test_no_module_imports_a_later_layer():
    out = _run("lint-imports", "--no-cache")
    assert out.returncode == 0 and "1 kept, 0 broken" in out.stdout, out.stdout + out.stderr
