"""The scaling study's arithmetic: medians per mode and worker count, notebook/batch, and the
efficiency against the ideal and against the measured ceiling of independent trainings."""

import json

import pytest

from lhccnn import scaling


def _row(mode, workers, sps):
    return {"mode": mode, "workers": workers, "samples_per_s": sps}


def test_efficiency_against_the_ideal_and_the_ceiling():
    rows = [
        _row("notebook", 1, 1000), _row("batch", 1, 1000), _row("batch", 1, 1100),
        _row("notebook", 2, 1700), _row("batch", 2, 1800),
        _row("independent", 2, 1900), _row("independent", 2, 1850), _row("independent", 2, 2000),
    ]  # fmt: skip
    r = scaling.ratios(rows)
    assert r["notebook_over_batch"] == {
        1: pytest.approx(1000 / 1050),
        2: pytest.approx(1700 / 1800),
    }
    assert r["efficiency"]["batch"][2] == pytest.approx(1800 / (2 * 1050))
    assert r["of_ceiling"] == {"notebook": {2: 1700 / 1900}, "batch": {2: 1800 / 1900}}


def test_runs_with_idle_comm_threads_are_their_own_modes_on_the_same_one_worker_base():
    rows = [
        _row("notebook", 1, 1000), _row("batch", 1, 1000),
        _row("notebook", 2, 1600), _row("batch", 2, 1700),
        _row("notebook+idle", 2, 1800), _row("batch+idle", 2, 1900), _row("batch+idle", 2, 1850),
        _row("independent", 2, 2000),
    ]  # fmt: skip
    r = scaling.ratios(rows)
    assert r["notebook_over_batch"] == {1: 1.0, 2: pytest.approx(1600 / 1700)}
    assert r["notebook_over_batch+idle"] == {2: pytest.approx(1800 / 1875)}
    assert r["efficiency"]["batch+idle"] == {2: pytest.approx(1875 / 2000)}
    assert r["of_ceiling"]["notebook+idle"] == {2: pytest.approx(0.9)}
    assert r["of_ceiling"]["batch"] == {2: pytest.approx(0.85)}


def test_pinned_runs_are_measured_against_the_pinned_ceiling_on_the_unpinned_base():
    rows = [
        _row("notebook", 1, 1000), _row("batch", 1, 1000),
        _row("batch", 2, 1700), _row("independent", 2, 2000),
        _row("notebook+pinned", 2, 1800), _row("batch+pinned", 2, 2000),
        _row("batch+idle+pinned", 2, 2100), _row("notebook+idle+pinned", 2, 2100),
        _row("independent+pinned", 2, 2200),
    ]  # fmt: skip
    r = scaling.ratios(rows)
    assert r["notebook_over_batch+pinned"] == {2: pytest.approx(0.9)}
    assert r["notebook_over_batch+idle+pinned"] == {2: 1.0}
    assert r["efficiency"]["batch+pinned"] == {2: 1.0}  # 2 x the one worker's 1000
    assert r["of_ceiling"]["batch+pinned"] == {2: pytest.approx(2000 / 2200)}
    assert r["of_ceiling"]["batch"] == {2: pytest.approx(0.85)}  # the unpinned ceiling


def test_no_ceiling_measured_no_ceiling_ratio():
    rows = [_row("notebook", 1, 1000), _row("batch", 1, 1000)]
    assert "of_ceiling" not in scaling.ratios(rows)


@pytest.mark.slow
def test_ceiling_run_sums_independent_trainings(tiny_data, tmp_path):
    from lhccnn.config import TrainConfig

    config = TrainConfig(n_train=512, n_val=128, epochs=2, batch_size=64, warmup_epochs=0.0)
    row = scaling.ceiling_run(config, 2, tmp_path, data=tiny_data, local=True, n_test=128)
    assert row["mode"] == "independent" and len(row["task_samples_per_s"]) == 2
    assert row["samples_per_s"] == pytest.approx(sum(row["task_samples_per_s"]))
    for i in range(2):  # each trained one rank's share, on its own
        cfg = (tmp_path / row["out"].split("/")[-1] / f"task{i}" / "config.json").read_text()
        assert '"n_train": 256' in cfg


def test_ranks_are_laid_out_one_per_node_or_packed_as_asked():
    assert scaling.layout(4) == (4, 1)  # the paper's layout
    assert scaling.layout(4, 2) == (2, 2) and scaling.layout(3, 2) == (2, 2)
    assert scaling.layout(1, 2) == (1, 1)
    for bad in (0, -1, 1.5, True, "2"):
        with pytest.raises(ValueError, match=rf"ranks_per_node .* got {bad!r}"):
            scaling.layout(2, bad)


def _timeline(steps):
    """A Horovod timeline as rank 0 writes it: per tensor, negotiation, then the allreduce with
    its MPI part nested inside (times in microseconds)."""
    events = [{"name": "process_name", "ph": "M", "pid": 0, "args": {}}]
    for step in steps:
        for pid, (queued, agreed, reduced) in step.items():
            events += [
                {"ph": "B", "name": "NEGOTIATE_ALLREDUCE", "ts": queued, "pid": pid},
                {"ph": "X", "name": "1", "ts": agreed, "pid": pid, "dur": 0},
                {"ph": "E", "ts": agreed, "pid": pid},
                {"ph": "B", "name": "ALLREDUCE", "ts": agreed, "pid": pid},
                {"ph": "B", "name": "MPI_ALLREDUCE", "ts": agreed + 1, "pid": pid},
                {"ph": "E", "ts": reduced - 1, "pid": pid},
                {"ph": "E", "ts": reduced, "pid": pid},
            ]
    return json.dumps(events)


def test_the_timeline_says_how_long_rank_0_waited_for_its_peers_and_for_the_allreduce(tmp_path):
    # step 1: rank 0 queues its last gradient at 1000 us, the other rank at 3000 (2 ms of waiting
    # for a peer), the sum is back at 3500; step 2: no one waits, the allreduce takes 1 ms
    steps = [
        {1: (0, 100, 3500), 2: (1000, 3000, 3500)},
        {1: (10_000, 10_010, 11_510), 2: (10_500, 10_510, 11_510)},
    ]
    path = tmp_path / "timeline.json"
    path.write_text(_timeline(steps))
    t = scaling.timeline_steps(path)
    assert t["steps"] == 2
    assert t["span_s"] == pytest.approx(0.011510)
    assert t["waiting_for_peers_s"] == pytest.approx(0.002010)
    assert t["allreduce_s"] == pytest.approx(0.0015)
    assert t["compute_s"] == pytest.approx(0.008)
    assert t["median_allreduce_ms"] == pytest.approx(0.75)

    # a run that crashed leaves the file without its closing bracket, cut after an event
    path.write_text(_timeline(steps[:1]).rstrip("]") + ",")
    assert scaling.timeline_steps(path)["steps"] == 1
    path.write_text("[\n")
    with pytest.raises(ValueError, match="no allreduce in this Horovod timeline"):
        scaling.timeline_steps(path)


def test_time_shares_are_medians_over_the_repeats_of_each_parts_share():
    def timed(mode, compute, wait, reduce):
        t = {"compute_s": compute, "waiting_for_peers_s": wait, "allreduce_s": reduce}
        return {**_row(mode, 2, 1000), "timeline": {**t, "span_s": compute + wait + reduce}}

    rows = [
        timed("batch", 8, 1, 1), timed("batch", 6, 2, 2), timed("batch", 9, 0.5, 0.5),
        timed("batch+idle", 9, 0.5, 0.5), _row("independent", 2, 2000),
    ]  # fmt: skip
    shares = scaling.time_shares(rows)
    assert set(shares) == {("batch", 2), ("batch+idle", 2)}  # runs without a timeline: none
    assert shares[("batch", 2)] == pytest.approx(
        {"compute": 0.8, "waiting_for_peers": 0.1, "allreduce": 0.1}
    )


def test_the_scaling_plot_draws_a_study_of_the_idle_option_alone():
    import matplotlib.pyplot as plt

    from lhccnn import plots

    rows = [
        _row("notebook+idle", 2, 1800),
        _row("batch+idle", 2, 1900),
        _row("independent", 2, 2000),
    ]
    axes = plots.scaling(rows)
    labels = [t.get_text() for t in axes[0].get_legend().get_texts()]
    assert labels == [
        "notebook+idle (median)",
        "batch+idle (median)",
        "ideal",
        "ceiling (independent)",
    ]
    (ratio,) = [line for line in axes[1].get_lines() if line.get_label().startswith("notebook")]
    assert list(ratio.get_ydata()) == pytest.approx([1800 / 1900])
    plt.close("all")
