"""The PBT loop on real Dask workers (local engines): lineage, steering, pause, resume, reruns."""

import dataclasses
import threading
import time

import numpy as np
import pytest

from lhccnn.config import smoke
from lhccnn.pbt import PBT, GenerationFailed, PBTConfig

BASE = smoke().replace(n_train=512, n_val=256)
CONFIG = PBTConfig(population=4, generations=3, mutation_rate=0.3, seed=7)
LINEAGE = ["generation", "member", "parents", "inherit", "lr", "dropout", "optimizer"]


@pytest.fixture(scope="module")
def straight_run(local_dask, tiny_data, tmp_path_factory):
    pbt = PBT(tmp_path_factory.mktemp("pbt") / "run", BASE, config=CONFIG, data=tiny_data)
    pbt.run(local_dask, progress=False)
    return pbt


def test_pbt_run_keeps_a_consistent_lineage(straight_run):
    pbt = straight_run
    df = pbt.lineage()
    assert len(df) == 12 and set(df["status"]) == {"completed"}
    gen0 = df[df.generation == 0]
    assert all(p == [] for p in gen0.parents) and gen0.inherit.isna().all()
    for g in (1, 2):
        prev, cur = df[df.generation == g - 1], df[df.generation == g]
        for t, row in cur.iterrows():
            assert row.parents and set(row.parents) <= set(prev.index)
            assert row.inherit in row.parents
            # the child starts from the fitter parent's weights
            assert prev.loc[row.inherit, "fitness"] == max(
                prev.loc[p, "fitness"] for p in row.parents
            )
            assert pbt.store.status(t)["loaded_from"] == row.inherit
            pbt.store.verify_checkpoint(t)
        # the fittest half carries on unchanged, and only it breeds the rest
        fittest = set(prev.val_loss.nsmallest(CONFIG.n_survivors(len(prev))).index)
        survivors = cur[cur.parents.map(len) == 1]
        assert set(survivors.inherit) == fittest and len(survivors) == len(fittest) == 2
        for _, row in survivors.iterrows():
            assert (
                row[["lr", "dropout", "optimizer"]].tolist()
                == prev.loc[row.inherit, ["lr", "dropout", "optimizer"]].tolist()
            )
        assert set().union(*cur.parents) <= fittest
    # epochs are numbered along the lineage: generation g trains epoch g + 1
    assert [m["epoch"] for m in pbt.store.metrics("g002-m01")] == [3]
    hist = pbt.history()
    assert [h["generation"] for h in hist] == [0, 1, 2]
    for h in hist:
        losses = df[df.generation == h["generation"]].val_loss
        assert h["best_val_loss"] == pytest.approx(losses.min())
        assert h["mean_val_loss"] == pytest.approx(losses.mean())
        assert 0 <= h["overhead_s"] < h["wall_s"]
    chain = pbt.best_lineage()
    assert [pbt.store.config(t)["generation"] for t in chain] == [0, 1, 2]
    assert pbt.best_fom() == pytest.approx(
        min(m["val_loss"] for t in df.index for m in pbt.store.metrics(t))
    )


def test_a_resumed_run_repeats_the_straight_run_exactly(
    straight_run, local_dask, tiny_data, tmp_path
):
    # stop after generation 0, then a fresh PBT object on the store (what a restarted kernel
    # makes) resumes: same seed and schedule -> the same lineage and the same losses
    root = tmp_path / "run"
    first = PBT(root, BASE, config=CONFIG, data=tiny_data)
    first.run(local_dask, progress=False, on_generation=lambda p, g: p.steering.stop())
    assert first.finished_generations() == 1
    again = PBT(root)
    again.run(local_dask, progress=False)  # clears the old stop request
    a, b = straight_run.lineage(), again.lineage()
    assert a[LINEAGE].equals(b[LINEAGE])
    np.testing.assert_allclose(a.val_loss, b.val_loss, rtol=1e-6)


def test_steering_applies_at_the_next_generation_and_is_logged(local_dask, tiny_data, tmp_path):
    pbt = PBT(
        tmp_path / "run", BASE, config=dataclasses.replace(CONFIG, generations=2), data=tiny_data
    )
    t_request = {}

    def steer(p, g):
        if g == 0:
            t_request["t"] = time.time()
            p.steering.set(population=3, mutation_rate=0.9, crossover_rate=0.0)

    pbt.run(local_dask, progress=False, on_generation=steer)
    assert len(pbt.members(0)) == 4 and len(pbt.members(1)) == 3
    assert pbt.generation_record(1)["steering"]["mutation_rate"] == 0.9
    applied = [e for e in pbt.steering.events() if e["event"] == "applied"]
    assert applied[-1]["generation"] == 1 and applied[-1]["time"] >= t_request["t"]
    assert applied[-1]["values"]["population"] == 3
    with pytest.raises(ValueError, match="population must be an integer >= 2, got 1"):
        pbt.steering.set(population=1)
    with pytest.raises(ValueError, match=r"mutation_rate must be a number in \[0, 1\], got -0.1"):
        pbt.steering.set(mutation_rate=-0.1)


def test_pause_holds_the_run_at_the_boundary_until_resumed(local_dask, tiny_data, tmp_path):
    pbt = PBT(
        tmp_path / "run",
        BASE,
        config=PBTConfig(population=2, generations=2, seed=4),
        data=tiny_data,
    )
    paused = threading.Event()

    def pause(p, g):
        if g == 0:
            p.steering.pause()
            paused.set()

    pbt.start(local_dask, on_generation=pause)
    assert paused.wait(120)
    time.sleep(3)
    assert pbt.running() and pbt.members(1) == []  # waiting, nothing of generation 1 yet
    pbt.steering.resume()
    pbt.wait(timeout=120)
    assert pbt.finished_generations() == 2


def test_a_generation_where_every_member_fails_stops_the_run_with_the_reason(local_dask, tmp_path):
    pbt = PBT(tmp_path / "run", BASE, config=CONFIG, data=tmp_path / "no-data")
    with pytest.raises(GenerationFailed, match=r"generation 0: .*no-data/train.h5: no such file"):
        pbt.run(local_dask, progress=False)
    assert pbt.finished_generations() == 0 and pbt.members(1) == []  # nothing bred from it
