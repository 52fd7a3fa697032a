"""The book's benchmarks page: a section whose benchmark has not run shows the figures of the
notebook that measures the same thing, said to be the notebook's."""

import matplotlib.pyplot as plt
import pytest
from IPython.display import Markdown
from matplotlib.figure import Figure

from lhccnn import benchpage, results

SCALING_ROWS = [
    {"mode": mode, "workers": w, "samples_per_s": 700.0 * w + i}
    for mode in ("notebook", "batch")
    for w in (1, 2)
    for i in range(2)
]
TEST = {"accuracy": 0.9, "weighted_accuracy": 0.8, "auc": 0.95, "weighted_auc": 0.9}
# the smallest records the notebooks' last cells write, with the fields the page reads
NOTEBOOKS = {
    "01_cluster_startup": {
        "nodes": 2,
        "engines": 2,
        "local": False,
        "startup_seconds": 7.2,
        "stop_seconds": 2.1,
        "tasks": 100,
        "per_task_ms": 7.5,
        "jobs_left": [],
    },
    "02_horovod_scaling": {
        "rows": SCALING_ROWS,
        "ratios": {"notebook_over_batch": {"1": 1.0, "2": 0.99}},  # JSON keys are text
        "main": {
            "size": 2,
            "samples_per_s": 1400.0,
            "test": {**TEST, "majority_rate": 0.57},
            "collapsed": False,
        },
    },
    "03_random_search_hpo": {
        "n_trials": 4,
        "statuses": {"completed": 3, "diverged": 1},
        "best": {
            "trial": "trial-0001",
            "val_accuracy": 0.91,
            "optimizer": "Adam",
            "lr": 0.001,
            "dropout": 0.2,
        },
        "makespan": {"lower_bound": 20.0, "measured": 21.0, "greedy": 21.0, "round_robin": 23.0},
    },
    "05_pbt_genetic": {
        "history": [
            {"generation": g, "mean_val_loss": 0.6 - g / 10, "best_val_loss": 0.5 - g / 10}
            for g in range(3)
        ],
        "comparison": [
            {
                "seed": 0,
                "pbt_best_val_loss": 0.48,
                "random_best_val_loss": 0.5,
                "pbt_epochs": 12,
                "random_epochs": 12,
                "pbt_s": 20.0,
                "random_s": 18.0,
                "pbt_wins": True,
            }
        ],
        "best_val_loss": 0.48,
        "pbt_wins": 1,
        "seeds": 1,
    },
}
# which notebook stands in for each section's benchmark
STAND_INS = {
    "throughput": "02",
    "cluster": "01",
    "notebook_vs_batch": "02",
    "random_search": "03",
    "pbt": "05",
}


def shown(section, where):
    """A section's parts: the text of its notes, and the tables and figures it shows."""
    parts = benchpage.SECTIONS[section](benchpage.records(where))
    notes = [p.data for p in parts if isinstance(p, Markdown)]
    return notes, [p for p in parts if not isinstance(p, Markdown)]


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


@pytest.mark.parametrize("section", sorted(STAND_INS))
def test_a_section_without_its_benchmark_shows_the_notebooks_figures_as_the_notebooks(
    section, tmp_path
):
    for name, record in NOTEBOOKS.items():
        results.write(name, record, tmp_path)
    notes, figures = shown(section, tmp_path)
    assert figures, "the notebook's figures stand in for the missing benchmark's"
    assert any("`make bench` writes it" in n for n in notes)  # the benchmark is still named
    assert any(f"notebook {STAND_INS[section]}'s own figures" in n for n in notes)
    assert not any("make all" in n for n in notes)  # the notebook's record was found


def test_sections_with_nothing_recorded_name_the_commands_and_show_only_the_machine(tmp_path):
    for section in STAND_INS:
        notes, figures = shown(section, tmp_path)
        assert not figures
        assert any("`make bench` writes it" in n for n in notes)
        assert any("`make all` writes it" in n for n in notes)
    notes, figures = shown("machine", tmp_path)
    assert len(figures) == 1 and "`make bench` writes it" in notes[0]  # the book build's


def test_a_recorded_benchmark_is_shown_and_its_notebook_beside_it_not_in_its_place(tmp_path):
    figures = {"start_median_s": 3.0, "stop_median_s": 1.0, "per_task_ms": 6.0, "rows": []}
    results.write_bench("bench_cluster", "cluster", {"per_task_ms": "< 50"}, figures, tmp_path)
    results.write("01_cluster_startup", NOTEBOOKS["01_cluster_startup"], tmp_path)
    notes, figures = shown("cluster", tmp_path)
    assert notes == ["Notebook 01 records the same kind of figures for its own cluster:"]
    bench_table, notebook_table = figures
    assert list(bench_table.data.index) == ["start_median_s", "stop_median_s", "per_task_ms"]
    assert notebook_table.index.name == "notebook 01"
    notes, _ = shown("machine", tmp_path)
    assert notes == []  # the benchmark's machine is known


PRECISION = {  # the figures the foundation benchmark records for one core
    "train_float32_samples_per_s": 3300.0,
    "train_float32_gflops": 55.0,
    "train_float32_val_loss": 0.28,
    "train_float32_val_accuracy": 0.9,
    "train_mixed_bfloat16_samples_per_s": 4400.0,
    "train_mixed_bfloat16_gflops": 73.0,
    "train_mixed_bfloat16_val_loss": 0.31,
    "train_mixed_bfloat16_val_accuracy": 0.89,
    "matmul_1core_float32_gflops": 97.0,
    "matmul_1core_bfloat16_gflops": 193.0,
    "cpu_bfloat16_flags": "avx512_bf16",
}


def test_one_core_shows_a_full_size_run_only_else_the_one_recorded_for_the_book(
    tmp_path, monkeypatch
):
    recorded, here = tmp_path / "recorded", tmp_path / "here"
    monkeypatch.setattr(results, "RECORDED", recorded)
    notes, figures = shown("one_core", here)
    assert not figures and "LHCCNN_BENCH=full make bench" in notes[0]

    results.write_bench("bench", "b", {}, {**PRECISION, "size": "full"}, recorded)
    results.write_bench("bench", "b", {}, {**PRECISION, "size": "ci"}, here)
    notes, (fig, tab) = shown("one_core", here)
    assert "recorded for the book" in notes[0] and "avx512_bf16" in notes[0]
    bars = {t.get_text().split("(")[0].strip(): t for t in fig.axes[0].get_yticklabels()}
    assert len(bars) == 4 and "CNN training, mixed_bfloat16" in bars
    # each training bar says its share of the multiply of its own precision
    shares = [t.get_text() for t in fig.axes[0].texts]
    assert any("57% of its multiply" in s for s in shares)  # 55 of 97
    assert any("38% of its multiply" in s for s in shares)  # 73 of 193
    assert list(tab.index) == ["float32", "mixed_bfloat16"]
    assert tab.loc["mixed_bfloat16", "samples/s"] == 4400

    results.write_bench("bench", "b", {}, {**PRECISION, "size": "full"}, here)
    notes, _ = shown("one_core", here)
    assert "this checkout's" in notes[0]


def test_the_throughput_section_leaves_one_cores_figures_to_their_own_section(tmp_path):
    figures = {"size": "full", "train_1rank_1thread_samples_per_s": 3300.0, **PRECISION}
    results.write_bench("bench", "b", {}, figures, tmp_path)
    _, (tab,) = shown("throughput", tmp_path)
    assert list(tab.data.index) == ["size", "train_1rank_1thread_samples_per_s"]


def test_notebook_vs_batch_shows_the_idle_comm_threads_runs_beside_the_default_and_the_ceiling(
    tmp_path,
):
    rows = SCALING_ROWS + [
        {"mode": mode, "workers": 2, "samples_per_s": s}
        for mode, s in (("notebook+idle", 1800.0), ("batch+idle", 1850.0), ("independent", 2000.0))
    ]
    from lhccnn import scaling

    results.write(
        "02_horovod_scaling",
        {**NOTEBOOKS["02_horovod_scaling"], "rows": rows, "ratios": scaling.ratios(rows)},
        tmp_path,
    )
    _, (fig, tab, _) = shown("notebook_vs_batch", tmp_path)
    assert tab.loc[2, "notebook / batch+idle"] == round(1800 / 1850, 3)
    assert tab.loc[2, "batch+idle / ceiling"] == round(1850 / 2000, 3)
    assert tab.loc[2, "batch / ceiling"] == round(1400.5 / 2000, 3)  # median of 1400 and 1401
    labels = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert "notebook+idle (median)" in labels and "ceiling (independent)" in labels
    assert len(fig.axes[1].get_lines()) == 3  # two ratios and the line at 1


def test_pinned_runs_are_shown_against_the_pinned_ceiling(tmp_path):
    rows = SCALING_ROWS + [
        {"mode": mode, "workers": 2, "samples_per_s": s}
        for mode, s in (
            ("notebook+pinned", 1900.0),
            ("batch+pinned", 2000.0),
            ("independent", 2000.0),
            ("independent+pinned", 2100.0),
        )
    ]
    from lhccnn import scaling

    results.write(
        "02_horovod_scaling",
        {**NOTEBOOKS["02_horovod_scaling"], "rows": rows, "ratios": scaling.ratios(rows)},
        tmp_path,
    )
    _, (fig, tab, _) = shown("notebook_vs_batch", tmp_path)
    assert tab.loc[2, "notebook / batch+pinned"] == 0.95
    assert tab.loc[2, "batch+pinned / ceiling"] == round(2000 / 2100, 3)
    assert tab.loc[2, "batch / ceiling"] == round(1400.5 / 2000, 3)
    labels = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert "batch+pinned (median)" in labels and "ceiling (independent, pinned)" in labels
    ratio_labels = [t.get_text() for t in fig.axes[1].get_legend().get_texts()]
    assert "notebook / batch, pinned" in ratio_labels


def test_the_cluster_benchmarks_timeline_shows_where_rank_0s_time_went(tmp_path):
    shares = {
        "batch": {"compute": 0.8, "waiting_for_peers": 0.15, "allreduce": 0.05},
        "batch+idle": {"compute": 0.9, "waiting_for_peers": 0.07, "allreduce": 0.03},
    }
    figures = {"rows": SCALING_ROWS, "notebook_over_batch": {"1": 1.0, "2": 1.0}}
    results.write_bench(
        "bench_cluster", "c", {}, {**figures, "time_shares_2_workers": shares}, tmp_path
    )
    _, parts = shown("notebook_vs_batch", tmp_path)
    (bars,) = [p for p in parts if isinstance(p, Figure) and "rank 0" in p.axes[0].get_xlabel()]
    assert [t.get_text() for t in bars.axes[0].get_yticklabels()] == ["batch", "batch+idle"]
    assert "15%" in [t.get_text() for t in bars.axes[0].texts]
    (tab,) = [
        p
        for p in parts
        if getattr(p, "index", None) is not None and p.index.name == "rank 0's time, 2 workers"
    ]
    assert tab.loc["batch+idle", "waiting_for_peers"] == 0.07
