"""run_trial in this process: completes, resumes from its checkpoint, stops on request, diverges."""

import threading
import time

from lhccnn.config import smoke
from lhccnn.hpo import run_trial
from lhccnn.store import Store

BASE = smoke().replace(n_train=1024, n_val=256, epochs=2)


def test_trial_completes_and_writes_metrics_checkpoint_and_test_result(tiny_data, tmp_path):
    store = Store(tmp_path)
    t = store.create_trial({"lr": 3e-3, "dropout": 0.2})
    st = run_trial(str(tmp_path), t, BASE, str(tiny_data), n_test=256)
    assert st["status"] == "completed" and st["attempt"] == 1 and st["seconds"] > 0
    assert [m["epoch"] for m in store.metrics(t)] == [1, 2]
    assert store.checkpoint(t).stat().st_size > 100_000
    assert 0.5 < st["test"]["auc"] <= 1


def test_a_second_attempt_resumes_after_the_last_recorded_epoch(tiny_data, tmp_path):
    store = Store(tmp_path)
    t = store.create_trial({"lr": 3e-3})
    run_trial(str(tmp_path), t, BASE.replace(epochs=1), str(tiny_data), n_test=256)
    first = store.metrics(t)[0]
    st = run_trial(str(tmp_path), t, BASE.replace(epochs=3), str(tiny_data), n_test=256)
    rows = store.metrics(t)
    assert [m["epoch"] for m in rows] == [1, 2, 3] and rows[0] == first  # epoch 1 not redone
    assert st["attempt"] == 2


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
    assert not store.stop_requested(t)  # the flag is consumed: a restart runs


def test_nan_loss_marks_the_trial_diverged(tiny_data, tmp_path):
    store = Store(tmp_path)
    t = store.create_trial({"optimizer": "SGD", "lr": 1e6})
    st = run_trial(str(tmp_path), t, BASE, str(tiny_data), n_test=256)
    assert st["status"] == "diverged" and "NaN" in st["reason"], st


def test_a_model_predicting_only_the_majority_class_is_marked_diverged(tiny_data, tmp_path,
                                                                      monkeypatch):
    # the collapse the upstream 16- and 64-node runs showed: accuracy == 1 - mean(y)
    import lhccnn.train

    def collapsed(model, path, n=None, batch_size=512):
        return {"n": 256, "accuracy": 0.5703, "majority_rate": 0.5703, "auc": 0.5}

    monkeypatch.setattr(lhccnn.train, "evaluate", collapsed)
    store = Store(tmp_path)
    t = store.create_trial({"lr": 1e-3})
    st = run_trial(str(tmp_path), t, BASE.replace(epochs=1), str(tiny_data), n_test=256)
    assert st["status"] == "diverged" and "majority class" in st["reason"]
