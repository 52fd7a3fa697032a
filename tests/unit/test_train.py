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


def test_cli_refuses_a_timeline_without_horovod(tmp_path, capsys):
    assert main(["--smoke", "--timeline", str(tmp_path / "t.json")]) == 2
    assert "--timeline records Horovod's timeline: it needs --horovod" in capsys.readouterr().err
    assert not (tmp_path / "t.json").exists()


def test_warmup_ramps_lr_linearly_to_the_scaled_value():
    import numpy as np
    import tensorflow as tf

    from lhccnn.callbacks import WarmupLR

    model = tf.keras.Sequential([tf.keras.Input((2,)), tf.keras.layers.Dense(1)])
    model.compile(optimizer=tf.keras.optimizers.legacy.SGD(1e-3), loss="mse")
    seen = []
    record = tf.keras.callbacks.LambdaCallback(
        on_train_batch_end=lambda b, logs: seen.append(float(model.optimizer.lr.numpy()))
    )
    x, y = np.zeros((40, 2), "float32"), np.zeros((40, 1), "float32")
    model.fit(
        x,
        y,
        batch_size=10,
        epochs=3,
        verbose=0,
        callbacks=[WarmupLR(1e-3, 4e-3, epochs=2, steps_per_epoch=4), record],
    )
    # 8 warm-up steps: lr = 1e-3 + 3e-3 * step / 8, then it stays at the target
    np.testing.assert_allclose(seen[:8], [1e-3 + 3e-3 * s / 8 for s in range(8)], rtol=1e-5)
    np.testing.assert_allclose(seen[8:], [4e-3] * 4, rtol=1e-5)


def test_config_round_trips_through_cli_arguments():
    from lhccnn.config import TrainConfig
    from lhccnn.train import config_from_args, config_to_args, parse_args

    c = TrainConfig(
        n_train=5000,
        epochs=3,
        streaming=False,
        lr_scaling="sqrt",
        precision="mixed_bfloat16",
        idle_comm_threads=True,
        pin_cores=True,
    ).replace(model_conv_sizes=(4, 8), model_lr=0.01, model_optimizer="Nadam")
    assert config_from_args(parse_args(config_to_args(c))) == c


def test_ranks_on_one_machine_split_its_cores_and_a_rank_alone_keeps_them_all():
    from lhccnn.train import core_share

    two = ["a", "a"]
    assert [core_share(two, r, [0, 1]) for r in (0, 1)] == [[0], [1]]
    # the paper's layout on real nodes: one rank per machine keeps every core it may use
    assert core_share(["a", "b"], 1, [0, 1, 2, 3]) == [0, 1, 2, 3]
    # 3 ranks on 4 cores: every core used, none twice; 3 ranks on 2 cores: in turn
    assert [core_share(["a"] * 3, r, [0, 1, 2, 3]) for r in range(3)] == [[0], [1], [2, 3]]
    assert [core_share(["a"] * 3, r, [4, 5]) for r in range(3)] == [[4], [5], [4]]
    # ranks of two machines, interleaved: each machine's ranks split its own cores
    mixed = ["a", "b", "a", "b"]
    assert [core_share(mixed, r, [0, 1]) for r in range(4)] == [[0], [0], [1], [1]]
