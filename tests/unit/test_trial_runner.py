"""run_trial in this process: completes, resumes from its verified checkpoint (optimizer state
included), stops on request, diverges, and fails at once, with its reason, on its own errors."""

import subprocess
import sys
import threading
import time

import pytest

from lhccnn.config import smoke
from lhccnn.hpo import run_trial
from lhccnn.space import validate_space
from lhccnn.store import Store

BASE = smoke().replace(n_train=1024, n_val=256, epochs=2)


def test_trial_completes_and_writes_metrics_checkpoint_and_test_result(tiny_data, tmp_path):
    store = Store(tmp_path)
    t = store.create_trial({"lr": 3e-3, "dropout": 0.2})
    st = run_trial(str(tmp_path), t, BASE, str(tiny_data), n_test=256)
    assert st["status"] == "completed" and st["attempt"] == 1 and st["seconds"] > 0
    assert [m["epoch"] for m in store.metrics(t)] == [1, 2]
    assert store.verify_checkpoint(t)["epoch"] == 2
    assert store.checkpoint(t).stat().st_size > 100_000
    assert 0.5 < st["test"]["auc"] <= 1


def test_asking_where_a_task_runs_imports_no_dask():
    # an IPyParallel engine's first task paid for importing distributed only to ask if it was a
    # Dask worker: about 8 s of the first task with 64 engines on 2 cores
    code = (
        "import sys; from lhccnn.runner import engine_identity as e; "
        "print(e(), 'distributed' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "(None, None) False", out.stdout + out.stderr


def test_a_trial_trained_one_epoch_per_task_waits_queued_between_its_tasks(tiny_data, tmp_path):
    store = Store(tmp_path)
    t = store.create_trial({"lr": 3e-3, "dropout": 0.2})
    first = run_trial(str(tmp_path), t, BASE, str(tiny_data), n_test=256, epochs_per_task=1)
    assert first["status"] == "queued" and first["token"] is None and "test" not in first
    assert [m["epoch"] for m in store.metrics(t)] == [1]
    assert store.verify_checkpoint(t)["epoch"] == 1 and not store.attempt_alive(t, first)
    st = run_trial(str(tmp_path), t, BASE, str(tiny_data), n_test=256, epochs_per_task=1)
    assert st["status"] == "completed" and st["attempt"] == 2 and 0.5 < st["test"]["auc"] <= 1
    assert [m["epoch"] for m in store.metrics(t)] == [1, 2]  # resumed: nothing trained twice
    # the trial's time in tasks is both slices', and its start the first's
    assert st["first_task_started"] == first["first_task_started"] < st["task_started"]
    assert st["task_seconds"] > first["slice_seconds"] > 0


def test_a_checkpoint_keeps_the_optimizer_state_and_an_ended_trial_is_not_run_again(
    tiny_data, tmp_path
):
    from lhccnn.hpo import trial_config
    from lhccnn.model import build_model

    store = Store(tmp_path)
    t = store.create_trial({"lr": 3e-3})
    run_trial(str(tmp_path), t, BASE.replace(epochs=1), str(tiny_data), n_test=256)
    first = store.metrics(t)[0]
    model = build_model(trial_config(BASE, store.config(t)).model)
    assert store.load_checkpoint(model, t, optimizer="Adam")["optimizer_loaded"]
    assert int(model.optimizer.iterations) == 1024 // BASE.batch_size  # one epoch of steps
    # a trial that ended is not trained again by a late duplicate of its task
    st = run_trial(str(tmp_path), t, BASE.replace(epochs=3), str(tiny_data), n_test=256)
    assert st["ran"] is False and store.metrics(t) == [first]


def test_an_attempt_killed_mid_trial_is_taken_over_from_its_checkpoint(tiny_data, tmp_path):
    import multiprocessing as mp

    store = Store(tmp_path)
    t = store.create_trial({"lr": 3e-3})
    ctx = mp.get_context("spawn")  # TensorFlow in the child: no fork
    child = ctx.Process(
        target=run_trial, args=(str(tmp_path), t, BASE.replace(epochs=30), str(tiny_data), 256)
    )
    child.start()
    deadline = time.monotonic() + 120
    while len(store.metrics(t)) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    child.kill()  # SIGKILL: no handler runs, the status says "running"
    child.join()
    done = [r["epoch"] for r in store.metric_rows(t)]
    st = run_trial(str(tmp_path), t, BASE.replace(epochs=done[-1] + 1), str(tiny_data), n_test=256)
    assert st["status"] == "completed" and st["attempt"] == 2
    rows = store.metric_rows(t)
    assert [r["epoch"] for r in rows] == list(range(1, done[-1] + 2))  # no epoch trained twice
    assert [r["attempt"] for r in rows][-1] == 2
    assert [a["event"] for a in store.attempts(t)] == ["begin", "lost", "begin", "end"]


def test_a_corrupt_checkpoint_restarts_the_trial_from_scratch_with_a_warning(tiny_data, tmp_path):
    store = Store(tmp_path)
    t = store.create_trial({"lr": 3e-3, "dropout": 0.2})
    attempt = store.begin_attempt(t)
    attempt.save_checkpoint(_tiny_model(), epoch=1)  # recorded, then damaged
    attempt.append_metrics({"epoch": 1, "loss": 9.0})
    store.checkpoint(t).write_bytes(b"not an hdf5 file")
    attempt.finish("stopped")
    store.requeue(t)
    with pytest.warns(
        RuntimeWarning, match=rf"{t}: checkpoint unusable .*checkpoint[^ ]*\.h5: sha256"
    ):
        st = run_trial(str(tmp_path), t, BASE, str(tiny_data), n_test=256)
    assert st["status"] == "completed"
    assert [(r["epoch"], r["attempt"]) for r in store.metrics(t)] == [(1, 2), (2, 2)]


def _tiny_model():
    from lhccnn.config import ModelConfig
    from lhccnn.model import build_model

    return build_model(ModelConfig(conv_sizes=(2,), dense_sizes=(4,)))


def test_stop_request_ends_the_trial_within_an_epoch(tiny_data, tmp_path):
    store = Store(tmp_path)
    t = store.create_trial({"lr": 1e-3})

    def stop_after_first_epoch():
        while not store.metrics(t):
            time.sleep(0.05)
        store.request_stop(t)

    threading.Thread(target=stop_after_first_epoch, daemon=True).start()
    st = run_trial(str(tmp_path), t, BASE.replace(epochs=50), str(tiny_data), n_test=256)
    assert st["status"] == "stopped"
    assert len(store.metrics(t)) <= 2  # stopped inside the epoch after the request
    assert not store.stop_requested(t)  # the request is consumed: a restart runs


def test_nan_loss_marks_the_trial_diverged(tiny_data, tmp_path):
    store = Store(tmp_path)
    t = store.create_trial({"optimizer": "SGD", "lr": 1e6})
    st = run_trial(str(tmp_path), t, BASE, str(tiny_data), n_test=256)
    assert st["status"] == "diverged" and "NaN" in st["reason"], st


def test_a_model_predicting_only_the_majority_class_is_marked_diverged(
    tiny_data, tmp_path, monkeypatch
):
    # the collapse the upstream 16- and 64-node runs showed: accuracy == 1 - mean(y)
    import lhccnn.train

    def collapsed(model, path, n=None, batch_size=512):
        return {"n": 256, "accuracy": 0.5703, "majority_rate": 0.5703, "auc": 0.5}

    monkeypatch.setattr(lhccnn.train, "evaluate", collapsed)
    store = Store(tmp_path)
    t = store.create_trial({"lr": 1e-3})
    st = run_trial(str(tmp_path), t, BASE.replace(epochs=1), str(tiny_data), n_test=256)
    assert st["status"] == "diverged" and "majority class" in st["reason"]


@pytest.mark.parametrize(
    "hp, data, reason",
    [
        ({"conv_sizes": [4] * 7}, None, "conv_sizes 4,4,4,4,4,4,4 has 7 conv/pool blocks"),
        ({"lr": 1e-3}, "missing", "train.h5"),
    ],
)
def test_a_trial_that_cannot_run_fails_at_once_with_its_reason_instead_of_raising(
    tiny_data, tmp_path, hp, data, reason
):
    store = Store(tmp_path / "study")
    t = store.create_trial(hp)  # e.g. a config edited by hand, past the search-space checks
    t0 = time.monotonic()
    st = run_trial(str(store.root), t, BASE, str(tmp_path / data) if data else str(tiny_data))
    assert st["status"] == "failed" and reason in st["reason"]
    assert time.monotonic() - t0 < 30


def test_the_search_space_refuses_more_conv_blocks_than_the_image_has_room_for():
    from lhccnn.space import Choice

    with pytest.raises(
        ValueError,
        match=r"conv_sizes: value \(4, 4, 4, 4, 4, 4, 4\) is invalid, "
        r"expected a tuple of 1 to 6 positive ints",
    ):
        validate_space({"conv_sizes": Choice(((8, 16), (4,) * 7))})
