"""Frozen configuration dataclasses whose defaults are the paper's values, plus smoke presets."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path

# Image geometry of the real dataset: 64 x 64 cells in (eta, phi), one channel.
IMAGE_SHAPE = (64, 64, 1)
# Each conv block ends with a 2x2 max-pooling: 64 -> 32 -> ... -> 1 after six blocks.
MAX_CONV_BLOCKS = min(IMAGE_SHAPE[:2]).bit_length() - 1

OPTIMIZERS = ("Adam", "Nadam", "Adadelta", "SGD", "RMSprop")
LR_SCALING = ("none", "linear", "sqrt")
# Keras dtype policies: float32, or bfloat16 compute with float32 weights (AMX on newer Xeons)
PRECISIONS = ("float32", "mixed_bfloat16")


@dataclass(frozen=True)
class ModelConfig:
    """The CNN of Bhimji et al.: conv/pool blocks, dense layers, dropout, optimizer."""

    conv_sizes: tuple[int, ...] = (8, 16, 32)
    dense_sizes: tuple[int, ...] = (64,)
    dropout: float = 0.5
    optimizer: str = "Adam"
    lr: float = 1e-3

    def __post_init__(self):
        # Tuples, not lists: the config is hashable and cannot be mutated behind our back.
        object.__setattr__(self, "conv_sizes", tuple(int(c) for c in self.conv_sizes))
        object.__setattr__(self, "dense_sizes", tuple(int(d) for d in self.dense_sizes))
        if not self.conv_sizes or any(c < 1 for c in self.conv_sizes):
            raise ValueError(f"conv_sizes must be positive integers, got {self.conv_sizes}")
        if len(self.conv_sizes) > MAX_CONV_BLOCKS:
            raise ValueError(
                f"conv_sizes {','.join(map(str, self.conv_sizes))} has {len(self.conv_sizes)} "
                f"conv/pool blocks; each halves the {IMAGE_SHAPE[0]}x{IMAGE_SHAPE[1]} image, so at "
                f"most {MAX_CONV_BLOCKS} fit"
            )
        if any(d < 1 for d in self.dense_sizes):
            raise ValueError(f"dense_sizes must be positive integers, got {self.dense_sizes}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(
                f"unknown optimizer {self.optimizer!r}; valid names: {', '.join(OPTIMIZERS)}"
            )
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")


@dataclass(frozen=True)
class TrainConfig:
    """How to train: sizes, epochs, batch, Horovod learning-rate rule, threads, outputs."""

    n_train: int | None = 64_000  # the paper's HPO used 64k train / 32k validation events
    n_val: int | None = 32_000
    batch_size: int = 128
    epochs: int = 16
    lr_scaling: str = "linear"  # how the base lr grows with the number of Horovod ranks
    warmup_epochs: float = 2.0  # ramp from lr to the scaled lr (Goyal et al. 2017)
    streaming: bool = True  # read HDF5 batch by batch instead of loading it into memory
    shuffle_buffer: int = 4096
    seed: int = 0
    intra_threads: int = 1
    inter_threads: int = 1
    precision: str = "float32"  # or "mixed_bfloat16": an option, not the default (see benchmarks)
    # Horovod's and MPI's polling threads at SCHED_IDLE: they then run only on a core TensorFlow
    # leaves idle (train.horovod_init); off by default, notebook 02's study measures both
    idle_comm_threads: bool = False
    # each process bound to its share of its machine's cores (train.core_share): where ranks
    # share a machine, none waits for a core the other's threads hold; a rank alone on its
    # machine keeps every core (notebook 02's study measures both settings)
    pin_cores: bool = False
    verbose: int = 0  # Keras progress bars; train.py logs one line per epoch regardless
    model: ModelConfig = field(default_factory=ModelConfig)

    def __post_init__(self):
        if self.lr_scaling not in LR_SCALING:
            raise ValueError(
                f"unknown lr_scaling {self.lr_scaling!r}; valid: {', '.join(LR_SCALING)}"
            )
        if self.precision not in PRECISIONS:
            raise ValueError(
                f"unknown precision {self.precision!r}; valid: {', '.join(PRECISIONS)}"
            )
        for name in ("batch_size", "epochs"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.warmup_epochs < 0:
            raise ValueError(f"warmup_epochs must be >= 0, got {self.warmup_epochs}")

    def replace(self, **changes) -> TrainConfig:
        """A copy with some fields changed; `model_*` keys change the model config."""
        model_changes = {k[6:]: changes.pop(k) for k in list(changes) if k.startswith("model_")}
        model = dataclasses.replace(self.model, **model_changes)
        return dataclasses.replace(self, model=model, **changes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        d = dict(d)
        model = ModelConfig(**d.pop("model", {}))
        return cls(model=model, **d)


def smoke() -> TrainConfig:
    """A preset that trains in seconds on 2 cores: for CI and smoke runs of the notebooks."""
    return TrainConfig(n_train=2048, n_val=512, batch_size=64, epochs=2, warmup_epochs=0.0)


# The source checkout: recipes/ and results/ live beside the package (the tutorial's layout).
REPO = Path(__file__).resolve().parents[1]


def notebooks() -> list[Path]:
    """The tutorial notebooks, in their order (also the book's chapters)."""
    return sorted((REPO / "notebooks").glob("0*.ipynb"))


# Each notebook's smoke run (CI, `make notebooks SMOKE=1`): the same steps at tiny sizes, passed
# as papermill parameters, so that a parameter given beside them wins and the executed parameters
# cell shows the values that ran.
SMOKE = {
    "01_cluster_startup": {"tasks": 20},
    "02_horovod_scaling": {
        "workers": [1, 2],
        "main_workers": 2,
        "epochs": 2,
        "per_worker": 1024,
        "n_val": 1024,
        "warmup_epochs": 0.0,
        "repeats": 1,
    },
    "03_random_search_hpo": {"n_trials": 4, "epochs": 2, "n_train": 1024, "n_val": 512},
    "04_widget_hpo": {
        "n_trials": 3,
        "epochs": 6,
        "n_train": 2048,
        "n_val": 512,
    },
    "05_pbt_genetic": {
        "population": 4,
        "generations": 3,
        "n_train": 1024,
        "n_val": 512,
        "compare_seeds": [0],
    },
}


def notebook_parameters(name: str, smoke: bool = False, **given) -> dict:
    """papermill parameters for notebooks/<name>.ipynb: with `smoke`, the smoke preset (and the
    label smoke=True); those `given` override either."""
    if smoke and name not in SMOKE:
        raise ValueError(f"no smoke preset for notebook {name!r}; presets: {', '.join(SMOKE)}")
    return {**({"smoke": True, **SMOKE[name]} if smoke else {}), **given}


def data_dir() -> Path:
    """Where the dataset lives: $LHCCNN_DATA_DIR, else data/synthetic in the source checkout."""
    env = os.environ.get("LHCCNN_DATA_DIR")
    return Path(env) if env else REPO / "data" / "synthetic"


def results_dir() -> Path:
    """Where runs write their figures: $LHCCNN_RESULTS, else results/ in the source checkout."""
    env = os.environ.get("LHCCNN_RESULTS")
    return Path(env) if env else REPO / "results"
