"""Live widgets for a PBT run: the hyper-parameter schedule, figure of merit, steering controls."""

from __future__ import annotations

import logging
import time

from .pbt import PBT

log = logging.getLogger(__name__)


class PBTPanel:
    """bqplot plots of a run read from its store, and sliders/buttons that steer it.

    `refresh` fits PBT's `on_generation` callback:
    `pbt.start(client, on_generation=panel.refresh)`
    redraws after every generation; the controls write to the run's Steering, which the loop
    applies at the next generation boundary.
    """

    def __init__(self, pbt: PBT):
        import bqplot as bq
        import ipywidgets as w

        self.pbt = pbt
        size = w.Layout(width="33%", height="300px")

        def schedule(key, scale, fmt):
            xs, ys = bq.LinearScale(), scale
            pop = bq.Scatter(
                x=[],
                y=[],
                scales={"x": xs, "y": ys},
                default_size=24,
                colors=["#9fc5e8"],
                default_opacities=[0.8],
            )
            best = bq.Lines(
                x=[],
                y=[],
                scales={"x": xs, "y": ys},
                colors=["#cc0000"],
                marker="circle",
                stroke_width=2,
            )
            fig = bq.Figure(
                marks=[pop, best],
                layout=size,
                title=f"{key}: population (dots), best lineage (line)",
                axes=[
                    bq.Axis(scale=xs, label="generation", tick_format="d"),
                    bq.Axis(scale=ys, orientation="vertical", label=key, tick_format=fmt),
                ],
            )
            return fig, pop, best

        self.lr_fig, self.lr_pop, self.lr_best = schedule("lr", bq.LogScale(), ".0e")
        self.do_fig, self.do_pop, self.do_best = schedule("dropout", bq.LinearScale(), ".2f")
        xs, ys = bq.LinearScale(), bq.LinearScale()
        self.fom = bq.Lines(
            x=[],
            y=[],
            scales={"x": xs, "y": ys},
            colors=["#999999", "#1f77b4"],
            labels=["mean", "best"],
            display_legend=True,
            marker="circle",
        )
        self.fom_fig = bq.Figure(
            marks=[self.fom],
            layout=size,
            legend_location="top-right",
            title="figure of merit per generation",
            axes=[
                bq.Axis(scale=xs, label="generation", tick_format="d"),
                bq.Axis(scale=ys, orientation="vertical", label="validation loss"),
            ],
        )

        values = pbt.steering.values()
        style = {"description_width": "110px"}
        self.mutation = w.FloatSlider(
            value=values["mutation_rate"],
            min=0,
            max=1,
            step=0.01,
            description="mutation rate",
            continuous_update=False,
            style=style,
        )
        self.crossover = w.FloatSlider(
            value=values["crossover_rate"],
            min=0,
            max=1,
            step=0.01,
            description="crossover rate",
            continuous_update=False,
            style=style,
        )
        self.population = w.IntSlider(
            value=values["population"],
            min=2,
            max=32,
            description="population",
            continuous_update=False,
            style=style,
        )
        self.pause = w.ToggleButton(
            value=bool(values.get("paused")), description="Pause", icon="pause"
        )
        self.stop = w.Button(description="Stop", button_style="danger", icon="stop")
        self.message = w.HTML()
        for slider, key in (
            (self.mutation, "mutation_rate"),
            (self.crossover, "crossover_rate"),
            (self.population, "population"),
        ):
            slider.observe(lambda change, key=key: self._steer(**{key: change["new"]}), "value")
        self.pause.observe(lambda change: self._steer(paused=change["new"]), "value")
        self.stop.on_click(lambda b: self._steer(stopped=True))
        self.widget = w.VBox(
            [
                w.HBox([self.lr_fig, self.do_fig, self.fom_fig]),
                w.HBox(
                    [
                        w.VBox([self.mutation, self.crossover, self.population]),
                        w.VBox([w.HBox([self.pause, self.stop]), self.message]),
                    ]
                ),
            ]
        )
        self.refresh()

    def _ipython_display_(self):
        from IPython.display import display

        display(self.widget)

    def _steer(self, **changes) -> None:
        try:
            self.pbt.steering.set(**changes)
            self.message.value = (
                f"{time.strftime('%H:%M:%S')} requested "
                f"{_fmt(changes)}: applies at the next generation"
            )
        except ValueError as e:
            self.message.value = f"<span style='color:#cc0000'>refused: {e}</span>"

    def refresh(self, pbt=None, generation=None) -> None:
        """Redraw from the store (the PBT callback signature: pbt and the generation just done)."""
        df = self.pbt.lineage()
        hist = self.pbt.history()
        if df.empty:
            return
        chain = self.pbt.best_lineage()
        for key, pop, best in (
            ("lr", self.lr_pop, self.lr_best),
            ("dropout", self.do_pop, self.do_best),
        ):
            with pop.hold_sync():
                pop.x, pop.y = df["generation"].to_numpy(), df[key].astype(float).to_numpy()
            with best.hold_sync():
                best.x = df.loc[chain, "generation"].to_numpy() if chain else []
                best.y = df.loc[chain, key].astype(float).to_numpy() if chain else []
        if hist:
            g = [h["generation"] for h in hist]
            with self.fom.hold_sync():
                self.fom.x = g
                self.fom.y = [
                    [h["mean_val_loss"] for h in hist],
                    [h["best_val_loss"] for h in hist],
                ]
        applied = [e for e in self.pbt.steering.events() if e["event"] == "applied"]
        if applied and len(applied) > 1:  # the first is the run's own start
            e = applied[-1]
            self.message.value = (
                f"applied at generation {e['generation']} "
                f"({time.strftime('%H:%M:%S', time.localtime(e['time']))}): "
                f"{_fmt({k: v for k, v in e['values'].items()})}"
            )


def _fmt(d: dict) -> str:
    return ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in d.items())
