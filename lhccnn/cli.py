"""Command-line glue for the Makefile and recipes: wait for a SLURM job, summarise a run, run the notebooks."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from .config import REPO


def summary(run_dir: Path) -> int:
    metrics_file = run_dir / "metrics.json"
    if not metrics_file.exists():
        print(f"error: {metrics_file} not found: did the training job finish?", file=sys.stderr)
        return 1
    m = json.loads(metrics_file.read_text())
    t = m["test"]
    rows = [
        ("ranks", f"{m['size']}"),
        ("test events", f"{t['n']}"),
        ("test accuracy", f"{t['accuracy']:.4f}  (weighted {t['weighted_accuracy']:.4f})"),
        ("test AUC", f"{t['auc']:.4f}  (weighted {t['weighted_auc']:.4f})"),
        ("majority-class rate", f"{t['majority_rate']:.4f}" + ("  COLLAPSED" if m["collapsed"] else "")),
        ("throughput", f"{m['samples_per_s']:.0f} samples/s (all ranks, median epoch)"),
        ("wall time", f"{m['wall_seconds']:.1f} s"),
        ("results", str(run_dir)),
    ]
    width = max(len(k) for k, _ in rows)
    print("\n".join(f"{k:<{width}}  {v}" for k, v in rows))
    return 0


def run_notebooks(out: Path, smoke: bool = False, names=None) -> int:
    """Execute the notebooks in order with papermill into `out`; stop at the first failure and
    say which notebook and which cell failed (the executed copy in `out` shows the traceback)."""
    import papermill as pm

    sources = sorted((REPO / "notebooks").glob("0*.ipynb"))
    if names:
        sources = [p for p in sources if any(p.stem.startswith(n) for n in names)]
    out.mkdir(parents=True, exist_ok=True)
    for src in sources:
        print(f"== {src.name}" + (" (smoke)" if smoke else ""), flush=True)
        t = time.perf_counter()
        try:
            pm.execute_notebook(src, out / src.name, cwd=str(src.parent), kernel_name="python3",
                                parameters={"smoke": True} if smoke else {},
                                progress_bar=sys.stderr.isatty(),  # cells done, in a terminal
                                log_output=False)
        except pm.PapermillExecutionError as e:
            print(f"error: notebook {src.name} failed in cell {e.cell_index} (In [{e.exec_count}]): "
                  f"{e.ename}: {e.evalue}\n  the executed copy shows the traceback: {out / src.name}",
                  file=sys.stderr)
            return 1
        print(f"   done in {time.perf_counter() - t:.0f} s -> {out / src.name}", flush=True)
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m lhccnn.cli", description=__doc__)
    sub = p.add_subparsers(dest="cmd", required=True)
    w = sub.add_parser("wait-job", help="wait for a SLURM job, echoing its log; fail unless COMPLETED")
    w.add_argument("job_id")
    w.add_argument("--log", type=Path, help="the job's output file to echo")
    w.add_argument("--timeout", type=float, default=None, help="seconds; the job is cancelled after")
    s = sub.add_parser("summary", help="print test metrics and throughput of a training run")
    s.add_argument("run_dir", type=Path)
    n = sub.add_parser("notebooks", help="execute the notebooks in order with papermill")
    n.add_argument("--out", type=Path, default=REPO / "book" / "notebooks",
                   help="where the executed copies go (default: book/notebooks, the book's chapters)")
    n.add_argument("--smoke", action="store_true", help="tiny sizes (parameter smoke=True)")
    n.add_argument("names", nargs="*", help="only these notebooks, by prefix (e.g. 01 05)")
    a = p.parse_args(argv)
    if a.cmd == "summary":
        return summary(a.run_dir)
    if a.cmd == "notebooks":
        return run_notebooks(a.out, a.smoke, a.names)
    from .slurm import SlurmError, wait_job

    try:
        wait_job(a.job_id, log_file=a.log, timeout=a.timeout)
    except SlurmError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
