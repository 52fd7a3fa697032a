"""Benchmark helpers: write a module's figures beside its targets as JSON and print a table."""

import json
import os
import sys
import time

import pytest

from lhccnn.config import results_dir


def _write_record(name: str, title: str, targets: dict, figures: dict) -> None:
    """results/<name>.json with the machine, the targets and the figures; a table on stdout."""
    out = results_dir()
    out.mkdir(parents=True, exist_ok=True)
    machine = {"cpus": os.cpu_count(), "python": sys.version.split()[0],
               "when": time.strftime("%Y-%m-%d %H:%M:%S")}
    (out / f"{name}.json").write_text(json.dumps(
        {"machine": machine, "targets": targets, "figures": figures}, indent=1, default=float))
    width = max(map(len, figures), default=0)
    print(f"\n{title} (results/{name}.json):")
    for k, v in figures.items():
        value = f"{v:10.3f}" if isinstance(v, float) else str(v)
        print(f"  {k:<{width}}  {value}" + (f"   (target {targets[k]})" if k in targets else ""))


@pytest.fixture(scope="session")
def write_record():
    return _write_record
