"""Simulated work, for scale benchmarks only: training sleeps instead of computing; all else real.

A scale benchmark asks whether the control plane (IPyParallel, Dask, the trial store, the
dashboard, the PBT loop) holds at sizes this machine cannot train at. `SimulatedWork` replaces
only the training step of a trial or a PBT member: each epoch sleeps for as long as a trial of
that model and batch size took in notebook 03 on this machine (a fit of its measured trials,
with their spread; see `recorded`), then writes the epoch's metric row and a checkpoint of the
real model's size through the real store, as training does.
The metrics come from a made-up response surface, so selection has something to select. Every
result made with it carries the label "simulated work".
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import time
from dataclasses import dataclass
from importlib import resources

import numpy as np

from .runner import end_attempt, slice_end
from .store import CheckpointError

LABEL = "simulated work"
PARAMETERS = 137_089  # the CNN's: its checkpoint holds these as float32
OPTIMIZER_COST = {"Adam": 0.0, "Nadam": 0.05, "RMSprop": 0.15, "SGD": 0.6}


def recorded() -> dict:
    """Notebook 03's measured trials on this machine (seconds per epoch, the model's training
    MFLOP per sample, the batch size), with where and how they were measured."""
    return json.loads(resources.files("lhccnn").joinpath("recorded_trial_times.json").read_text())


def fit(trials: list[dict]) -> tuple[tuple, tuple]:
    """Seconds per epoch as c0 + c1 x MFLOP per sample + c2 / batch size, least squares over
    recorded trials; returns the coefficients and each trial's measured/fitted ratio."""
    x = np.array([[1.0, t["mflops"], 1.0 / t["batch_size"]] for t in trials])
    y = np.array([t["seconds_per_epoch"] for t in trials])
    coef = np.linalg.lstsq(x, y, rcond=None)[0]
    return tuple(float(c) for c in coef), tuple(float(r) for r in y / (x @ coef))


def mflops(hp: dict) -> float:
    """Training MFLOP per sample of the model a trial's hyper-parameters describe."""
    from .config import ModelConfig
    from .model import training_flops

    arch = {k: tuple(hp[k]) for k in ("conv_sizes", "dense_sizes") if k in hp}
    return training_flops(ModelConfig(**arch)) / 1e6


@dataclass(frozen=True)
class SimulatedWork:
    """Every epoch, sleep `scale` x the seconds a recorded trial of this model and batch size
    would take, then write what training writes. The time is a fit of notebook 03's measured
    trials (`cost`: seconds per epoch = c0 + c1 x MFLOP per sample + c2 / batch size) times one
    of their residual ratios, drawn by the trial's id; empty `cost` fits `recorded()`.
    `checkpoint_bytes`: the weights file's size (the CNN's float32 parameters)."""

    cost: tuple = ()
    residuals: tuple = (1.0,)
    scale: float = 1.0
    checkpoint_bytes: int = 4 * PARAMETERS
    seed: int = 0
    label: str = LABEL

    def __post_init__(self):
        if not self.cost:
            coef, residuals = fit(recorded()["trials"])
            object.__setattr__(self, "cost", coef)
            object.__setattr__(self, "residuals", residuals)
        if self.scale <= 0 or len(self.cost) != 3 or min(self.residuals) <= 0:
            raise ValueError(
                f"need scale > 0 (got {self.scale}), cost (c0, c1, c2) (got "
                f"{self.cost}) and residuals > 0 (got min {min(self.residuals)})"
            )

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def _rng(self, *key) -> np.random.Generator:
        digest = hashlib.sha256(repr((self.seed, *key)).encode()).digest()
        return np.random.default_rng(int.from_bytes(digest[:8], "little"))

    def epoch_time(self, trial_id: str, hp: dict) -> float:
        """This trial's seconds per epoch: the fit for its model and batch size, times a
        recorded residual drawn by its id (at least 1 % of the fit's constant)."""
        c0, c1, c2 = self.cost
        fitted = c0 + c1 * mflops(hp) + c2 / float(hp.get("batch_size", 128))
        residual = float(self._rng(trial_id).choice(self.residuals))
        return self.scale * max(fitted * residual, 0.01 * abs(c0))

    def train(
        self, attempt, hp: dict, epochs: int, epoch_offset: int = 0, progress: float = 0.0
    ) -> dict:
        """Train for `epochs` simulated epochs from `progress` (the response surface's state,
        kept in the checkpoint), checking for a stop request as training does after a batch.
        Returns the last metric row, with "stopped" and the seconds spent saving."""
        rate = _progress_rate(hp)
        spent = self.epoch_time(attempt.trial_id, hp)
        model, row, save_s = _Weights(self.checkpoint_bytes, progress), {}, 0.0
        for e in range(1, epochs + 1):
            end = time.monotonic() + spent
            while (left := end - time.monotonic()) > 0:
                if attempt.stop_requested():
                    return {**row, "stopped": True, "save_s": save_s}
                time.sleep(min(left, 0.1))
            model.progress += rate
            n = epoch_offset + e
            noise = self._rng(attempt.trial_id, n).normal(0, 0.005)
            val_loss = 0.25 + 0.45 * math.exp(-model.progress / 3) + noise
            row = {
                "epoch": n,
                "time": time.time(),
                "loss": val_loss - 0.02,
                "val_loss": val_loss,
                "val_accuracy": 1.0 - 0.8 * val_loss,
                "simulated": True,
            }
            t = time.perf_counter()
            attempt.save_checkpoint(model, n, optimizer=hp.get("optimizer"), metrics=row)
            save_s += time.perf_counter() - t
        return {**row, "stopped": False, "save_s": save_s, "progress": model.progress}

    def train_trial(self, attempt, epochs: int, epochs_per_task: int | None = None) -> dict:
        """An HPO trial of `epochs` epochs (hpo.run_trial's body): resumes from its verified
        checkpoint, or from scratch if that does not verify; trains at most `epochs_per_task`
        of them in this task."""
        store, trial_id = attempt.store, attempt.trial_id
        st = store.status(trial_id)
        model, start = _Weights(self.checkpoint_bytes), 0
        if (st.get("checkpoint") or {}).get("epoch"):
            try:
                start = store.load_checkpoint(model, trial_id)["epoch"]
            except (CheckpointError, OSError, ValueError):
                model.progress = 0.0
        t0 = time.perf_counter()
        out = self.train(
            attempt,
            store.config(trial_id),
            slice_end(start, epochs, epochs_per_task) - start,
            epoch_offset=start,
            progress=model.progress,
        )
        end = {"seconds": (st.get("seconds") or 0) + time.perf_counter() - t0, "simulated": True}
        task_started = st.get("task_started") or time.time()
        if out["stopped"]:
            return end_attempt(attempt, "stopped", task_started, reason="stopped by request", **end)
        done = slice_end(start, epochs, epochs_per_task) == epochs
        return end_attempt(attempt, "completed" if done else "queued", task_started, **end)

    def train_member(self, attempt, epochs: int, load_inherited) -> dict:
        """A PBT member (pbt.train_member's body): inherits its parent's verified checkpoint
        (falling back up the lineage), trains `epochs`, returns the fields pbt records."""
        store, trial_id = attempt.store, attempt.trial_id
        cfg = store.config(trial_id)
        task_started = store.status(trial_id).get("task_started") or time.time()
        model = _Weights(self.checkpoint_bytes)
        t = time.perf_counter()
        loaded_from, warned, kept = load_inherited(
            model, store, cfg.get("inherit"), cfg.get("optimizer")
        )
        load_s = time.perf_counter() - t
        t = time.perf_counter()
        out = self.train(
            attempt,
            cfg,
            epochs,
            epoch_offset=cfg["generation"] * epochs,
            progress=model.progress if loaded_from else 0.0,
        )
        train_s = time.perf_counter() - t - out["save_s"]
        return end_attempt(
            attempt,
            "stopped" if out["stopped"] else "completed",
            task_started,
            val_loss=out.get("val_loss", math.nan),
            val_accuracy=out.get("val_accuracy"),
            optimizer_kept=kept,
            loaded_from=loaded_from,
            warnings=warned,
            setup_s=0.0,
            load_s=load_s,
            train_s=train_s,
            save_s=out["save_s"],
            simulated=True,
        )


def _progress_rate(hp: dict) -> float:
    """Progress per epoch, in (0, 1]: best near lr 2e-3, dropout 0.3, Adam (a made-up surface)."""
    lr, dropout = float(hp.get("lr", 1e-3)), float(hp.get("dropout", 0.3))
    q = (math.log10(lr) + 2.7) ** 2 + ((dropout - 0.3) / 0.4) ** 2
    return math.exp(-q - OPTIMIZER_COST.get(hp.get("optimizer"), 0.3))


class _Weights:
    """Stands in for a Keras model where the store saves and loads one: a weights file of the
    real size, whose first 8 bytes hold the response surface's progress, and an optimizer state
    of twice that (Adam's two moments)."""

    def __init__(self, nbytes: int, progress: float = 0.0):
        self.nbytes, self.progress = nbytes, progress
        self.optimizer = _Optimizer(nbytes // 2)  # two float32 moments: nbytes // 4 * 2 values
        self.trainable_variables = []

    def save_weights(self, path) -> None:
        with open(path, "wb") as f:
            f.write(np.float64(self.progress).tobytes())
            f.write(os.urandom(max(0, self.nbytes - 8)))

    def load_weights(self, path) -> None:
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8 or len(f.read()) != self.nbytes - 8:
                raise ValueError(f"{path}: not a simulated checkpoint of {self.nbytes} bytes")
        self.progress = float(np.frombuffer(head, dtype=np.float64)[0])


class _Optimizer:
    def __init__(self, n: int):
        self.state = [np.zeros(n, dtype=np.float32)]

    def get_weights(self):
        return self.state

    def set_weights(self, state):
        self.state = state

    def _create_all_weights(self, variables):
        pass


def record(study, out, source: str) -> dict:
    """Write `out` (the JSON `recorded` reads) from a finished study: each completed trial's
    training seconds per epoch, its model's MFLOP per sample and its batch size, with `source`
    saying which run on which machine."""
    from .store import Store

    store = Store(study)
    trials = []
    for t in store.trial_ids():
        st, ms, hp = store.status(t), store.metrics(t), store.config(t)
        if st.get("status") == "completed" and ms and st.get("seconds"):
            trials.append(
                {
                    "seconds_per_epoch": round(st["seconds"] / len(ms), 3),
                    "mflops": round(mflops(hp), 3),
                    "batch_size": hp.get("batch_size", 128),
                }
            )
    if len(trials) < 3:
        raise ValueError(
            f"{study}: {len(trials)} completed trials with their seconds; a fit needs at least 3"
        )
    coef, residuals = fit(trials)
    rec = {
        "trials": trials,
        "fit": coef,
        "residual_spread": [min(residuals), max(residuals)],
        "source": source,
        "cpus": os.cpu_count(),
        "recorded": time.strftime("%Y-%m-%d"),
    }
    with open(out, "w") as f:
        json.dump(rec, f, indent=1)
        f.write("\n")
    return rec


if __name__ == "__main__":
    import argparse

    p = argparse.ArgumentParser(
        description="Record a finished study's seconds per epoch for "
        "simulated work (scale benchmarks)."
    )
    p.add_argument("study", help="the study folder (e.g. results/03_random_search/study)")
    p.add_argument("--out", default=str(resources.files("lhccnn") / "recorded_trial_times.json"))
    p.add_argument("--source", required=True, help="which run, on which machine")
    a = p.parse_args()
    r = record(a.study, a.out, a.source)
    c0, c1, c2 = r["fit"]
    lo, hi = r["residual_spread"]
    print(
        f"{a.out}: {len(r['trials'])} trials; seconds per epoch = {c0:.2f} + {c1:.3f} x MFLOP "
        f"+ {c2:.0f} / batch, residuals {lo:.2f}-{hi:.2f}"
    )
