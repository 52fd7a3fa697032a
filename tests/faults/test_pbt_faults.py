"""Faults in PBT: a Dask worker killed mid-generation, and a corrupt checkpoint."""

import os
import signal
import threading
import time

import pytest

from lhccnn import slurm as slurm_cli
from lhccnn.cluster import Cluster, ClusterSpec
from lhccnn.config import smoke
from lhccnn.pbt import PBT, PBTConfig

BASE = smoke().replace(n_train=1024, n_val=256)


def test_worker_killed_mid_generation_member_is_retried(slurm, tiny_data, tmp_path):
    pbt = PBT(
        tmp_path / "run",
        BASE,
        config=PBTConfig(population=4, generations=2, seed=5),
        data=tiny_data,
    )
    killed = {}

    def kill_a_worker_in_generation_1():
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            for t in pbt.members(1):
                st = pbt.store.status(t)
                if st["status"] == "running":
                    os.kill(st["pid"], signal.SIGKILL)  # the engine process that hosts the worker
                    killed.update(trial=t, pid=st["pid"])
                    return
            time.sleep(0.05)

    with Cluster.start(ClusterSpec(nodes=2, engines=2, wait=60)) as cluster:
        client = cluster.dask()
        threading.Thread(target=kill_a_worker_in_generation_1, daemon=True).start()
        pbt.run(client, progress=False)
        workers_left = len(client.scheduler_info()["workers"])
    assert killed, "no member of generation 1 was caught running"
    assert workers_left == 1
    df = pbt.lineage()
    assert len(df) == 8 and set(df["status"]) == {"completed"}, df[["status"]]
    st = pbt.store.status(killed["trial"])
    assert st["attempt"] == 2 and st["pid"] != killed["pid"]  # retried on the surviving worker
    assert [m["epoch"] for m in pbt.store.metrics(killed["trial"])] == [2]
    assert slurm_cli.queue() == []


def test_corrupt_checkpoint_falls_back_to_the_parents_previous_one(local_dask, tiny_data, tmp_path):
    pbt = PBT(
        tmp_path / "run",
        BASE,
        config=PBTConfig(population=3, generations=3, seed=6),
        data=tiny_data,
    )
    corrupted = {}

    def truncate_the_best(p, g):
        if g == 1:  # the elite of generation 1 is surely inherited by generation 2
            best = p.history()[-1]["best"]
            path = p.store.checkpoint(best)
            path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
            corrupted["trial"] = best

    with pytest.warns(RuntimeWarning, match="unusable"):
        pbt.run(local_dask, progress=False, on_generation=truncate_the_best)
    bad = corrupted["trial"]
    heirs = [t for t in pbt.members(2) if pbt.store.config(t)["inherit"] == bad]
    assert heirs
    for t in heirs:
        st = pbt.store.status(t)
        assert st["status"] == "completed"
        assert st["loaded_from"] == pbt.store.config(bad)["inherit"]  # the parent's previous one
        assert "sha256" in st["warnings"][0] and bad in st["warnings"][0]
