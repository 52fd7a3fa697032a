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


def test_a_batch_run_with_a_timeline_says_where_rank_0s_time_went(tiny_data, tmp_path):
    from lhccnn import scaling
    from lhccnn.config import TrainConfig

    config = TrainConfig(n_train=1024, n_val=128, epochs=2, batch_size=64, warmup_epochs=0.0)
    path = tmp_path / "timeline.json"
    row = scaling.batch_run(config, 2, tmp_path, data=tiny_data, local=True, timeline=path)
    t = row["timeline"]
    assert t == scaling.timeline_steps(path)  # rank 0 wrote the file the row was read from
    assert t["steps"] >= 2 * 8  # 8 steps of 64 per rank and epoch, each allreduces its gradients
    assert t["compute_s"] > t["allreduce_s"] > 0 and t["waiting_for_peers_s"] >= 0
    parts = t["compute_s"] + t["waiting_for_peers_s"] + t["allreduce_s"]
    assert parts == pytest.approx(t["span_s"])
    assert t["span_s"] < row["wall_seconds"]  # inside rank 0's training


POLICIES = """
import json, logging, os, sys
import horovod.tensorflow.keras  # its import starts threads of its own (TensorFlow's)
from lhccnn.train import horovod_init
before = set(os.listdir("/proc/self/task"))
hvd = horovod_init(idle_comm_threads=sys.argv[1] == "1")
policy = {t: os.sched_getscheduler(int(t)) for t in os.listdir("/proc/self/task")}
warnings = []
logging.getLogger("lhccnn.train").addHandler(logging.Handler())
logging.getLogger("lhccnn.train").handlers[-1].emit = warnings.append
horovod_init(idle_comm_threads=True)  # a second call (train() after a notebook's): no new init
report = {"rank": hvd.rank(), "size": hvd.size(), "idle": os.SCHED_IDLE,
          "new": [policy[t] for t in set(policy) - before],
          "old": [policy[t] for t in before if t in policy], "warned": len(warnings)}
with open(os.path.join(sys.argv[2], f"rank{hvd.rank()}.json"), "w") as f:
    json.dump(report, f)
"""


def ranks_report(script, *args, out, timeout, mca=()):
    """Run `script` on 2 unbound ranks; each writes out/rank<N>.json (never stdout, where
    mpirun may splice the ranks' lines together)."""
    p = subprocess.run(
        ["mpirun", "-np", "2", "--bind-to", "none", "--oversubscribe", *mca,
         sys.executable, "-c", script, *args, str(out)],
        capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    return [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]


@pytest.mark.parametrize("idle", [True, False])
def test_idle_comm_threads_lowers_only_the_threads_hvd_init_starts(idle, tmp_path):
    mca = ("--mca", "btl", "tcp,self")
    ranks = ranks_report(POLICIES, "1" if idle else "0", out=tmp_path, timeout=120, mca=mca)
    assert [r["rank"] for r in ranks] == [0, 1] and ranks[0]["size"] == 2
    for r in ranks:
        assert r["new"], "hvd.init() started no thread: nothing to check"
        assert all((pol == r["idle"]) == idle for pol in r["new"]), r
        assert r["idle"] not in r["old"], r  # the training's own threads keep their priority
        # asking again says so only where the first call did not lower them
        assert r["warned"] == (0 if idle else 1), r


PINNED = """
import json, os, sys
from lhccnn.config import TrainConfig
from lhccnn.train import train
config = TrainConfig(n_train=512, n_val=128, epochs=1, batch_size=64, warmup_epochs=0.0,
                     pin_cores=True)
r = train(config, data=sys.argv[1], use_horovod=True, n_test=128)
threads = [sorted(os.sched_getaffinity(int(t))) for t in os.listdir("/proc/self/task")]
with open(os.path.join(sys.argv[2], f"rank{r['rank']}.json"), "w") as f:
    json.dump({"rank": r["rank"], "cores": r["pinned_cores"], "threads": threads}, f)
"""


def test_ranks_sharing_a_machine_split_its_cores_down_to_every_thread(tiny_data, tmp_path):
    import os

    ranks = ranks_report(PINNED, str(tiny_data), out=tmp_path, timeout=300)
    allowed = sorted(os.sched_getaffinity(0))
    half = len(allowed) // 2
    assert [r["cores"] for r in ranks] == [allowed[:half], allowed[half:]]
    for r in ranks:  # TensorFlow's threads, started after the pinning, inherit it
        assert len(r["threads"]) > 3 and all(t == r["cores"] for t in r["threads"]), r


def test_independent_trainings_started_together_split_the_machines_cores(tiny_data, tmp_path):
    from lhccnn import scaling
    from lhccnn.config import TrainConfig

    config = TrainConfig(n_train=512, n_val=128, epochs=1, batch_size=64, pin_cores=True)
    row = scaling.ceiling_run(config, 2, tmp_path, data=tiny_data, local=True, n_test=128)
    assert row["mode"] == "independent" + scaling.PINNED
    (a, b) = row["task_cores"]
    assert a and b and not set(a) & set(b)  # each its own share, none twice


def test_pin_group_without_pin_cores_or_with_a_bad_index_is_refused(tmp_path):
    from lhccnn.train import main

    assert main(["--smoke", "--pin-group", str(tmp_path), "0", "2"]) == 2
    assert main(["--smoke", "--pin-cores", "--pin-group", str(tmp_path), "2", "2"]) == 2
    assert main(["--smoke", "--pin-cores", "--pin-group", str(tmp_path), "one", "2"]) == 2
    assert not list(tmp_path.iterdir())  # refused before any training started
