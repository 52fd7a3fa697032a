"""Command-line glue for the Makefile and recipes: wait on a job, sum up a run, run notebooks."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import sys
import threading
import time
from pathlib import Path

from .cluster import ClusterError
from .config import REPO, notebook_parameters, notebooks
from .pbt import PBTConfig, member_config
from .security import private_kernel_manager


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
        (
            "majority-class rate",
            f"{t['majority_rate']:.4f}" + ("  COLLAPSED" if m["collapsed"] else ""),
        ),
        ("throughput", f"{m['samples_per_s']:.0f} samples/s (all ranks, median epoch)"),
        ("wall time", f"{m['wall_seconds']:.1f} s"),
        ("results", str(run_dir)),
    ]
    width = max(len(k) for k, _ in rows)
    print("\n".join(f"{k:<{width}}  {v}" for k, v in rows))
    return 0


def _execute(pm, src: Path, out: Path, smoke: bool) -> None:
    pm.execute_notebook(
        src,
        out / src.name,
        cwd=str(src.parent),
        kernel_name="python3",
        parameters=notebook_parameters(src.stem, smoke),
        progress_bar=sys.stderr.isatty(),  # cells done, in a terminal
        log_output=False,
        kernel_manager_class=private_kernel_manager(),
    )


def running_cell(executed: Path) -> tuple[int, int] | None:
    """(number, of how many) of the code cell that papermill marks running in the copy it saves
    after every cell, or None (not saved yet, or between cells)."""
    try:
        cells = [c for c in json.loads(executed.read_text())["cells"] if c["cell_type"] == "code"]
    except (OSError, ValueError, KeyError):
        return None
    for i, c in enumerate(cells):
        if c.get("metadata", {}).get("papermill", {}).get("status") == "running":
            return i + 1, len(cells)
    return None


@contextlib.contextmanager
def _still_running(executed: Path, since: float, quiet: bool, every: float = 60.0):
    """Outside a terminal (CI, a batch job's log) say once a minute which cell is running, so
    that minutes of silence do not look like a hang."""
    executed = Path(executed).resolve()  # papermill changes the working directory meanwhile
    done = threading.Event()

    def report():
        while not done.wait(every):
            cell = running_cell(executed)
            where = f"cell {cell[0]} of {cell[1]}" if cell else "between cells"
            print(f"   ... {where} running, {time.perf_counter() - since:.0f} s", flush=True)

    thread = None if quiet else threading.Thread(target=report, daemon=True)
    if thread:
        thread.start()
    try:
        yield
    finally:
        done.set()


def run_notebooks(out: Path, smoke: bool = False, names=None) -> int:
    """Execute the notebooks in order with papermill into `out`; stop at the first failure and
    say which notebook and which cell failed (the executed copy in `out` shows the traceback)."""
    import papermill as pm

    sources = notebooks()
    if names:
        unknown = [n for n in names if not any(p.stem.startswith(n) for p in sources)]
        if unknown:
            print(
                f"error: no notebook matches {', '.join(map(repr, unknown))}; the notebooks are "
                f"{', '.join(p.stem for p in sources)}",
                file=sys.stderr,
            )
            return 2
        sources = [p for p in sources if any(p.stem.startswith(n) for n in names)]
    out.mkdir(parents=True, exist_ok=True)
    for src in sources:
        print(f"== {src.name}" + (" (smoke)" if smoke else ""), flush=True)
        t = time.perf_counter()
        try:
            with _still_running(out / src.name, t, quiet=sys.stderr.isatty()):
                _execute(pm, src, out, smoke)
        except pm.PapermillExecutionError as e:
            print(
                f"error: notebook {src.name} failed in cell {e.cell_index} (In [{e.exec_count}]): "
                f"{e.ename}: {e.evalue}\n  the executed copy shows the traceback: {out / src.name}",
                file=sys.stderr,
            )
            return 1
        print(f"   done in {time.perf_counter() - t:.0f} s -> {out / src.name}", flush=True)
    return 0


SHAPE = tuple(f.name for f in dataclasses.fields(PBTConfig))  # a run's settings


def _positive_int(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {text!r}")
    return int(text)


def _size(text: str) -> str:
    from dask.utils import parse_bytes

    try:
        parse_bytes(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"must be a size like 4GiB or 500MB, got {text!r}"
        ) from None
    return text


def run_pbt(a) -> int:
    """A PBT run on Dask workers that are SLURM jobs (dask-jobqueue); a second call with the
    same root resumes it. Ctrl-C (or SIGTERM) cancels the worker jobs and keeps what finished."""
    import signal

    from .config import data_dir
    from .data import validate_file
    from .jobqueue import SlurmDask
    from .pbt import PBT, GenerationFailed

    def report(pbt, g):
        h = pbt.history()[g]
        print(
            f"generation {g}: best val_loss {h['best_val_loss']:.4f} ({h['best']}), mean "
            f"{h['mean_val_loss']:.4f}, {h['wall_s']:.0f} s, overhead "
            f"{100 * h['overhead_fraction']:.1f} %",
            flush=True,
        )

    def check_data(folder):  # a missing or malformed file: said now, not by every member
        for split in ("train", "val"):
            validate_file(Path(folder or data_dir()) / f"{split}.h5", check_values=False)

    def terminate(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, terminate)  # a killed session cleans up as Ctrl-C does
    given = {k: getattr(a, k) for k in SHAPE if getattr(a, k) is not None}
    run = None
    try:
        if (a.root / "pbt.json").exists() and not given and a.n_train is None and a.n_val is None:
            run = PBT(a.root)  # resume as it was started
            check_data(run.data)
        else:
            check_data(a.data)
            base = member_config(  # one member at a time per worker job
                n_train=a.n_train or 4096, n_val=a.n_val or 1024, intra_threads=a.cpus or 1
            )
            run = PBT(a.root, base, None, PBTConfig(**given), a.data)
        print(
            f"PBT run {a.root}: {dataclasses.asdict(run.config)}; "
            f"{run.finished_generations()} of {run.config.generations} generations done",
            flush=True,
        )
        with SlurmDask(
            workers=a.workers,
            threads=1,
            cpus=a.cpus,
            memory=a.memory,
            walltime=a.walltime,
            sbatch_options=a.sbatch,
            log_dir=a.root / "dask-logs",
            wait=a.wait,
        ) as dask:
            print(
                f"{a.workers} Dask workers up (SLURM jobs {', '.join(dask.job_ids())}); "
                f"dashboard {dask.client.dashboard_link}",
                flush=True,
            )
            run.run(dask.client, on_generation=report, progress=sys.stderr.isatty())
    except KeyboardInterrupt:
        done = run.finished_generations() if run else 0
        print(
            f"interrupted after {done} finished generations; the worker jobs are cancelled. "
            f"Run the same command again to resume.",
            file=sys.stderr,
        )
        return 130
    except (ClusterError, GenerationFailed, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(
        f"best val_loss {run.best_fom():.4f}; best lineage {' -> '.join(run.best_lineage())}\n"
        f"store: {a.root}"
    )
    return 0


# commands with a parser of their own: `lhccnn train ARGS` is `python -m lhccnn.train ARGS`
OWN_PARSER = {
    "train": ("lhccnn.train", "train the CNN in one process or with Horovod (see train --help)"),
    "fetch": ("lhccnn.fetch", "make or download the dataset (see fetch --help)"),
    "peers": ("lhccnn.peers", "lhccnn against Ray Tune and Optuna (see peers --help)"),
}


def main(argv=None) -> int:
    """`lhccnn COMMAND ...` (installed by pip) or `python -m lhccnn.cli COMMAND ...`."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] in OWN_PARSER:
        import importlib

        return importlib.import_module(OWN_PARSER[argv[0]][0]).main(argv[1:])
    p = argparse.ArgumentParser(
        prog="lhccnn", description="Train, search and manage lhccnn runs from a shell."
    )
    sub = p.add_subparsers(dest="cmd", required=True, metavar="COMMAND")
    for name, (_, text) in OWN_PARSER.items():
        sub.add_parser(name, help=text, add_help=False)
    w = sub.add_parser(
        "wait-job", help="wait for a SLURM job, echoing its log; fail unless COMPLETED"
    )
    w.add_argument("job_id")
    w.add_argument("--log", type=Path, help="the job's output file to echo")
    w.add_argument(
        "--timeout", type=float, default=None, help="seconds; the job is cancelled after"
    )
    s = sub.add_parser("summary", help="print test metrics and throughput of a training run")
    s.add_argument("run_dir", type=Path)
    n = sub.add_parser("notebooks", help="execute the notebooks in order with papermill")
    n.add_argument(
        "--out",
        type=Path,
        default=REPO / "book" / "notebooks",
        help="where the executed copies go (default: book/notebooks, the book's chapters)",
    )
    n.add_argument("--smoke", action="store_true", help="tiny sizes (parameter smoke=True)")
    n.add_argument("names", nargs="*", help="only these notebooks, by prefix (e.g. 01 05)")
    b = sub.add_parser(
        "pbt",
        help="population-based training on Dask workers that are SLURM jobs",
        description=run_pbt.__doc__,
    )
    b.add_argument("root", type=Path, help="the run's store (an existing one resumes)")
    b.add_argument(
        "--workers",
        type=_positive_int,
        default=2,
        help="SLURM jobs, one Dask worker each (default 2)",
    )
    b.add_argument(
        "--cpus", type=_positive_int, default=None, help="CPUs per worker job (default 1)"
    )
    b.add_argument(
        "--memory", type=_size, default="4GiB", help="memory per worker job (default 4GiB)"
    )
    b.add_argument("--walltime", default="00:30:00", help="time limit of each worker job")
    b.add_argument(
        "--sbatch", default="", help='more sbatch options, e.g. "-C cpu -q regular -A m1234"'
    )
    b.add_argument(
        "--wait", type=float, default=300, help="seconds to wait for the workers (default 300)"
    )
    b.add_argument(
        "--data", type=Path, default=None, help="folder of train.h5/val.h5 (default: the project's)"
    )
    b.add_argument(
        "--n-train", type=int, default=None, help="training events per member (default 4096)"
    )
    b.add_argument("--n-val", type=int, default=None, help="validation events (default 1024)")
    for field in dataclasses.fields(PBTConfig):
        b.add_argument(
            "--" + field.name.replace("_", "-"),
            type=type(field.default),
            default=None,
            help=f"PBT setting (default {field.default})",
        )
    a = p.parse_args(argv)
    if a.cmd == "pbt":
        return run_pbt(a)
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
