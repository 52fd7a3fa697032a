"""Keras callbacks of the training core: learning-rate warm-up, throughput, the epoch log."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import tensorflow as tf

from .files import write_json

log = logging.getLogger("lhccnn.train")


class WarmupLR(tf.keras.callbacks.Callback):
    """Ramp the lr linearly from `start` to `target` over the first `epochs` epochs.

    Large scaled learning rates applied from step one made the upstream 16- and 64-node
    runs collapse to the majority class; the ramp (Goyal et al. 2017) avoids that.
    """

    def __init__(self, start, target, epochs, steps_per_epoch):
        super().__init__()
        self.start, self.target = start, target
        self.total = max(1, int(round(epochs * steps_per_epoch)))
        self.steps_per_epoch = steps_per_epoch
        self.epoch = 0

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_begin(self, batch, logs=None):
        step = self.epoch * self.steps_per_epoch + batch
        if step <= self.total:
            lr = self.start + (self.target - self.start) * min(1.0, step / self.total)
            tf.keras.backend.set_value(self.model.optimizer.lr, lr)

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["lr"] = float(tf.keras.backend.get_value(self.model.optimizer.lr))


class Throughput(tf.keras.callbacks.Callback):
    """Samples/s of the training part of each epoch, all ranks together (no validation)."""

    def __init__(self, samples_per_epoch):
        super().__init__()
        self.samples_per_epoch = samples_per_epoch
        self.t0 = self.t_last = 0.0

    def on_epoch_begin(self, epoch, logs=None):
        self.t0 = self.t_last = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        self.t_last = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        seconds = self.t_last - self.t0
        if logs is not None:
            logs["train_seconds"] = seconds
            logs["samples_per_s"] = self.samples_per_epoch / seconds if seconds else 0.0


class EpochLog(tf.keras.callbacks.Callback):
    """Rank 0: log each epoch; with an out_dir, atomically rewrite history, checkpoint."""

    def __init__(self, out_dir: Path | None):
        super().__init__()
        self.out_dir = out_dir
        self.history: list[dict] = []

    def on_epoch_end(self, epoch, logs=None):
        self.history.append({"epoch": epoch + 1, **{k: float(v) for k, v in (logs or {}).items()}})
        if self.out_dir is not None:
            write_json(self.out_dir / "history.json", self.history, indent=1)
            tmp = self.out_dir / "checkpoint.tmp.h5"
            self.model.save_weights(str(tmp))
            os.replace(tmp, self.out_dir / "checkpoint.h5")
        log.info(
            "epoch %d/%d: %s",
            epoch + 1,
            self.params.get("epochs", 0),
            " ".join(f"{k}={v:.4g}" for k, v in self.history[-1].items() if k != "epoch"),
        )
