"""Single-process training: learns on tiny data, writes its files, never mutates callbacks."""

import json
import math

import pytest

from lhccnn.config import smoke
from lhccnn.train import main, scaled_lr, train


def test_lr_scaling_rules():
    assert scaled_lr(1e-3, 4, "none") == 1e-3
    assert scaled_lr(1e-3, 4, "linear") == pytest.approx(4e-3)
    assert scaled_lr(1e-3, 4, "sqrt") == pytest.approx(2e-3)
    with pytest.raises(ValueError, match="lr_scaling"):
        scaled_lr(1e-3, 4, "cube")


@pytest.fixture(scope="module")
def trained(tiny_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    cbs = []
    result = train(smoke().replace(epochs=3, verbose=0), data=tiny_data, out_dir=out, callbacks=cbs)
    return result, out, cbs


def test_short_training_beats_chance(trained):
    result, _, _ = trained
    t = result["test"]
    assert t["auc"] > 0.75, t
    assert t["accuracy"] > t["majority_rate"] + 0.05, t
    assert not result["collapsed"]


def test_training_writes_history_checkpoint_and_metrics(trained):
    result, out, _ = trained
    history = json.loads((out / "history.json").read_text())
    assert [h["epoch"] for h in history] == [1, 2, 3]
    assert all(h["samples_per_s"] > 0 and math.isfinite(h["loss"]) for h in history)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["test"]["auc"] == pytest.approx(result["test"]["auc"])
    assert (out / "checkpoint.h5").stat().st_size > 100_000  # 137k float32 weights
    assert not list(out.glob("*.tmp*"))


def test_callbacks_argument_is_not_mutated(trained):
    _, _, cbs = trained
    assert cbs == []  # upstream's train_model(callbacks=[]) accumulated callbacks across calls


def test_cli_reports_missing_data_clearly(tmp_path, capsys):
    assert main(["--smoke", "--data", str(tmp_path), "--verbose", "0"]) == 2
    err = capsys.readouterr().err
    assert "train.h5" in err and "no such file" in err
