"""The book's benchmarks page: each section's tables and figures, from the recorded results."""

from __future__ import annotations

import os
import platform

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from IPython.display import Markdown

from . import plots, results
from .pbt import comparison_table

BENCHMARKS = ("bench", "bench_cluster", "bench_hpo", "bench_pbt")
ONE_CORE_KEY = "matmul_1core_float32_gflops"  # the foundation benchmark's limit of one core
# its figures of one core's precisions, which their own section shows (not "throughput")
ONE_CORE_PREFIXES = ("train_float32_", "train_mixed_bfloat16_", "matmul_", "bfloat16_", "cpu_")
NOTEBOOKS = ("01_cluster_startup", "02_horovod_scaling", "03_random_search_hpo", "05_pbt_genetic")


def records(where=None) -> dict:
    """Every record the page can show, by name: None for a run that has not been made here;
    and under "one_core", the newest full-size foundation benchmark with where it comes from."""
    recs = {name: results.read(name, where) for name in BENCHMARKS + NOTEBOOKS}
    recs["one_core"] = results.newest("bench", where, key=ONE_CORE_KEY, full=True)
    return recs


def show(section: str, where=None) -> None:
    """Display one section (a key of SECTIONS) in the running notebook, from `where`'s records."""
    from IPython.display import display

    for part in SECTIONS[section](records(where)):
        display(part)
        if isinstance(part, plt.Figure):
            plt.close(part)  # shown once: the inline backend would show it again at the cell's end


# ------------------------------------------------------------------ parts of a section


def note(text: str):
    return Markdown(text)


def missing(name: str, command: str):
    return note(f"*No `{name}.json` in the results directory: `{command}` writes it.*")


def figure(axes):
    """The figure that a `plots` function drew its axes (one, or an array of them) on."""
    return np.ravel(axes)[0].figure


def table(figures: dict, targets: dict | None = None, keys=None):
    """A table of a benchmark's scalar figures, with a column of targets when it has any."""
    targets = targets or {}
    rows = [
        {"figure": k, "value": v, "target": targets.get(k, "")}
        for k, v in figures.items()
        if (keys is None or k in keys) and isinstance(v, (int, float, str))
    ]
    df = pd.DataFrame(rows, dtype=object).set_index("figure")
    if not any(df["target"].astype(str) != ""):
        df = df.drop(columns="target")
    return df.style.format(lambda v: f"{v:,.3f}" if isinstance(v, float) else str(v))


def values(label: str, rows: dict) -> pd.DataFrame:
    """A one-column table of named values, its index titled `label` (whose figures they are)."""
    return pd.DataFrame({"value": pd.Series(rows, dtype=object)}).rename_axis(label)


def scaling_table(rows: list[dict], ratios: dict) -> pd.DataFrame:
    """Median samples/s per number of workers and mode, notebook/batch, and each mode against
    the ceiling (the suffixes +idle and +pinned: runs with idle_comm_threads, pin_cores)."""
    med = pd.DataFrame(rows).groupby(["workers", "mode"])["samples_per_s"].median()
    med = med.unstack("mode")
    med.columns = [f"{c} samples/s (median)" for c in med.columns]
    for key in (k for k in ratios if k.startswith("notebook_over_batch")):
        ratio = {int(w): r for w, r in ratios[key].items()}
        med["notebook / batch" + key.removeprefix("notebook_over_batch")] = pd.Series(ratio)
    for mode, of in ratios.get("of_ceiling", {}).items():
        med[f"{mode} / ceiling"] = pd.Series({int(w): r for w, r in of.items()})
    return med.round(3)


def makespan_table(m: dict) -> pd.DataFrame:
    """A search's makespan and its bounds, in seconds and as a multiple of the lower bound."""
    keys = ("lower_bound", "measured", "greedy", "round_robin")
    out = pd.DataFrame(pd.Series({k: m[k] for k in keys if k in m}, name="seconds"))
    out["over lower bound"] = out["seconds"] / m["lower_bound"]
    return out.round(3)


def section(recs: dict, bench: str, bench_parts, notebook: str, notebook_parts, beside: str):
    """A benchmark's parts, then those of the notebook that measures the same thing: beside the
    benchmark's under the sentence `beside`, or standing in for them when the benchmark has not
    run, and then said to be the notebook's own."""
    parts = bench_parts(recs[bench]) if recs[bench] else [missing(bench, "make bench")]
    rec = recs[notebook]
    if rec is None:
        return [*parts, missing(notebook, "make all")]
    n = notebook[:2]
    stand_in = (
        f"*In its place: notebook {n}'s own figures, from its last run (the notebook's sizes, "
        "not the benchmark's):*"
    )
    return [*parts, note(beside if recs[bench] else stand_in), *notebook_parts(rec)]


# ------------------------------------------------------------------ the sections


def machine(recs: dict) -> list:
    """The machine the benchmarks recorded, and the one that builds the book."""
    recorded = next((recs[b]["machine"] for b in BENCHMARKS if (recs[b] or {}).get("machine")), {})
    rows = {f"benchmarks: {k}": v for k, v in recorded.items()}
    rows.update(
        {
            "book build: platform": platform.platform(),
            "book build: processor": platform.processor() or platform.machine(),
            "book build: CPUs": os.cpu_count(),
            "book build: Python": platform.python_version(),
        }
    )
    parts = [pd.DataFrame({"value": {k: str(v) for k, v in rows.items()}})]
    return parts if recorded else [*parts, missing("bench", "make bench")]


def throughput(recs: dict) -> list:
    """Training samples/s: the benchmark's variants, and notebook 02's main training."""

    def bench(b):
        keys = [k for k in b["figures"] if not k.startswith(ONE_CORE_PREFIXES)]
        return [table(b["figures"], b.get("targets"), keys=keys)]

    def nb02(rec):
        main = rec["main"]
        return [
            values(
                "notebook 02, main training",
                {
                    "Horovod ranks": main["size"],
                    "samples/s": round(main["samples_per_s"], 1),
                    "samples/s per rank": round(main["samples_per_s"] / main["size"], 1),
                },
            )
        ]

    beside = "Notebook 02's main training, with its own sizes:"
    return section(recs, "bench", bench, "02_horovod_scaling", nb02, beside)


def one_core(recs: dict) -> list:
    """One core against its FLOP limit: float32 and bfloat16 training beside a matrix multiply
    of each, from this checkout's full-size foundation benchmark or the run recorded for the
    book (a smaller or partial run does not measure them at the same size)."""
    rec, where = recs["one_core"]
    if rec is None or ONE_CORE_KEY not in rec["figures"]:
        return [missing("bench", "LHCCNN_BENCH=full make bench")]
    f = rec["figures"]
    rows = {}
    for precision in ("float32", "mixed_bfloat16"):
        if f"train_{precision}_samples_per_s" in f:
            rows[precision] = {
                "samples/s": round(f[f"train_{precision}_samples_per_s"]),
                "GFLOP/s": round(f[f"train_{precision}_gflops"], 1),
                "validation loss": round(f[f"train_{precision}_val_loss"], 4),
                "validation accuracy": round(f[f"train_{precision}_val_accuracy"], 4),
            }
    return [
        note(f"From {where}; the CPU's bfloat16 instructions: {f.get('cpu_bfloat16_flags', '?')}."),
        figure(plots.flop_limit(f)),
        pd.DataFrame.from_dict(rows, orient="index").rename_axis("training, one core"),
    ]


def cluster(recs: dict) -> list:
    """Cluster start and stop and the cost of a task: the benchmark's, and notebook 01's."""

    def bench(b):
        keys = ("start_median_s", "stop_median_s", "per_task_ms")
        return [table(b["figures"], b.get("targets"), keys=keys)]

    def nb01(rec):
        rows = {
            "nodes": rec["nodes"],
            "engines": rec["engines"],
            "local engines (no SLURM)": rec["local"],
            "start, s": round(rec["startup_seconds"], 2),
            "stop, s": round(rec["stop_seconds"], 2),
            "tasks": rec["tasks"],
            "ms per task": round(rec["per_task_ms"], 2),
            "jobs left in the queue": len(rec["jobs_left"]),
        }
        return [values("notebook 01", rows)]

    beside = "Notebook 01 records the same kind of figures for its own cluster:"
    return section(recs, "bench_cluster", bench, "01_cluster_startup", nb01, beside)


def notebook_vs_batch(recs: dict) -> list:
    """The paper's Fig. 2: throughput from a notebook against a batch job, per worker count."""

    def bench(b):
        f = b["figures"]
        if not f.get("rows"):
            return [missing("bench_cluster", "make bench")]
        parts = [figure(plots.scaling(f["rows"])), scaling_table(f["rows"], f)]
        for ratio, name in (("efficiency_", "Horovod efficiency"), ("of_ceiling_", "of ceiling")):
            found = {k: v for k, v in f.items() if k.startswith(ratio)}
            if found:
                parts.append(pd.DataFrame(found).T.rename_axis(name).round(3))
        if f.get("time_shares_2_workers"):  # Horovod's timeline: where rank 0's time went
            shares = f["time_shares_2_workers"]
            parts.append(figure(plots.time_shares(shares)))
            parts.append(pd.DataFrame(shares).T.rename_axis("rank 0's time, 2 workers").round(3))
        return parts

    def nb02(rec):
        main, test = rec["main"], rec["main"]["test"]
        rows = {
            "ranks": main["size"],
            "samples/s": round(main["samples_per_s"], 1),
            "test accuracy": round(test["accuracy"], 4),
            "test accuracy, weighted": round(test.get("weighted_accuracy", float("nan")), 4),
            "test AUC": round(test["auc"], 4),
            "test AUC, weighted": round(test["weighted_auc"], 4),
            "majority-class rate": round(test["majority_rate"], 4),
            "collapsed to one class": main["collapsed"],
        }
        return [
            figure(plots.scaling(rec["rows"])),
            scaling_table(rec["rows"], rec["ratios"]).rename_axis("notebook 02: workers"),
            values("notebook 02, main training", rows),
        ]

    beside = "Notebook 02 runs the same study with its own parameters:"
    return section(recs, "bench_cluster", bench, "02_horovod_scaling", nb02, beside)


def random_search(recs: dict) -> list:
    """The makespan of a search against its bounds, the dashboard's cost, notebook 03's search."""

    def bench(b):
        f = b["figures"]
        keys = ("dashboard_over_plain",)
        return [makespan_table(f["makespan"]), table(f, b.get("targets"), keys=keys)]

    def nb03(rec):
        best = rec["best"]
        rows = {
            "trials": rec["n_trials"],
            **{f"trials {k}": v for k, v in rec["statuses"].items()},
            "best trial": best["trial"],
            "best validation accuracy": round(best["val_accuracy"], 4),
            "its optimizer": best["optimizer"],
            "its learning rate": best["lr"],
            "its dropout": best["dropout"],
        }
        return [
            values("notebook 03", rows),
            figure(plots.makespan(rec["makespan"])),
            makespan_table(rec["makespan"]).rename_axis("notebook 03: makespan"),
        ]

    beside = "Notebook 03's search, with its own parameters:"
    return section(recs, "bench_hpo", bench, "03_random_search_hpo", nb03, beside)


def pbt(recs: dict) -> list:
    """PBT against random search at equal compute, and notebook 05's run generation by
    generation (the paper's Fig. 7)."""

    def bench(b):
        f = b["figures"]
        parts = [table(f, b.get("targets"))]
        if f.get("per_seed"):
            parts.append(figure(plots.pbt_vs_random(f["per_seed"])))
        return parts

    def nb05(rec):
        parts = []
        history = [h for h in rec["history"] if h.get("mean_val_loss") is not None]
        if history:
            parts.append(figure(plots.pbt_progress(history)))
        if rec.get("comparison"):
            parts.append(figure(plots.pbt_vs_random(rec["comparison"])))
            parts.append(comparison_table(rec["comparison"]).round(4))
        parts.append(
            note(
                f"Notebook 05: best validation loss {rec['best_val_loss']:.4f}; PBT beat random "
                f"search at equal compute for {rec['pbt_wins']} of {rec['seeds']} seeds."
            )
        )
        return parts

    beside = "Notebook 05's run, with its own parameters:"
    return section(recs, "bench_pbt", bench, "05_pbt_genetic", nb05, beside)


SECTIONS = {
    "machine": machine,
    "throughput": throughput,
    "one_core": one_core,
    "cluster": cluster,
    "notebook_vs_batch": notebook_vs_batch,
    "random_search": random_search,
    "pbt": pbt,
}
