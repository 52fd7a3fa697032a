"""The results module: one JSON convention for notebooks' and benchmarks' figures."""

import numpy as np
import pytest

from lhccnn import results


def test_a_record_with_numpy_values_round_trips_and_a_missing_one_reads_as_none(tmp_path):
    record = {"n": np.int64(3), "x": np.float32(0.5), "v": np.arange(3), "path": tmp_path}
    path = results.write("01_demo", record, tmp_path / "out")
    assert path == tmp_path / "out" / "01_demo.json"
    assert results.read("01_demo", tmp_path / "out") == {
        "n": 3,
        "x": 0.5,
        "v": [0, 1, 2],
        "path": str(tmp_path),
    }
    assert results.read("02_never_written", tmp_path / "out") is None


def test_a_damaged_record_is_named_and_the_folder_defaults_to_lhccnn_results(tmp_path, monkeypatch):
    monkeypatch.setenv("LHCCNN_RESULTS", str(tmp_path))
    assert results.folder(None) == results.folder("") == tmp_path
    (tmp_path / "bad.json").write_text('{"half": ')
    with pytest.raises(ValueError, match=r"bad.json is not valid JSON"):
        results.read("bad")


def test_a_benchmark_record_holds_the_machine_targets_and_figures(tmp_path, capsys):
    results.write_bench("bench_x", "X", {"speed": ">= 1"}, {"speed": 2.0, "n": 4}, tmp_path)
    rec = results.read("bench_x", tmp_path)
    assert rec["targets"] == {"speed": ">= 1"} and rec["figures"] == {"speed": 2.0, "n": 4}
    assert rec["machine"]["cpus"] >= 1 and len(rec["machine"]["load_average_1_5_15_min"]) == 3
    assert "(target >= 1)" in capsys.readouterr().out


def test_the_newest_figures_are_this_checkouts_then_the_books_recorded_run(tmp_path, monkeypatch):
    recorded, mine = tmp_path / "recorded", tmp_path / "results"
    monkeypatch.setattr(results, "RECORDED", recorded)
    record, why = results.newest("bench_x", mine)
    assert record is None and "make bench" in why
    results.write("bench_x", {"figures": {"size": "full", "a": 1}}, recorded)
    record, why = results.newest("bench_x", mine)
    assert record["figures"]["a"] == 1 and "book/recorded" in why
    results.write("bench_x", {"figures": {"size": "ci"}}, mine)  # a smoke run, without "a"
    assert "book/recorded" in results.newest("bench_x", mine, key="a")[1]
    record, why = results.newest("bench_x", mine)
    assert record["figures"]["size"] == "ci" and "this checkout" in why
    # the scale page: make test's smaller run must not hide the full run recorded for the book
    record, why = results.newest("bench_x", mine, full=True)
    assert "book/recorded" in why
    results.write("bench_x", {"figures": {"size": "full", "a": 2}}, mine)
    assert results.newest("bench_x", mine, full=True)[0]["figures"]["a"] == 2


def test_each_run_gets_a_new_empty_folder_even_within_one_second(tmp_path):
    made = [results.new_folder(tmp_path / "04_widget_hpo") for _ in range(3)]
    assert len(set(made)) == 3 and all(p.parent == tmp_path / "04_widget_hpo" for p in made)
    assert all(p.is_dir() and not any(p.iterdir()) for p in made)
