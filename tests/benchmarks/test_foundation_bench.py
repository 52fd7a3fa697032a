"""Benchmarks of the foundation, measured side by side in one run, recorded in results/bench.json.

Figures are recorded, not asserted: the assertions below only check that they are sane, since
timings on a shared 2-core machine are noisy. The targets (issues 2 and 14) are in TARGETS and
in the printed table: Horovod 2x1 against twice 1x1 >= 0.90 and against two independent
trainings at once >= 0.95, streaming against in-memory >= 0.95.
"""

import json
import os
import statistics
import subprocess
import sys
import time

import pytest

from lhccnn.config import data_dir

# Per-rank work is the same in every training run; epoch 1 (graph tracing) is excluded by
# train.py, which reports the median of the later epochs. make test runs a smaller size: on a
# slower 2-core machine (600 samples/s) the full one took 11 of make test's minutes.
FULL = os.environ.get("LHCCNN_BENCH") == "full"
EVENTS_PER_RANK, EPOCHS, REPEATS = (8192, 4, 3) if FULL else (2048, 3, 2)
TARGETS = {
    "horovod_2x1_efficiency": 0.90,
    "horovod_2x1_of_ceiling": 0.95,  # issue 14: against two independent trainings at once
    "horovod_2x1_pinned_of_ceiling": 0.95,  # the same, each rank and training on its own core
    "streaming_over_memory": 0.95,
}
RECORD: dict = {}


def _train(tmp_path, name, *args, ranks=1, epochs=EPOCHS, together=1, pinned=False):
    """samples/s of one training (of `ranks` Horovod ranks); with `together`, that many
    independent one-process trainings started at once, never talking: their sum. `pinned`:
    each rank, or each of the independent trainings, on a core of its own."""
    if together > 1:
        outs = [tmp_path / f"{name}-{i}" for i in range(together)]
        cores = sorted(os.sched_getaffinity(0))
        procs = []
        for i, out in enumerate(outs):  # logs to files: a full pipe would stall one of the pair
            with open(tmp_path / f"{out.name}.log", "w") as log:  # the child keeps its own fd
                cmd = _command(out, *args, epochs=epochs)
                core = {cores[i % len(cores)]}
                pin = (lambda core=core: os.sched_setaffinity(0, core)) if pinned else None
                procs.append(
                    subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, preexec_fn=pin)
                )
        for proc, out in zip(procs, outs):
            code = proc.wait(timeout=900)
            assert code == 0, (tmp_path / f"{out.name}.log").read_text()[-3000:]
        return sum(_samples_per_s(out) for out in outs)
    cmd = _command(tmp_path / name, *args, ranks=ranks, epochs=epochs, pinned=pinned)
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, p.stderr[-3000:]
    return _samples_per_s(tmp_path / name)


def _samples_per_s(out) -> float:
    return json.loads((out / "metrics.json").read_text())["samples_per_s"]


def _command(out, *args, ranks=1, epochs=EPOCHS, pinned=False) -> list[str]:
    cmd = [
        sys.executable,
        "-m",
        "lhccnn.train",
        "--data",
        str(data_dir()),
        "--out",
        str(out),
        "--epochs",
        str(epochs),
        "--n-train",
        str(EVENTS_PER_RANK * ranks),
        "--n-val",
        "1024",
        "--n-test",
        "1024",
        "--warmup-epochs",
        "0",
        "--verbose",
        "0",
        *args,
    ]
    if ranks > 1:
        cmd = [
            "mpirun",
            "-np",
            str(ranks),
            "--bind-to",
            "core" if pinned else "none",
            "--mca",
            "mpi_yield_when_idle",
            "1",
            *cmd,
            "--horovod",
        ]
    return cmd


def _last_epoch(tmp_path, name) -> dict:
    return json.loads((tmp_path / name / "history.json").read_text())[-1]


MATMUL = """
import sys, time
import tensorflow as tf
tf.config.threading.set_intra_op_parallelism_threads(1)
tf.config.threading.set_inter_op_parallelism_threads(1)
n, dtype = 1024, getattr(tf, sys.argv[1])
a = tf.cast(tf.random.uniform((n, n)), dtype)
b = tf.cast(tf.random.uniform((n, n)), dtype)
f = tf.function(lambda: tf.linalg.matmul(a, b))
f()
times = []
for _ in range(5):
    t = time.perf_counter()
    f().numpy()
    times.append(time.perf_counter() - t)
print(2 * n**3 / min(times) / 1e9)
"""


def _matmul_gflops(dtype: str) -> float:
    """One core's matrix multiply speed (1024 x 1024, best of 5): the roofline of the CNN."""
    p = subprocess.run(
        [sys.executable, "-c", MATMUL, dtype], capture_output=True, text=True, timeout=600
    )
    assert p.returncode == 0, p.stderr[-3000:]
    return float(p.stdout.split()[-1])


@pytest.fixture(scope="module", autouse=True)
def record(write_record):
    if not (data_dir() / "train.h5").exists():
        pytest.fail(f"no dataset in {data_dir()}: run `make data`")
    RECORD["size"] = "full" if FULL else "ci"  # the book's page shows full-size figures only
    yield
    write_record("bench", "benchmarks", TARGETS, RECORD)


def test_generator_events_per_second():
    from lhccnn.synthetic import generate

    generate(1024, seed=1)  # warm caches
    t0 = time.perf_counter()
    generate(16384, seed=2)
    RECORD["generator_events_per_s"] = rate = 16384 / (time.perf_counter() - t0)
    assert rate > 1000


def test_training_throughput_threads_streaming_and_horovod(tmp_path):
    # One run, side by side and interleaved (1 rank, 2 ranks, two independent, 1 rank, ...), so
    # that the ratios compare like with like on a machine whose speed drifts; medians over the
    # repeats. Two independent trainings at once are the ceiling of 2 ranks: the cores share
    # caches and memory bandwidth, which the ideal (2 x one alone) ignores.
    # Pinned: each rank (mpirun --bind-to core), and each of the two independent trainings, on
    # a core of its own, so that no rank's step waits for a core the other rank's threads hold.
    ones, hvds, pairs, pinned_hvds, pinned_pairs = [], [], [], [], []
    for i in range(REPEATS):
        ones.append(_train(tmp_path, f"t1-{i}", "--threads", "1"))
        hvds.append(_train(tmp_path, f"hvd-{i}", "--threads", "1", ranks=2))
        pairs.append(_train(tmp_path, f"pair-{i}", "--threads", "1", together=2))
        pinned_hvds.append(_train(tmp_path, f"phvd-{i}", "--threads", "1", ranks=2, pinned=True))
        pinned_pairs.append(
            _train(tmp_path, f"ppair-{i}", "--threads", "1", together=2, pinned=True)
        )
    one, hvd, pair = statistics.median(ones), statistics.median(hvds), statistics.median(pairs)
    pinned_hvd, pinned_pair = statistics.median(pinned_hvds), statistics.median(pinned_pairs)
    of_ceiling = [h / p for h, p in zip(hvds, pairs)]  # each Horovod pair beside its own ceiling
    pinned_of_ceiling = [h / p for h, p in zip(pinned_hvds, pinned_pairs)]
    two = _train(tmp_path, "t2", "--threads", "2")
    mem = _train(tmp_path, "mem", "--threads", "1", "--in-memory")
    stream = _train(tmp_path, "stream", "--threads", "1")
    RECORD.update(
        {
            "train_1rank_1thread_samples_per_s": one,
            "train_1rank_2threads_samples_per_s": two,
            "train_horovod_2x1_samples_per_s": hvd,
            "horovod_2x1_efficiency": hvd / (2 * one),
            "train_2_independent_samples_per_s": pair,
            "horovod_2x1_of_ceiling": hvd / pair,
            # the spread of the repeats' own ratios: this machine's noise, beside the target
            "horovod_2x1_of_ceiling_lowest": min(of_ceiling),
            "horovod_2x1_of_ceiling_highest": max(of_ceiling),
            "train_horovod_2x1_pinned_samples_per_s": pinned_hvd,
            "train_2_independent_pinned_samples_per_s": pinned_pair,
            "horovod_2x1_pinned_of_ceiling": pinned_hvd / pinned_pair,
            "horovod_2x1_pinned_of_ceiling_lowest": min(pinned_of_ceiling),
            "horovod_2x1_pinned_of_ceiling_highest": max(pinned_of_ceiling),
            "train_in_memory_1thread_samples_per_s": mem,
            "streaming_over_memory": stream / mem,
        }
    )
    # sanity only: the model is learning at a plausible speed and 2 ranks do add throughput
    assert 50 < one < 20_000
    assert hvd > one
    assert all(0.3 < r < 1.5 for r in of_ceiling + pinned_of_ceiling)  # broad: a run gone wrong


def test_bfloat16_against_float32_and_the_matmul_roofline(tmp_path):
    # Keras's mixed_bfloat16 policy against float32, interleaved, the same seed and data: speed,
    # and the last epoch's validation loss and accuracy. bfloat16 is fast only where the CPU
    # multiplies it natively (AMX, AVX-512 BF16); /proc/cpuinfo's flags are recorded with it.
    from lhccnn.config import TrainConfig
    from lhccnn.model import training_flops

    speed: dict = {"float32": [], "mixed_bfloat16": []}
    for i in range(REPEATS if FULL else 1):
        for precision, runs in speed.items():
            # CI: 2 epochs (train.py's speed is the median after the first, which traces)
            epochs = EPOCHS if FULL else 2
            runs.append(
                _train(tmp_path, f"{precision}-{i}", "--precision", precision, epochs=epochs)
            )
    flops = training_flops(TrainConfig().model)
    peak = {d: _matmul_gflops(d) for d in ("float32", "bfloat16")}
    flags = open("/proc/cpuinfo").read().split("flags", 1)[-1].split("\n", 1)[0].split()
    for precision, runs in speed.items():
        last = _last_epoch(tmp_path, f"{precision}-0")
        sps = statistics.median(runs)
        RECORD[f"train_{precision}_samples_per_s"] = sps
        RECORD[f"train_{precision}_val_loss"] = last["val_loss"]
        RECORD[f"train_{precision}_val_accuracy"] = last["val_accuracy"]
        RECORD[f"train_{precision}_gflops"] = sps * flops / 1e9
    RECORD["matmul_1core_float32_gflops"] = peak["float32"]
    RECORD["matmul_1core_bfloat16_gflops"] = peak["bfloat16"]
    RECORD["train_float32_fraction_of_matmul_peak"] = (
        RECORD["train_float32_gflops"] / peak["float32"]
    )
    RECORD["bfloat16_over_float32_speed"] = (
        RECORD["train_mixed_bfloat16_samples_per_s"] / RECORD["train_float32_samples_per_s"]
    )
    RECORD["cpu_bfloat16_flags"] = " ".join(f for f in flags if "bf16" in f or "amx" in f) or "none"
    for precision in speed:  # both learn: better than guessing the majority class
        assert RECORD[f"train_{precision}_val_loss"] < 0.7
