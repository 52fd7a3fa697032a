"""Faults in a random search: an engine SIGKILLed mid-trial, a trial that cannot build, a kernel
SIGKILLed mid-search and finished by a new one, a kernel restart."""

import os
import signal
import threading
import time

import numpy as np

from lhccnn import slurm as slurm_cli
from lhccnn.cluster import Cluster, ClusterSpec
from lhccnn.config import smoke
from lhccnn.hpo import random_search, run_trials
from lhccnn.space import Choice, LogUniform
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
        df = random_search(
            cluster.client.load_balanced_view(),
            SPACE,
            4,
            store,
            BASE,
            seed=1,
            data=tiny_data,
            retries=2,
            n_test=256,
            progress=False,
        )
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
        df = random_search(
            cluster.client.load_balanced_view(),
            SPACE,
            3,
            store,
            BASE.replace(epochs=1),
            seed=2,
            data=tiny_data,
            n_test=256,
            progress=False,
        )
    again = Store(tmp_path / "study").dataframe()
    assert list(again.index) == list(df.index)
    assert np.allclose(again["val_accuracy"], df["val_accuracy"])


def test_a_trial_that_cannot_build_fails_at_once_while_the_others_complete(
    local_engines, tiny_data, tmp_path
):
    # it used to be retried on every engine, then wait for ever for an engine it had not failed on
    store = Store(tmp_path / "study")
    bad = store.create_trial({"conv_sizes": [4] * 7})  # edited by hand, past the space's checks
    good = [store.create_trial({"lr": 3e-3}) for _ in range(2)]
    done = {}
    search = threading.Thread(
        target=lambda: done.update(
            df=run_trials(
                local_engines.client.load_balanced_view(),
                store,
                [bad, *good],
                BASE.replace(epochs=1),
                data=tiny_data,
                n_test=256,
                progress=False,
            )
        ),
        daemon=True,
    )
    search.start()
    search.join(180)
    assert not search.is_alive(), "the search hangs"
    st = store.status(bad)
    assert st["status"] == "failed" and st["attempt"] == 1 and "7 conv/pool blocks" in st["reason"]
    assert st["task_seconds"] < 30
    assert [store.status(t)["status"] for t in good] == ["completed", "completed"]


DRIVER = """
import sys
from lhccnn.cluster import Cluster, ClusterSpec
from lhccnn.config import smoke
from lhccnn.hpo import random_search
from lhccnn.space import Choice
from lhccnn.store import Store

root, data = sys.argv[1:3]
base = smoke().replace(n_train=1024, n_val=256, epochs=3)
with Cluster.start(ClusterSpec(local=True, engines=2, wait=60)) as cluster:
    random_search(cluster.client.load_balanced_view(), {"lr": Choice((2e-3, 3e-3))}, 4,
                  Store(root), base, seed=3, data=data, n_test=256, progress=False)
"""


def test_a_search_whose_kernel_was_killed_is_finished_by_a_new_kernel_training_each_epoch_once(
    local_engines, tiny_data, tmp_path
):
    import subprocess
    import sys

    import psutil

    from lhccnn.hpo import resume

    root = tmp_path / "study"
    driver = subprocess.Popen([sys.executable, "-c", DRIVER, str(root), str(tiny_data)])
    store = Store(root)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and driver.poll() is None:  # kill it mid-trial
        if any(
            store.status(t)["status"] == "running" and store.metric_rows(t)
            for t in store.trial_ids()
        ):
            break
        time.sleep(0.05)
    assert driver.poll() is None, "the search ended before it could be killed"
    # the kernel dies hard, and its local engines with it (as its whole allocation would)
    tree = psutil.Process(driver.pid).children(recursive=True) + [psutil.Process(driver.pid)]
    for p in tree:
        p.kill()
    psutil.wait_procs(tree, timeout=30)
    before = {t: store.status(t)["status"] for t in store.trial_ids()}
    assert "running" in before.values()

    df = resume(
        local_engines.client.load_balanced_view(),
        store,
        BASE,
        data=tiny_data,
        n_test=256,
        progress=False,
    )
    assert list(df.index) == sorted(before) and set(df["status"]) == {"completed"}
    for t in store.trial_ids():
        assert [r["epoch"] for r in store.metric_rows(t)] == [1, 2, 3], t  # raw rows: once each
        events = [a["event"] for a in store.attempts(t)]
        assert events == (
            ["begin", "lost", "begin", "end"] if before[t] == "running" else ["begin", "end"]
        ), (t, events)
