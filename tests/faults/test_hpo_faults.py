"""Faults in a random search: an engine SIGKILLed mid-trial, and a kernel restart."""

import os
import signal
import threading
import time

import numpy as np

from lhccnn import slurm as slurm_cli
from lhccnn.cluster import Cluster, ClusterSpec
from lhccnn.config import smoke
from lhccnn.hpo import Choice, LogUniform, random_search
from lhccnn.store import Store

SPACE = {"lr": LogUniform(1e-3, 5e-3), "dense_sizes": Choice(((32,), (64,)))}
BASE = smoke().replace(n_train=1024, n_val=256, epochs=3)


def test_engine_killed_mid_search_every_trial_completes_once(slurm, tiny_data, tmp_path):
    store = Store(tmp_path / "study")
    killed = {}

    def kill_a_running_engine():
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            for t in store.trial_ids():
                st = store.status(t)
                if st["status"] == "running" and store.metrics(t):  # mid-trial, a checkpoint exists
                    os.kill(st["pid"], signal.SIGKILL)
                    killed.update(trial=t, pid=st["pid"])
                    return
            time.sleep(0.1)

    with Cluster.start(ClusterSpec(nodes=2, engines=2, wait=60)) as cluster:
        threading.Thread(target=kill_a_running_engine, daemon=True).start()
        df = random_search(cluster.client.load_balanced_view(), SPACE, 4, store, BASE, seed=1,
                           data=tiny_data, retries=2, n_test=256, progress=False)
    assert killed, "no trial was caught running"
    assert len(df) == 4 and set(df["status"]) == {"completed"}, df[["status", "attempt"]]
    assert df.loc[killed["trial"], "attempt"] == 2  # retried on the surviving engine
    rows = store.metrics(killed["trial"])
    assert [r["epoch"] for r in rows] == [1, 2, 3]  # resumed: no epoch lost or duplicated
    assert slurm_cli.queue() == []


def test_a_restarted_kernel_reads_every_finished_trial_back(tiny_data, tmp_path):
    # the study lives on disk: a new Store object (what a restarted kernel makes) sees it all
    store = Store(tmp_path / "study")
    with Cluster.start(ClusterSpec(local=True, engines=2, wait=60)) as cluster:
        df = random_search(cluster.client.load_balanced_view(), SPACE, 3, store,
                           BASE.replace(epochs=1), seed=2, data=tiny_data, n_test=256,
                           progress=False)
    again = Store(tmp_path / "study").dataframe()
    assert list(again.index) == list(df.index)
    assert np.allclose(again["val_accuracy"], df["val_accuracy"])
