"""The dashboard's table and scatter follow the store through its change log, with one update
of the page per poll however many cells changed (no engines: nothing is steered here)."""

from lhccnn.dashboard import Dashboard
from lhccnn.store import Store


def test_a_poll_updates_the_changed_cells_with_one_page_update(tmp_path):
    store = Store(tmp_path)
    ids = [store.create_trial({"lr": 10.0**-k, "dropout": 0.1 * k}) for k in range(1, 31)]
    attempts = {
        t: store.begin_attempt(t, engine=str(i % 4), engine_id=i % 4) for i, t in enumerate(ids[:6])
    }
    dash = Dashboard(Store(tmp_path))
    assert list(dash.shown().index) == ids
    updates = []
    real = dash.table._update_table
    dash.table._update_table = lambda **kw: updates.append(kw) or real(**kw)
    for a in attempts.values():
        a.append_metrics({"epoch": 1, "loss": 0.61234, "val_loss": 0.5, "val_accuracy": 0.75})
    dash.refresh()
    assert len(updates) == 1  # 6 trials x 4 cells, one page sent
    shown = dash.shown()
    for t in attempts:
        assert shown.at[t, "epoch"] == 1 and shown.at[t, "loss"] == 0.6123
        assert shown.at[t, "status"] == "running"
    assert (shown.loc[ids[6:], "epoch"] == 0).all()
    assert sorted(dash.points.y) == [0.75] * 6  # the scatter: trials with a val_accuracy
    updates.clear()
    dash.refresh()
    assert updates == []  # nothing changed, nothing sent


def test_trials_added_elsewhere_appear_in_the_table(tmp_path):
    store = Store(tmp_path)
    first = store.create_trial({"lr": 0.01})
    dash = Dashboard(Store(tmp_path))
    second = store.create_trial({"lr": 0.001})
    dash.refresh()
    assert list(dash.shown().index) == [first, second]
    assert dash.shown().at[second, "lr"] == 0.001


def test_the_lr_axis_labels_a_few_round_values_not_every_multiple(tmp_path):
    """d3's log axis labels every multiple of each decade (1e-3, 2e-3, ... 9e-3), which crowded
    the scatter's lr axis into one smear in the book's screenshot."""
    store = Store(tmp_path)
    for lr in (2e-4, 7e-4, 5e-3):
        t = store.create_trial({"lr": lr, "dropout": 0.2})
        a = store.begin_attempt(t, engine="0", engine_id=0)
        a.append_metrics({"epoch": 1, "loss": 0.6, "val_loss": 0.5, "val_accuracy": 0.75})
    dash = Dashboard(Store(tmp_path))
    assert len(dash.points.x) == 3  # opened on a study with results: shown before any change
    scale = dash.points.scales["x"]
    assert (scale.min, scale.max) == (1e-4, 1e-2)  # whole decades around the points
    assert list(dash._x_axis.tick_values) == [1e-4, 1e-3, 1e-2]
    dash.hyper.value = "dropout"  # a linear axis: d3's own ticks again
    assert dash._x_axis.tick_values is None
