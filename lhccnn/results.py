"""Figures of runs, one JSON file each (results/<name>.json), from notebooks and benchmarks."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

from .config import REPO, results_dir
from .files import atomic_write


def folder(given: str | Path | None = None) -> Path:
    """Where figures go: `given` (a notebook's `results_dir` parameter) when set, else
    $LHCCNN_RESULTS or results/ in the checkout."""
    return Path(given) if given else results_dir()


def new_folder(parent: str | Path) -> Path:
    """A folder of its own for one run under `parent`, named by its start time (UTC) and never
    one that exists: a notebook run again must not add its trials to the last run's study."""
    parent = Path(parent)
    parent.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    for n in range(1, 1000):
        path = parent / (stamp if n == 1 else f"{stamp}-{n}")
        try:
            path.mkdir()
            return path
        except FileExistsError:
            continue
    raise FileExistsError(f"{parent}: 999 run folders named {stamp}; is the clock stuck?")


def _plain(obj):
    """What json cannot write itself: numpy scalars and arrays as numbers, the rest as text."""
    return obj.tolist() if hasattr(obj, "tolist") else str(obj)


def write(name: str, record: dict, where=None) -> Path:
    """Write `record` to <folder>/<name>.json through a temp file (a crash leaves the old one)."""
    path = folder(where) / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, json.dumps(record, indent=1, default=_plain))
    return path


def read(name: str, where=None) -> dict | None:
    """The record written by `write`, or None if there is none yet."""
    path = folder(where) / f"{name}.json"
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    try:
        return json.loads(text)
    except ValueError as e:
        raise ValueError(f"{path} is not valid JSON ({e}); run again what writes it") from None


# benchmark runs recorded for the book, on the machine each names (`make bench` writes newer ones)
RECORDED = REPO / "book" / "recorded"


def newest(
    name: str, where=None, key: str | None = None, full: bool = False
) -> tuple[dict | None, str]:
    """A benchmark's newest figures and where they come from: this checkout's results (if they
    hold `key`, when given, and with `full` if their size is "full": a full run, not a smoke
    test's), else the run recorded for the book in book/recorded/, else (None, what writes
    them)."""
    record = read(name, where)
    figures = (record or {}).get("figures", {})
    if (
        record is not None
        and (key is None or key in record or key in figures)
        and (not full or figures.get("size") == "full")
    ):
        return record, f"this checkout's `results/{name}.json`"
    record = read(name, RECORDED)
    if record is not None:
        return record, f"the run recorded for the book (`book/recorded/{name}.json`)"
    return None, f"no figures yet: `make bench` writes results/{name}.json"


def machine() -> dict:
    """What a benchmark's figures depend on besides the code: cores, Python, time, other load."""
    return {
        "cpus": os.cpu_count(),
        "python": sys.version.split()[0],
        "when": time.strftime("%Y-%m-%d %H:%M:%S"),
        "load_average_1_5_15_min": os.getloadavg(),
    }


def write_bench(
    name: str, title: str, targets: dict, figures: dict, where=None, extra: dict | None = None
) -> Path:
    """A benchmark's record (the machine, its targets, its figures, and `extra` fields such as
    per-run rows), and a table of the figures on stdout."""
    record = {"machine": machine(), "targets": targets, "figures": figures, **(extra or {})}
    path = write(name, record, where)
    width = max(map(len, figures), default=0)
    print(f"\n{title} ({path.parent.name}/{path.name}):")
    for k, v in figures.items():
        value = f"{v:10.3f}" if isinstance(v, float) else str(v)
        print(f"  {k:<{width}}  {value}" + (f"   (target {targets[k]})" if k in targets else ""))
    return path
