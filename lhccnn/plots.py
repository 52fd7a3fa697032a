"""Static matplotlib figures for the notebooks and the book: architecture, curves, ROC, scaling."""

from __future__ import annotations

import matplotlib.pyplot as plt
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch

from .physics import roc_auc, roc_curve


def _box(ax, x, y, w, h, text, color):
    ax.add_patch(FancyBboxPatch((x, y), w, h, boxstyle="round,pad=0.02", fc=color, ec="0.3"))
    ax.text(x + w / 2, y + h / 2, text, ha="center", va="center", fontsize=9)


def _arrow(ax, a, b, text="", style="-|>", color="0.3"):
    ax.add_patch(FancyArrowPatch(a, b, arrowstyle=style, mutation_scale=12, color=color, lw=1.2))
    if text:
        ax.text(
            (a[0] + b[0]) / 2, (a[1] + b[1]) / 2 + 0.03, text, ha="center", fontsize=8, color=color
        )


def architecture(nodes: int = 2, ax=None):
    """Notebook -> IPyParallel controller -> engines in a SLURM job on compute nodes (MPI)."""
    if ax is None:
        _, ax = plt.subplots(figsize=(9, 3.6))
    ax.set(xlim=(0, 1), ylim=(0, 1))
    ax.axis("off")
    _box(ax, 0.01, 0.42, 0.17, 0.2, "Jupyter notebook\n(kernel, %px,\nwidgets)", "#cfe2f3")
    _box(ax, 0.27, 0.42, 0.17, 0.2, "IPyParallel\ncontroller\n(hub + schedulers)", "#d9ead3")
    _arrow(ax, (0.18, 0.52), (0.27, 0.52), "ZMQ")
    ax.add_patch(
        FancyBboxPatch(
            (0.52, 0.04), 0.46, 0.9, boxstyle="round,pad=0.01", fc="#fff2cc", ec="0.5", ls="--"
        )
    )
    ax.text(0.75, 0.9, "SLURM allocation (sbatch / salloc)", ha="center", fontsize=9)
    h = 0.72 / nodes
    for i in range(nodes):
        y = 0.1 + i * h
        _box(
            ax,
            0.55,
            y,
            0.33,
            h * 0.7,
            f"compute node {i + 1}: ipengine (rank {i})\nTensorFlow + Horovod, its data shard",
            "#fce5cd",
        )
        _arrow(ax, (0.44, 0.52), (0.55, y + h * 0.35))
        if i:
            _arrow(ax, (0.85, y - h * 0.3), (0.85, y), "", style="<|-|>", color="#cc0000")
    ax.text(
        0.935,
        0.5,
        "MPI allreduce\nof gradients",
        rotation=90,
        va="center",
        ha="center",
        fontsize=8,
        color="#cc0000",
    )
    return ax


def training_curves(history: dict, axes=None, label=""):
    """Loss and accuracy per epoch, training and validation."""
    if axes is None:
        _, axes = plt.subplots(1, 2, figsize=(10, 3.5))
    epochs = range(1, len(history["loss"]) + 1)
    for ax, key in zip(axes, ("loss", "accuracy")):
        ax.plot(epochs, history[key], "o-", label=f"{label}train".strip())
        ax.plot(epochs, history[f"val_{key}"], "s--", label=f"{label}validation".strip())
        ax.set(xlabel="epoch", ylabel=key)
        ax.legend()
    return axes


def trial_spread(trials, axes=None, bins=15):
    """Training time and best validation accuracy over a search's trials, as histograms (the
    paper's Fig. 3); `trials` is a table with `seconds` and `val_accuracy` columns."""
    if axes is None:
        _, axes = plt.subplots(1, 2, figsize=(10, 3.5))
    axes[0].hist(trials["seconds"], bins=bins)
    axes[0].set(xlabel="training time per trial [s]", ylabel="trials")
    axes[1].hist(trials["val_accuracy"], bins=bins)
    axes[1].set(xlabel="best validation accuracy", ylabel="trials")
    return axes


def trial_curves(store, trial_id: str, axes=None):
    """`training_curves` of one trial of a study, from the metrics its store holds per epoch."""
    ms = store.metrics(trial_id)
    keys = ("loss", "val_loss", "accuracy", "val_accuracy")
    return training_curves({k: [m[k] for m in ms] for k in keys}, axes)


def makespan(m: dict, ax=None):
    """A search's makespan against the lower bound no schedule can beat, and against a static
    round-robin assignment of the same trial times (`m` as `hpo.makespan_analysis` gives it)."""
    if ax is None:
        _, ax = plt.subplots(figsize=(6.4, 4.8))
    bars = ax.bar(
        ["lower bound", "load-balanced\n(measured)", "round-robin\n(same times)"],
        [m["lower_bound"], m["measured"], m["round_robin"]],
    )
    ax.bar_label(bars, fmt="%.1f", fontsize=8)
    ax.set(ylabel="makespan [s]")
    return ax


def roc(pred: dict, axes=None):
    """ROC of the CNN and of the cut-based baseline, unweighted and weighted by physics weights."""
    if axes is None:
        _, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, weighted in zip(axes, (False, True)):
        w = pred["weight"] if weighted else None
        for key, style in (("cnn", "-"), ("baseline", "--")):
            fpr, tpr, _ = roc_curve(pred["y"], pred[key], w)
            auc = roc_auc(pred["y"], pred[key], w)
            name = "CNN" if key == "cnn" else "cut-based (jets + log HT)"
            ax.plot(fpr, tpr, style, label=f"{name}: AUC {auc:.3f}")
        ax.plot([0, 1], [0, 1], ":", color="0.6")
        ax.set(
            xlabel="false positive rate (background efficiency)",
            ylabel="true positive rate (signal efficiency)",
            title="weighted by physics weights" if weighted else "unweighted",
        )
        ax.legend(loc="lower right")
    return axes


def scaling(rows: list[dict], axes=None):
    """Median throughput against workers, notebook and batch (the paper's Fig. 2; dash-dotted:
    with idle_comm_threads; triangles: pinned, where measured), beside the ideal and the
    measured ceilings (independent trainings, where measured); the notebook/batch ratios."""
    if axes is None:
        _, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    from .scaling import ALL_MODES, PINNED, SUFFIXES, medians

    by_mode: dict = {}
    for (mode, w), v in medians(rows).items():
        by_mode.setdefault(mode, {})[w] = v
    ws = sorted({w for m in ALL_MODES for w in by_mode.get(m, {})})
    base = next(by_mode[m] for m in ("batch", *ALL_MODES) if ws[0] in by_mode.get(m, {}))
    styles = dict(zip(ALL_MODES, ("o-", "s--", "o-.", "s-.", "^-", "v--", "^-.", "v-.")))
    for mode in (m for m in ALL_MODES if m in by_mode):
        mw = sorted(by_mode[mode])
        (line,) = axes[0].plot(
            mw, [by_mode[mode][w] for w in mw], styles[mode], label=f"{mode} (median)"
        )
        runs = [r for r in rows if r["mode"] == mode]  # every repeat, to show the spread
        axes[0].scatter(
            [r["workers"] for r in runs],
            [r["samples_per_s"] for r in runs],
            s=12,
            color=line.get_color(),
            alpha=0.4,
        )
    axes[0].plot(ws, [base[ws[0]] * w / ws[0] for w in ws], ":", color="0.6", label="ideal")
    for suffix, style in (("", "^:"), (PINNED, "v:")):
        ceiling = by_mode.get("independent" + suffix, {})
        if ceiling:  # independent trainings, no communication: the most ranks here can reach
            cw = sorted(ceiling)
            label = "ceiling (independent" + (", pinned)" if suffix else ")")
            axes[0].plot(cw, [ceiling[w] for w in cw], style, color="0.3", label=label)
    axes[0].set(xlabel="workers (Horovod ranks)", ylabel="training samples/s", xticks=ws)
    axes[0].legend(fontsize="small")
    for suffix, style in zip(SUFFIXES, ("o-", "o-.", "^-", "^-.")):
        nb, batch = by_mode.get("notebook" + suffix, {}), by_mode.get("batch" + suffix, {})
        both = sorted(set(nb) & set(batch))
        if both:
            label = "notebook / batch" + suffix.replace("+", ", ")
            axes[1].plot(both, [nb[w] / batch[w] for w in both], style, label=label)
    axes[1].axhline(1.0, color="0.6", ls=":")
    axes[1].set(xlabel="workers", ylabel="notebook / batch throughput", xticks=ws, ylim=(0.8, 1.2))
    axes[1].legend(fontsize="small")
    return axes


def time_shares(shares: dict, ax=None):
    """Where rank 0's time went, per mode (from Horovod's timeline, `scaling.time_shares`
    keyed by mode): its own work, its waits for the other ranks, and the allreduce."""
    if ax is None:
        _, ax = plt.subplots(figsize=(8, 0.6 + 0.5 * len(shares)))
    modes = list(shares)
    left = [0.0] * len(modes)
    for part, color in (("compute", "#9fc5e8"), ("waiting_for_peers", "#f6b26b"),
                        ("allreduce", "#e06666")):  # fmt: skip
        widths = [shares[m][part] for m in modes]
        ax.barh(modes, widths, left=left, color=color, label=part.replace("_", " "))
        for y, (x, w) in enumerate(zip(left, widths)):
            if w >= 0.04:  # label the parts wide enough to hold it
                ax.text(x + w / 2, y, f"{w:.0%}", ha="center", va="center", fontsize=8)
        left = [x + w for x, w in zip(left, widths)]
    ax.set(xlim=(0, 1), xlabel="share of rank 0's time (Horovod timeline)")
    ax.invert_yaxis()
    ax.legend(ncol=3, fontsize="small", loc="lower center", bbox_to_anchor=(0.5, 1.0))
    return ax


def crossover(a: dict, b: dict, child: dict, ax=None):
    """The paper's Fig. 6: a child takes each hyper-parameter from one parent or the other."""
    if ax is None:
        _, ax = plt.subplots(figsize=(9, 2.6))
    keys = list(a)
    colors = {"a": "#9fc5e8", "b": "#f9cb9c", "mutated": "#b6d7a8"}
    ax.set(xlim=(-1.4, len(keys)), ylim=(-0.2, 3.2))
    ax.axis("off")
    for row, (name, hp) in enumerate((("parent A", a), ("parent B", b), ("child", child))):
        y = 2 - row + (0.1 if row < 2 else -0.1)
        ax.text(-1.3, y + 0.35, name, va="center", fontsize=10, weight="bold")
        for i, k in enumerate(keys):
            src = (
                "a"
                if name == "parent A"
                else "b"
                if name == "parent B"
                else ("a" if child[k] == a[k] else "b" if child[k] == b[k] else "mutated")
            )
            _box(ax, i, y, 0.9, 0.7, f"{k}\n{_short(hp[k])}", colors[src])
    ax.text(
        len(keys) / 2 - 0.5,
        3.05,
        "blue: from A   orange: from B   green: mutated",
        ha="center",
        fontsize=8,
        color="0.3",
    )
    return ax


def _short(v):
    return f"{v:.3g}" if isinstance(v, float) else str(v)


def pbt_progress(history: list[dict], ax=None, label="PBT"):
    """Mean and best figure of merit (validation loss) per generation (the paper's Fig. 7)."""
    if ax is None:
        _, ax = plt.subplots(figsize=(6, 3.8))
    g = [h["generation"] for h in history]
    ax.plot(g, [h["mean_val_loss"] for h in history], "o--", label=f"{label}: population mean")
    ax.plot(g, [h["best_val_loss"] for h in history], "s-", label=f"{label}: best member")
    ax.set(xlabel="generation", ylabel="validation loss (lower is better)", xticks=g)
    ax.legend()
    return ax


def pbt_vs_random(rows: list[dict], ax=None):
    """Best validation loss of PBT and of random search at equal compute, per seed."""
    import numpy as np

    if ax is None:
        _, ax = plt.subplots(figsize=(6, 3.8))
    x = np.arange(len(rows))
    pbt = [r["pbt_best_val_loss"] for r in rows]
    rs = [r["random_best_val_loss"] for r in rows]
    for shift, values, label in ((-0.18, pbt, "PBT (GA)"), (0.18, rs, "random search")):
        bars = ax.bar(x + shift, values, 0.34, label=label)
        ax.bar_label(bars, fmt="%.4f", fontsize=8)
    lo, hi = min(pbt + rs), max(pbt + rs)  # the differences are small: do not start at zero
    ax.set(
        xticks=x,
        xticklabels=[f"seed {r['seed']}" for r in rows],
        xlim=(-0.7, len(rows) - 0.3),
        ylim=(lo - 0.3 * (hi - lo) - 0.01, hi + 0.3 * (hi - lo) + 0.01),
        ylabel="best validation loss (lower is better)",
        title=f"equal compute: {rows[0]['pbt_epochs']} epochs each" if rows else "",
    )
    ax.legend()
    return ax


def study_curves(store, notes=None, ax=None):
    """Validation accuracy per epoch of every trial in a study: the dashboard's curves, static.
    `notes` (trial id -> words, e.g. "added by steering") draws those trials bold, so labelled."""
    notes = notes or {}
    if ax is None:
        _, ax = plt.subplots(figsize=(7, 3.8))
    for t in store.trial_ids():
        ms = store.metrics(t)
        if not ms:
            continue
        bold = t in notes
        ax.plot(
            [m["epoch"] for m in ms],
            [m.get("val_accuracy") for m in ms],
            "o-" if bold else ".-",
            lw=2.5 if bold else 1,
            alpha=1 if bold else 0.6,
            label=f"{t} ({store.status(t).get('status')})" + (f" {notes[t]}" if bold else ""),
        )
    ax.set(xlabel="epoch", ylabel="validation accuracy")
    ax.legend(fontsize=7, ncol=2)
    return ax


def pbt_schedule(lineage, chain, keys=("lr", "dropout"), axes=None):
    """Hyper-parameters across generations: every member (dots), the best lineage (line)."""
    if axes is None:
        _, axes = plt.subplots(1, len(keys), figsize=(5 * len(keys), 3.6))
    for ax, key in zip(axes, keys):
        ax.scatter(
            lineage["generation"], lineage[key].astype(float), s=18, alpha=0.5, label="population"
        )
        ax.plot(
            lineage.loc[chain, "generation"],
            lineage.loc[chain, key].astype(float),
            "o-",
            color="#cc0000",
            label="best lineage",
        )
        ax.set(
            xlabel="generation",
            ylabel=key,
            yscale="log" if key == "lr" else "linear",
            xticks=sorted(set(lineage["generation"])),
        )
        ax.legend(fontsize=8)
    return axes


def _not_in_this_run(ax, title: str) -> None:
    """An empty panel that says so: a run of some of the benchmarks records only their part."""
    ax.set(title=title, xticks=[], yticks=[])
    ax.text(0.5, 0.5, "not in this run", ha="center", va="center", transform=ax.transAxes)


def control_plane_at_scale(record: dict, axes=None):
    """bench_scale.json as four panels: the store and dashboard against study size, the
    scheduler's cost per task against engines, a random search's makespan against its bound,
    and PBT's overhead per generation (the last two made with simulated work). A panel whose
    benchmark the run left out says so."""
    if axes is None:
        _, axes = plt.subplots(1, 4, figsize=(17, 3.6))
    ax = axes[0]
    study = record.get("study")
    if study:
        n = [r["trials"] for r in study]
        for key, label in (
            ("open_cold_s", "open (read every trial)"),
            ("open_s", "open (saved table)"),
            ("full_reread_s", "poll, re-reading all"),
            ("poll_s", "poll, 1 % changed"),
        ):
            ax.plot(n, [r[key] for r in study], marker="o", label=label)
        ax.set(
            xscale="log",
            yscale="log",
            xlabel="trials in the study",
            ylabel="seconds",
            title="store and dashboard",
        )
        ax.legend(fontsize=7)
    else:
        _not_in_this_run(ax, "store and dashboard")
    ax = axes[1]
    sched = record.get("scheduler")
    if sched:
        x = [r["engines"] for r in sched]
        ax.plot(x, [r["ms_per_task"] for r in sched], marker="o", label="per task (1 / throughput)")
        ax.plot(
            x, [r["engine_gap_ms"] for r in sched], marker="s", label="an engine's wait per task"
        )
        ax.set(xlabel="engines", ylabel="milliseconds", title="IPyParallel scheduler")
        ax.legend(fontsize=7)
    else:
        _not_in_this_run(ax, "IPyParallel scheduler")
    ax = axes[2]
    m = record.get("makespan")
    if m:
        heights = {
            "lower\nbound": m["lower_bound"],
            "no schedule\nbeats": m["pigeonhole_bound"],
            "whole trials\n(measured)": m["measured"],
            "longest\nfirst": m["longest_first"],
            "round-\nrobin": m["round_robin"],
        }
        sliced = record.get("makespan_sliced")
        if sliced:  # the same trials, one epoch per task (its own bound differs a little)
            heights["an epoch per\ntask (measured)"] = sliced["measured"]
        bars = ax.bar(list(heights), list(heights.values()))
        ax.bar_label(bars, fmt="%.1f", fontsize=8)
        ax.set(
            ylabel="makespan [s]",
            title=f"{m['trials']} trials on {m['engines']} engines ({record.get('work', '')})",
        )
        ax.tick_params(axis="x", labelsize=7)
    else:
        _not_in_this_run(ax, "random search makespan")
    ax = axes[3]
    pbt = record.get("pbt")
    if pbt:
        ax.plot(
            range(len(pbt["overhead_fraction"])),
            [100 * f for f in pbt["overhead_fraction"]],
            marker="o",
        )
        ax.set(
            xlabel="generation",
            ylabel="overhead [% of the generation]",
            title=f"PBT, population {pbt['population']} on {pbt['workers']} workers",
        )
    else:
        _not_in_this_run(ax, "PBT")
    return axes


def peers(rows: list[dict], axes=None):
    """The peer benchmark: validation loss against epochs spent (best so far; thin lines per
    seed, thick the median over seeds), and the best loss per method and seed with its wall
    time, so that quality and cost read side by side."""
    import numpy as np

    if axes is None:
        _, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    by: dict = {}
    for r in rows:
        by.setdefault(r["method"], []).append(r)
    for i, (method, rs) in enumerate(by.items()):
        color = f"C{i}"
        curves = [np.asarray(r["anytime"], dtype=float) for r in rs]
        n = min(map(len, curves))
        for c in curves:
            axes[0].plot(np.arange(1, len(c) + 1), c, color=color, lw=0.6, alpha=0.4)
        median = np.median([c[:n] for c in curves], axis=0)
        axes[0].plot(np.arange(1, n + 1), median, color=color, lw=2, label=method)
        axes[1].scatter(
            [r["wall_s"] for r in rs], [r["best_val_loss"] for r in rs], color=color, label=method
        )
    axes[0].set(xlabel="epochs spent", ylabel="best validation loss so far", title="Anytime")
    axes[1].set(xlabel="wall time (s)", ylabel="best validation loss", title="Per seed")
    axes[0].legend(fontsize=8)
    axes[1].legend(fontsize=8)
    plt.tight_layout()
    return axes


def flop_limit(figures: dict, ax=None):
    """One core's speed against its limit: the GFLOP/s of a large matrix multiply (the most this
    core computes, in float32 and bfloat16) beside the CNN's training (samples/s x FLOPs per
    training sample), each bar labelled with its share of the same precision's multiply."""
    if ax is None:
        _, ax = plt.subplots(figsize=(7, 2.6))
    bars = []  # (label, GFLOP/s, the multiply it is compared with)
    for precision, dtype in (("float32", "float32"), ("mixed_bfloat16", "bfloat16")):
        peak = figures.get(f"matmul_1core_{dtype}_gflops")
        train = figures.get(f"train_{precision}_gflops")
        if peak:
            bars.append((f"matrix multiply, {dtype}", peak, peak))
        if train:
            bars.append((f"CNN training, {precision}", train, peak))
    bars.reverse()  # barh draws the first bar at the bottom
    labels, values = [b[0] for b in bars], [b[1] for b in bars]
    ax.barh(labels, values, color=["C1" if "training" in s else "0.6" for s in labels])
    for y, (_, v, peak) in enumerate(bars):
        share = f" ({v / peak:.0%} of its multiply)" if peak and v != peak else ""
        ax.text(v, y, f" {v:.0f}{share}", va="center", fontsize=8)
    ax.set(xlabel="GFLOP/s on one core", xlim=(0, max(values, default=1) * 1.45))
    plt.tight_layout()
    return ax
