"""Faults: a Horovod rank killed mid-training gives a clear error, and the cluster still stops."""

import os
import signal
import time

import pytest

from lhccnn import slurm as slurm_cli
from lhccnn.cluster import Cluster, ClusterSpec
from lhccnn.config import smoke
from lhccnn.train import train


def test_killed_rank_gives_an_error_within_60s_and_cluster_still_stops(slurm, tiny_data, tmp_path):
    cluster = Cluster.start(ClusterSpec(nodes=2, engines=2, mpi=True, wait=60))
    try:
        pids = cluster.view.apply(os.getpid)
        ar = cluster.view.apply_async(train, smoke().replace(epochs=200, verbose=0), data=tiny_data,
                                      out_dir=tmp_path / "run", use_horovod=True)
        deadline = time.monotonic() + 120
        while not (tmp_path / "run" / "history.json").exists():  # training is under way
            assert time.monotonic() < deadline and not ar.ready(), ar.get() if ar.ready() else "slow"
            time.sleep(0.5)
        os.kill(pids[1], signal.SIGKILL)
        t0 = time.monotonic()
        with pytest.raises(Exception) as err:
            ar.get(timeout=60)
        elapsed = time.monotonic() - t0
        assert elapsed < 60
        assert not isinstance(err.value, TimeoutError), "no error within 60 s: a hang"
        print(f"error after {elapsed:.1f} s: {type(err.value).__name__}: {str(err.value)[:200]}")
    finally:
        seconds = cluster.stop()
    assert seconds < 30
    assert slurm_cli.queue() == []
