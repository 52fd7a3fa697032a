"""Command-line glue for the Makefile and recipes: wait for a SLURM job, summarise a run."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


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


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m lhccnn.cli", description=__doc__)
    sub = p.add_subparsers(dest="cmd", required=True)
    w = sub.add_parser("wait-job", help="wait for a SLURM job, echoing its log; fail unless COMPLETED")
    w.add_argument("job_id")
    w.add_argument("--log", type=Path, help="the job's output file to echo")
    w.add_argument("--timeout", type=float, default=None, help="seconds; the job is cancelled after")
    s = sub.add_parser("summary", help="print test metrics and throughput of a training run")
    s.add_argument("run_dir", type=Path)
    a = p.parse_args(argv)
    if a.cmd == "summary":
        return summary(a.run_dir)
    from .slurm import SlurmError, wait_job

    try:
        wait_job(a.job_id, log_file=a.log, timeout=a.timeout)
    except SlurmError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
