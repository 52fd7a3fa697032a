"""A live HPO dashboard: a qgrid table of trials, bqplot curves, and buttons that really steer.

Everything shown is read from the trial store, so a new Dashboard on an existing study (after a
kernel restart, say) shows it all again. Stop is cooperative first (a flag the trial checks after
every batch) with a hard interrupt of the engine as the fallback; Restart resumes from the
trial's checkpoint; Add trial submits a new configuration. A background thread polls the store
(its change log: a poll reads only the trials that changed) and only sets widget values (safe
from a thread with ipykernel >= 7.1).
"""

from __future__ import annotations

import logging
import math
import signal
import threading
import time

import pandas as pd

from .config import OPTIMIZERS, TrainConfig
from .hpo import run_trial, steering_plan
from .space import validate_values
from .store import ENDED, Store, StudyTable

log = logging.getLogger(__name__)

COLUMNS = [
    "status",
    "engine",
    "epoch",
    "loss",
    "val_loss",
    "val_accuracy",
    "seconds",
    "attempt",
    "optimizer",
    "lr",
    "dropout",
    "batch_size",
    "conv_sizes",
    "dense_sizes",
]
ROUNDED = {"loss": 4, "val_loss": 4, "val_accuracy": 4, "seconds": 1}
# show_grid merges these into qgrid's defaults (a partial grid_options dict given to
# QgridWidget directly replaces them, and the body then renders with zero height)
GRID_OPTIONS = {
    "editable": False,
    "forceFitColumns": False,
    "defaultColumnWidth": 90,
    "maxVisibleRows": 12,
    "minVisibleRows": 4,
}
# changing these on a restart would not fit the checkpoint's weights
ARCHITECTURE = ("conv_sizes", "dense_sizes")
NUMERIC_HYPER = ("lr", "dropout", "batch_size")


class Dashboard:
    """Steer and watch a study. `view` is a load-balanced view; `base` the trials' TrainConfig."""

    def __init__(
        self,
        store: Store,
        view=None,
        base: TrainConfig | None = None,
        data=None,
        poll: float = 1.0,
        n_test: int | None = 2048,
    ):
        import ipywidgets as w

        self.store, self.view, self.base, self.data = store, view, base or TrainConfig(), data
        self.poll, self.n_test = poll, n_test
        self.futures: dict = {}  # trial id -> AsyncResult of its latest submission
        self.selected: str | None = None
        self._stop_polling = threading.Event()
        self._thread = None

        self.study = StudyTable(store)
        # what the grid shows now, a dict of cells per trial: refresh sends only the changes
        self._shown = {t: _cells(row) for t, row in sorted(self.study.rows.items())}
        self._build_table()
        self._build_curves()
        self._build_scatter()
        controls = self._build_controls()
        self.widget = w.VBox(
            [
                self.table,
                *controls,
                w.HBox(
                    [self.curves, w.VBox([self.hyper, self.scatter], layout=w.Layout(width="50%"))]
                ),
            ]
        )

    def _build_table(self) -> None:
        """Every trial, one row each; selecting a row shows its curves and fills the form."""
        import qgridnext

        self.table = qgridnext.show_grid(
            self.frame(), show_toolbar=False, grid_options=GRID_OPTIONS
        )
        self.table.on("selection_changed", self._on_select)

    def _build_curves(self) -> None:
        """The selected trial's curves: loss (left axis) and validation accuracy (right axis)."""
        import bqplot as bq
        import ipywidgets as w

        xs = bq.LinearScale()
        ys_loss, ys_acc = bq.LinearScale(), bq.LinearScale(min=0.4, max=1.0)
        self.loss_lines = bq.Lines(
            x=[],
            y=[],
            scales={"x": xs, "y": ys_loss},
            labels=["loss", "val_loss"],
            colors=["#1f77b4", "#ff7f0e"],
            display_legend=True,
            marker="circle",
        )
        self.acc_line = bq.Lines(
            x=[],
            y=[],
            scales={"x": xs, "y": ys_acc},
            colors=["#2ca02c"],
            labels=["val_accuracy"],
            display_legend=True,
            marker="square",
        )
        self.curves = bq.Figure(
            marks=[self.loss_lines, self.acc_line],
            title="click a trial in the table",
            axes=[
                bq.Axis(scale=xs, label="epoch"),
                bq.Axis(scale=ys_loss, orientation="vertical", label="loss"),
                bq.Axis(scale=ys_acc, orientation="vertical", side="right", label="val accuracy"),
            ],
            layout=w.Layout(width="50%", height="320px"),
            legend_location="top-right",
        )

    def _build_scatter(self) -> None:
        """Every trial: its best validation accuracy against a chosen hyper-parameter."""
        import bqplot as bq
        import ipywidgets as w

        self.hyper = w.Dropdown(options=NUMERIC_HYPER, value="lr", description="x axis")
        self._xscale_log, self._xscale_lin = bq.LogScale(), bq.LinearScale()
        ys = bq.LinearScale(min=0.4, max=1.0)
        self.points = bq.Scatter(
            x=[], y=[], scales={"x": self._xscale_log, "y": ys}, default_size=40, colors=["#9467bd"]
        )
        self._x_axis = bq.Axis(scale=self._xscale_log, label="lr", tick_format=".0e")
        self.scatter = bq.Figure(
            marks=[self.points],
            title="all trials",
            axes=[
                self._x_axis,
                bq.Axis(scale=ys, orientation="vertical", label="best val accuracy"),
            ],
            layout=w.Layout(width="100%", height="320px"),  # of its box, half the page
        )
        self.hyper.observe(lambda change: self._refresh_scatter(), "value")
        self._refresh_scatter()  # a study opened with results shows them before any change

    def _build_controls(self) -> list:
        """Steering: the three buttons, their message line, and the form they read."""
        import ipywidgets as w

        self.stop_button = w.Button(description="Stop selected", button_style="danger", icon="stop")
        self.restart_button = w.Button(description="Restart selected", icon="refresh")
        self.add_button = w.Button(description="Add trial", button_style="success", icon="plus")
        self.form_lr = w.FloatLogSlider(
            value=1e-3, base=10, min=-5, max=-1, description="lr", readout_format=".1e"
        )
        self.form_dropout = w.FloatSlider(
            value=0.5, min=0.0, max=0.9, step=0.05, description="dropout"
        )
        self.form_opt = w.Dropdown(options=OPTIMIZERS, value="Adam", description="optimizer")
        self.message = w.HTML()
        self.stop_button.on_click(lambda b: self._ui(self.stop, self.selected))
        self.restart_button.on_click(
            lambda b: self._ui(self.restart, self.selected, **self._form())
        )
        self.add_button.on_click(lambda b: self._ui(self.add, self._form()))
        return [
            w.HBox([self.stop_button, self.restart_button, self.add_button, self.message]),
            w.HBox([self.form_lr, self.form_dropout, self.form_opt]),
        ]

    # ------------------------------------------------------------------ display and polling
    def _ipython_display_(self):
        from IPython.display import display

        display(self.widget)

    def start(self) -> Dashboard:
        """Start the background poller (idempotent)."""
        if self._thread is None or not self._thread.is_alive():
            self._stop_polling.clear()
            self._thread = threading.Thread(
                target=self._poll_loop, daemon=True, name="lhccnn-dashboard"
            )
            self._thread.start()
        return self

    def close(self) -> None:
        self._stop_polling.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _poll_loop(self):
        while not self._stop_polling.wait(self.poll):
            try:
                changed = self.study.poll()  # only what changed: polling must not slow training
                if changed != set():
                    self.show(changed)
            except Exception as e:  # a half-written file, a closed widget: try again next time
                log.debug("dashboard refresh: %s", e)

    def frame(self) -> pd.DataFrame:
        """The table as it should be shown now (as of the last poll)."""
        rows = [_cells(self.study.rows[t]) for t in sorted(self.study.rows)]
        if not rows:
            return pd.DataFrame(columns=COLUMNS, index=pd.Index([], name="trial"))
        return pd.DataFrame(
            rows, index=pd.Index(sorted(self.study.rows), name="trial"), columns=COLUMNS
        )

    def refresh(self) -> None:
        """Read what changed in the store; update the table, the curves and the scatter."""
        self.study.poll()
        self.show(None)

    def show(self, changed) -> None:
        """Show the table's rows as last polled: the cells of the `changed` trials that differ
        (None: of every trial), then the curves and the scatter."""
        rows = self.study.rows
        if rows.keys() != self._shown.keys():
            self._shown = {t: _cells(rows[t]) for t in sorted(rows)}
            self.table.df = self.frame()  # trials added: replace (the selection is restored)
            if self.selected in rows:
                self.table.change_selection([self.selected])
            self._after_refresh(None)
            return
        edits = []
        for t in sorted(rows if changed is None else changed):
            new, old = _cells(rows[t]), self._shown[t]
            edits += [(t, c, new[c]) for c in COLUMNS if not _same(new[c], old[c])]
            self._shown[t] = new
        if edits:
            _edit_cells(self.table, edits)
        self._after_refresh({c for _, c, _ in edits})

    def _after_refresh(self, columns) -> None:
        """Redraw what depends on the columns that changed (None: all of them)."""
        self._refresh_curves()
        if columns is None or columns & {"val_accuracy", self.hyper.value}:
            self._refresh_scatter()

    def _refresh_curves(self):
        t = self.selected
        if t is None:
            return
        ms = self.store.metrics(t)
        epochs = [m["epoch"] for m in ms]
        self.loss_lines.x = epochs
        self.loss_lines.y = [[m.get("loss") for m in ms], [m.get("val_loss") for m in ms]]
        self.acc_line.x = epochs
        self.acc_line.y = [m.get("val_accuracy") for m in ms]
        self.curves.title = f"{t}: {self.store.status(t).get('status')}"

    def _refresh_scatter(self):
        key = self.hyper.value
        done = [
            r
            for r in self._shown.values()
            if _number(r["val_accuracy"]) is not None and _number(r[key]) is not None
        ]
        self._x_axis.label = key
        self._x_axis.tick_format = ".0e" if key == "lr" else ""
        scale = self._xscale_log if key == "lr" else self._xscale_lin
        if self.points.scales["x"] is not scale:
            self.points.scales = {**self.points.scales, "x": scale}
            self._x_axis.scale = scale
        x = [float(r[key]) for r in done]
        if key == "lr" and x:  # whole decades, labelled at each
            scale.min, scale.max, ticks = _decade_ticks(x)
            self._x_axis.tick_values = ticks
        elif key != "lr":
            self._x_axis.tick_values = None
        self.points.x = x
        self.points.y = [float(r["val_accuracy"]) for r in done]

    def _on_select(self, event, grid):
        rows = event["new"]
        self.selected = grid.get_selected_df().index[0] if rows else None
        self._fill_form(self.selected)
        self._refresh_curves()

    def _fill_form(self, trial_id) -> None:
        """Show the selected trial's own values in the form, so that Restart with no edits
        changes nothing and an edit starts from what the trial has."""
        config = self.store.config(trial_id) if trial_id is not None else None
        if not config:
            return
        for key, widget in (
            ("lr", self.form_lr),
            ("dropout", self.form_dropout),
            ("optimizer", self.form_opt),
        ):
            if key in config:
                widget.value = config[key]

    def shown(self) -> pd.DataFrame:
        """The table as the grid shows it now."""
        return self.table.get_changed_df()

    def select(self, trial_id: str) -> None:
        """Select a trial as a click on its row would (for scripts and tests)."""
        self.table.change_selection([trial_id])

    # ------------------------------------------------------------------ steering
    def _ui(self, action, *args, **kwargs):
        """Run a button's action, showing its outcome (or error) next to the buttons."""
        try:
            self.message.value = f"<span style='color:green'>{action(*args, **kwargs)}</span>"
        except Exception as e:
            self.message.value = f"<span style='color:#b00'>{e}</span>"

    def _form(self) -> dict:
        return {
            "lr": self.form_lr.value,
            "dropout": self.form_dropout.value,
            "optimizer": self.form_opt.value,
        }

    def _need_view(self):
        if self.view is None:
            raise RuntimeError("no engines: give the Dashboard a load-balanced view to run trials")

    def submit(self, trial_ids) -> None:
        self._need_view()
        data = str(self.data) if self.data else None
        with self.view.temp_flags(retries=2):
            for t in trial_ids:
                self.futures[t] = self.view.apply_async(
                    run_trial, str(self.store.root), t, self.base, data, self.n_test
                )

    def stop(
        self, trial_id: str | None, hard_after: float = 60.0, fence_after: float = 15.0
    ) -> str:
        """Stop a trial for good: a queued trial never starts; a running one is asked to stop
        (checked within half a second); one that has not stopped after `hard_after` seconds is
        interrupted on its engine (only that trial reacts: a SIGINT reaching an engine that now
        runs another trial is ignored there); one still running `fence_after` seconds later is
        marked stopped and its attempt fenced off, so nothing it writes afterwards counts. No
        retry can resurrect it: the stop request stays until Restart."""
        if trial_id is None:
            raise ValueError("select a trial first")
        before = self.store.status(trial_id)["status"]
        if before in ENDED:
            raise ValueError(f"{trial_id} is {before}, not running")
        token = self._ask_to_stop(trial_id)
        if token is not None and not self._wait_ended(trial_id, hard_after):
            return self._stop_by_force(trial_id, token, hard_after, fence_after)
        return self._how_it_ended(trial_id, before)

    def _ask_to_stop(self, trial_id: str) -> str | None:
        """Request the stop; return the running attempt's token, or None if the trial needs no
        more: stopped here (queued, or its attempt dead: its task is aborted) or ended already."""
        st = self.store.request_stop(trial_id, reason="stopped from the dashboard")
        if st["status"] == "stopped":
            fut = self.futures.get(trial_id)
            if fut is not None and not fut.ready():
                fut.abort()  # it would not train anyway; this frees its place in the queue
        return st.get("token") if st["status"] == "running" else None

    def _how_it_ended(self, trial_id: str, before: str = "running") -> str:
        """The message for a trial asked to stop that is no longer running, from its status: a
        trial whose loss went NaN or that finished before it saw the request says so."""
        status, n = self.store.status(trial_id)["status"], len(self.store.metrics(trial_id))
        if status != "stopped":
            return f"{trial_id} ended {status} after epoch {n}, before the stop took effect"
        if before == "queued":
            return f"{trial_id} aborted before it started"
        return f"{trial_id} stopped after epoch {n}"

    def _stop_by_force(self, trial_id: str, token: str, hard_after: float, fence_after: float):
        """A trial that did not answer its stop request: interrupt its engine, then fence it."""
        now = self.store.status(trial_id)
        if self.view is not None and now.get("token") == token and now.get("engine_id") is not None:
            self.view.client.send_signal(signal.SIGINT, targets=[now["engine_id"]], block=True)
            if self._wait_ended(trial_id, fence_after):
                return (
                    f"{trial_id} did not stop within {hard_after:.0f} s: its engine was interrupted"
                )
        self.store.force_stop(
            trial_id, reason=f"did not stop within {hard_after + fence_after:.0f} s"
        )
        return f"{trial_id} did not answer: marked stopped, its attempt can no longer write"

    def _wait_ended(self, trial_id: str, seconds: float) -> bool:
        deadline = time.monotonic() + seconds
        while True:
            if self.store.status(trial_id)["status"] != "running":
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.2)

    def restart(self, trial_id: str | None, **changes) -> str:
        """Resume a stopped, failed or diverged trial from its checkpoint, optionally with new
        values of non-architecture hyper-parameters (lr, dropout, optimizer, batch size); values
        equal to the trial's own are no change."""
        if trial_id is None:
            raise ValueError("select a trial first")
        st = self.store.status(trial_id)["status"]
        if st in ("running", "queued"):
            raise ValueError(f"{trial_id} is {st}: stop it first")
        config = self.store.config(trial_id)
        changed = {k: v for k, v in changes.items() if k not in config or not _same(config[k], v)}
        bad = [k for k in changed if k in ARCHITECTURE]
        if bad:
            raise ValueError(
                f"cannot change {', '.join(bad)} on a restart: the checkpoint's "
                "weights would not fit; add a new trial instead"
            )
        validate_values(changed)
        self.store.requeue(trial_id)  # refuses a completed trial, naming its state
        if changed:
            self.store.update_config(trial_id, changed)
        self.submit([trial_id])
        edits = ", ".join(
            f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in changed.items()
        )
        return f"{trial_id} restarted from its checkpoint" + (f" with {edits}" if edits else "")

    def add(self, hyper: dict) -> str:
        """A new trial with these hyper-parameters, submitted at once."""
        validate_values(hyper)
        trial_id = self.store.create_trial(dict(hyper))
        self.submit([trial_id])
        return f"{trial_id} added"

    def steer(
        self,
        signal_fraction: float,
        space: dict,
        rng,
        after_epochs: int = 2,
        tol: float = 0.01,
        max_added: int | None = None,
        timeout: float = 3600,
        hard_after: float = 60.0,
        fence_after: float = 15.0,
    ) -> dict:
        """Steer as a person watching would, with the Stop and Add trial buttons' own code: look
        at each running trial once, when it has trained `after_epochs` epochs; if it is stuck at
        the majority-class rate, stop it and add a trial beside the best one in its place
        (lhccnn.hpo.steering_plan), at most `max_added` in all (default: as many as the study
        had). Stops are asked at once and their outcomes collected as the trials end, so no
        stuck trial trains on while another is being stopped; one that has not stopped after
        `hard_after` seconds is stopped by force, as Stop does. Returns once every trial has
        been looked at and every stop has taken effect: the trials stopped, those that ended
        another way before their stop took effect (a NaN loss, their last epoch), the epochs
        each had trained when asked, the trials added, and the buttons' messages."""
        budget = len(self.store.trial_ids()) if max_added is None else max_added
        done = {"stopped": [], "ended": [], "asked_at": {}, "added": [], "messages": []}
        seen, asked = set(), {}  # asked: trial -> (its attempt's token, when it was asked)

        def settle(t, message):
            done["messages"].append(message)
            done["stopped" if self.store.status(t)["status"] == "stopped" else "ended"].append(t)

        deadline = time.monotonic() + timeout
        while True:
            ids = self.store.trial_ids()
            states = {t: self.store.status(t)["status"] for t in ids}
            curves = {t: _val_accuracies(self.store.metrics(t)) for t in ids}
            for t, (token, when) in list(asked.items()):
                if states[t] != "running":
                    settle(t, self._how_it_ended(t))
                elif time.monotonic() - when >= hard_after:
                    settle(t, self._stop_by_force(t, token, hard_after, fence_after))
                else:
                    continue
                del asked[t]
            due = [
                t
                for t in ids
                if t not in seen and states[t] == "running" and len(curves[t]) >= after_epochs
            ]
            if due:
                configs = {t: self.store.config(t) for t in ids}
                stop, new = steering_plan(
                    curves, due, configs, signal_fraction, space, rng, after_epochs, tol
                )
                new = new[: budget - len(done["added"])]
                for t in stop:
                    done["asked_at"][t] = len(curves[t])
                    token = self._ask_to_stop(t)
                    if token is None:  # it ended (or was stopped here) before the request
                        settle(t, self._how_it_ended(t))
                    else:
                        asked[t] = (token, time.monotonic())
                done["messages"] += [self.add(hp) for hp in new]
                done["added"] += sorted(set(self.store.trial_ids()) - set(ids))
                seen.update(due)
                self.refresh()
                continue
            if not asked and not any(
                s == "queued" or (s == "running" and t not in seen) for t, s in states.items()
            ):
                return done
            if time.monotonic() >= deadline:
                raise TimeoutError(f"steering: trials still unchecked after {timeout:.0f} s")
            time.sleep(0.5)

    def wait(self, trial_ids=None, timeout: float = 600) -> None:
        """Block until the given (default: all submitted) trials' tasks have ended."""
        deadline = time.monotonic() + timeout
        for t in trial_ids or list(self.futures):
            fut = self.futures.get(t)
            if fut is not None:
                fut.wait(max(0.0, deadline - time.monotonic()))


def _edit_cells(table, edits) -> None:
    """Set many cells of a qgrid table with one update of the page it shows. qgrid's own
    edit_cell copies the whole frame and re-sends the visible page for every cell: 37 ms a cell
    at 1,000 trials, seconds for a poll in which 1 % of 10,000 trials finished an epoch."""
    by_column: dict = {}
    for t, c, v in edits:
        by_column.setdefault(c, ([], []))
        by_column[c][0].append(t)
        by_column[c][1].append(v)
    for c, (rows, values) in by_column.items():  # one assignment per column: 0.6 ms per cell
        for df in (table._df, table._unfiltered_df):
            df.loc[rows, c] = pd.Series(values, index=rows, dtype=object).infer_objects()
    table._update_table(triggered_by="edit_cell", fire_data_change_event=True)


def _cells(row: dict) -> dict:
    """A store summary row as the table shows it: its columns, lists joined, numbers rounded."""
    cells = {}
    for c in COLUMNS:
        v = row.get(c)
        if c == "engine":  # an engine id (HPO) or a Dask worker's address (PBT); blank if none
            v = "" if v is None else str(v)
        elif isinstance(v, (list, tuple)):  # lists do not sort or display well in a grid
            v = ",".join(map(str, v))
        elif isinstance(v, float) and c in ROUNDED:
            v = round(v, ROUNDED[c])
        cells[c] = v
    return cells


def _val_accuracies(metrics: list[dict]) -> list[float]:
    return [m["val_accuracy"] for m in metrics if m.get("val_accuracy") is not None]


def _decade_ticks(values: list[float]) -> tuple[float, float, list[float]]:
    """A log axis over whole decades around `values`, labelled at each decade: a handful of
    round values where d3 would label all nine multiples of every decade."""
    lo, hi = math.floor(math.log10(min(values))), math.ceil(math.log10(max(values)))
    ticks = [float(f"1e{k}") for k in range(lo, max(hi, lo + 1) + 1)]
    return ticks[0], ticks[-1], ticks


def _number(v) -> float | None:
    try:
        v = float(v)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(v) else v


def _same(a, b) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    try:
        return bool(a == b) or (pd.isna(a) and pd.isna(b))
    except (TypeError, ValueError):
        return False
