"""Horovod over MPI: 2 ranks keep identical weights and read disjoint shards."""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).parent


@pytest.fixture(scope="module")
def two_ranks(tiny_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("hvd")
    cmd = [
        "mpirun",
        "-np",
        "2",
        "--bind-to",
        "none",
        "--oversubscribe",
        sys.executable,
        str(HERE / "hvd_ranks.py"),
        str(tiny_data),
        str(out),
    ]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    return [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)], out


def test_two_ranks_end_with_identical_weights(two_ranks):
    ranks, _ = two_ranks
    assert ranks[0]["size"] == ranks[1]["size"] == 2
    assert ranks[0]["weights_digest"] == ranks[1]["weights_digest"]


def test_two_ranks_read_disjoint_equal_shards(two_ranks):
    ranks, _ = two_ranks
    (a0, b0), (a1, b1) = ranks[0]["shard"], ranks[1]["shard"]
    assert b0 - a0 == b1 - a1 == 512  # 1024 events split in two
    assert b0 <= a1  # disjoint: rank 0 ends where rank 1 starts


def test_linear_lr_scaling_applies_with_two_ranks(two_ranks):
    ranks, _ = two_ranks
    assert ranks[0]["target_lr"] == pytest.approx(2e-3)


def test_only_rank_zero_writes_files(two_ranks):
    _, out = two_ranks
    metrics = json.loads((out / "run" / "metrics.json").read_text())
    assert metrics["rank"] == 0 and metrics["size"] == 2
    assert metrics["test"]["n"] == 256


def test_a_batch_run_packs_its_ranks_onto_one_node_when_asked(slurm, tiny_data, tmp_path):
    """On the mini SLURM every node is this machine: ranks on two nodes talk through TCP, ranks
    on one node through shared memory (notebook 02 measures the difference)."""
    from lhccnn import scaling
    from lhccnn.config import TrainConfig

    config = TrainConfig(n_train=512, n_val=128, epochs=1, batch_size=64, warmup_epochs=0.0)
    row = scaling.batch_run(config, 2, tmp_path, data=tiny_data, n_test=128, ranks_per_node=2)
    (log,) = [p.read_text() for p in tmp_path.glob("*.out")]
    assert re.search(r": 2 ranks on node\d, launcher", log), log  # one node, not node[1-2]
    assert row["nodes"] == 1 and row["workers"] == 2
