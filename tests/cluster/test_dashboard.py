"""The dashboard on real engines: live table and curves, Stop (cooperative, abort, interrupt),
Restart from the checkpoint with an edited value, Add trial, re-attach to a study."""

import signal
import time

import pytest

from lhccnn.config import smoke
from lhccnn.dashboard import Dashboard
from lhccnn.store import Store

BASE = smoke().replace(n_train=2048, n_val=256, epochs=10)


def _until(cond, timeout=90, what="condition"):
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def test_stop_restart_add_and_live_updates(local_engines, tiny_data, tmp_path):
    store = Store(tmp_path / "study")
    view = local_engines.client.load_balanced_view()
    dash = Dashboard(store, view, BASE, data=tiny_data, poll=0.2, n_test=256).start()
    try:
        a = dash.add({"lr": 1e-3})[:10]
        b = dash.add({"lr": 2e-3})[:10]
        c = dash.add({"lr": 3e-3})[:10]  # both engines busy: c waits in the queue
        _until(lambda: len(store.metrics(a)) >= 1, what="a's first epoch")
        # the table follows the store; clicking a row plots that trial
        _until(lambda: dash.shown().at[a, "epoch"] >= 1, what="the table to show a's progress")
        dash.select(a)
        _until(lambda: len(dash.loss_lines.x) >= 1, what="a's curves")
        assert dash.curves.title.startswith(a)

        assert "aborted" in dash.stop(c)
        assert store.status(c)["status"] == "stopped"

        epoch_at_stop = len(store.metrics(a))
        msg = dash.stop(a)
        assert store.status(a)["status"] == "stopped", msg
        assert len(store.metrics(a)) <= epoch_at_stop + 1  # within one epoch

        assert "with lr=0.0005" in dash.restart(a, lr=5e-4)
        assert store.config(a)["lr"] == 5e-4 and store.config(a)["history"][0]["was"] == {
            "lr": 1e-3
        }
        dash.wait([a, b], timeout=180)
        st = store.status(a)
        assert st["status"] == "completed" and st["attempt"] == 2
        assert [m["epoch"] for m in store.metrics(a)] == list(range(1, BASE.epochs + 1))

        with pytest.raises(ValueError, match="cannot change conv_sizes"):
            dash.restart(c, conv_sizes=(4, 8))
        with pytest.raises(ValueError, match="dropout: value 1.5 is invalid"):
            dash.add({"dropout": 1.5})
        _until(lambda: len(dash.points.x) >= 2, what="the scatter of finished trials")
    finally:
        dash.close()
    # a new dashboard on the same study (as after a kernel restart) shows everything
    again = Dashboard(store)
    assert list(again.shown().index) == [a, b, c]
    assert list(again.shown()["status"]) == ["completed", "completed", "stopped"]


def test_a_hard_stop_stays_stopped_and_no_retry_resurrects_it(local_engines, tiny_data, tmp_path):
    store = Store(tmp_path / "study")
    dash = Dashboard(
        store,
        local_engines.client.load_balanced_view(),
        BASE.replace(epochs=200),
        data=tiny_data,
        n_test=256,
    )
    t = dash.add({"lr": 1e-3})[:10]
    _until(lambda: store.status(t)["status"] == "running", what="the trial to start")
    engine = store.status(t)["engine_id"]
    msg = dash.stop(t, hard_after=0)  # do not wait for the cooperative stop: interrupt at once
    assert store.status(t)["status"] == "stopped", msg
    st = dash.futures[t].get(timeout=30)  # the task returned (no error: nothing to retry)
    assert st["status"] == "stopped"
    rows = len(store.metric_rows(t))
    time.sleep(60)  # a retry on the other engine would have resumed it by now
    st = store.status(t)
    assert st["status"] == "stopped" and st["attempt"] == 1 and len(store.metric_rows(t)) == rows
    assert local_engines.client[engine].apply_sync(abs, -42) == 42


def test_a_sigint_reaching_an_engine_that_runs_another_trial_is_ignored(
    local_engines, tiny_data, tmp_path
):
    # what a hard stop sent just as its trial ended meets: the engine's next trial
    store = Store(tmp_path / "study")
    dash = Dashboard(
        store,
        local_engines.client.load_balanced_view(),
        BASE.replace(epochs=3),
        data=tiny_data,
        n_test=256,
    )
    t = dash.add({"lr": 1e-3})[:10]
    _until(lambda: len(store.metrics(t)) >= 1, what="the first epoch")
    local_engines.client.send_signal(
        signal.SIGINT, targets=[store.status(t)["engine_id"]], block=True
    )
    dash.wait([t], timeout=120)
    st = store.status(t)
    assert st["status"] == "completed" and st["attempt"] == 1
    assert [r["epoch"] for r in store.metric_rows(t)] == [1, 2, 3]


def test_selecting_a_row_shows_its_values_and_restart_without_edits_keeps_them(
    local_engines, tiny_data, tmp_path
):
    store = Store(tmp_path / "study")
    dash = Dashboard(
        store,
        local_engines.client.load_balanced_view(),
        BASE.replace(epochs=1),
        data=tiny_data,
        n_test=256,
    )
    own = {"lr": 2.5e-3, "dropout": 0.15, "optimizer": "Nadam"}
    t = store.create_trial(own)
    store.request_stop(t)  # stopped before it ran
    dash.refresh()
    dash.select(t)
    assert dash._form() == own
    assert dash.restart(t, **dash._form()) == f"{t} restarted from its checkpoint"
    assert store.config(t) == own  # no value rewritten, no history entry
    dash.wait([t], timeout=120)
    assert store.status(t)["status"] == "completed"
