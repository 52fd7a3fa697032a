"""The synthetic generator: determinism, schema, detector geometry, atomic files, difficulty."""

import h5py
import numpy as np
import pytest

from lhccnn import physics, synthetic


@pytest.fixture(scope="module")
def sample():
    return synthetic.generate(2048, 11, truth=True)


def test_generate_is_deterministic_for_a_seed():
    a, b = synthetic.generate(300, 5), synthetic.generate(300, 5)
    for k in ("hist", "y", "weight"):
        np.testing.assert_array_equal(a[k], b[k])


def test_different_seeds_give_different_events():
    a, b = synthetic.generate(200, 5), synthetic.generate(200, 6)
    assert not np.array_equal(a["hist"], b["hist"])
    assert not np.array_equal(a["weight"], b["weight"])


def test_generator_as_seed_is_deterministic():
    a = synthetic.generate(100, np.random.default_rng(3))
    b = synthetic.generate(100, np.random.default_rng(3))
    np.testing.assert_array_equal(a["hist"], b["hist"])


def test_smaller_sample_is_a_prefix_of_a_larger_one():
    small, large = synthetic.generate(100, 9), synthetic.generate(synthetic.BLOCK + 50, 9)
    np.testing.assert_array_equal(small["hist"], large["hist"][:100])
    np.testing.assert_array_equal(small["y"], large["y"][:100])


def test_schema_shapes_dtypes_and_values(sample):
    n = 2048
    assert sample["hist"].shape == (n, 64, 64) and sample["hist"].dtype == np.float32
    assert sample["y"].shape == (n,) and sample["y"].dtype == np.float32
    assert sample["weight"].shape == (n,) and sample["weight"].dtype == np.float32
    assert set(np.unique(sample["y"])) == {0.0, 1.0}
    for k in ("hist", "y", "weight"):
        assert np.isfinite(sample[k]).all()
    assert (sample["hist"] >= 0).all()
    assert (sample["weight"] > 0).all()
    assert abs(sample["y"].mean() - 0.43) < 0.01


def test_background_weights_are_orders_of_magnitude_larger(sample):
    y, w = sample["y"], sample["weight"]
    assert w[y == 0].mean() > 1000 * w[y == 1].mean()
    # slicing: background weights fall with HT, so they spread over orders of magnitude
    assert w[y == 0].max() / w[y == 0].min() > 100


def test_signal_has_more_energy_and_more_jets_than_background(sample):
    y, h = sample["y"], sample["hist"]
    e = physics.total_energy(h)
    assert np.median(e[y == 1]) > 1.3 * np.median(e[y == 0])
    nj = physics.count_jets(h)
    assert nj[y == 1].mean() > nj[y == 0].mean() + 1


def test_signal_fraction_is_configurable():
    assert synthetic.generate(1000, 1, signal_fraction=0.2)["y"].mean() == pytest.approx(
        0.2, abs=0.01
    )


def test_jet_at_phi_edge_deposits_on_both_sides():
    img = synthetic.render([0], [0.0], [np.pi - 0.01], [100.0], [0.08], 1)[0]
    assert img[:, 63].sum() > 1.0 and img[:, 0].sum() > 1.0
    assert img.sum() == pytest.approx(100.0, rel=1e-4)  # central jet: nothing lost


def test_jet_beyond_eta_acceptance_loses_energy():
    img = synthetic.render([0], [2.45], [0.0], [100.0], [0.08], 1)[0]
    assert 10.0 < img.sum() < 90.0
    assert img[-1].sum() > 0


def test_write_file_matches_generate_and_has_the_schema(tmp_path):
    path = synthetic.write_file(tmp_path / "x.h5", 1100, 4, chunk=1024, progress=False)
    ref = synthetic.generate(1100, 4)
    with h5py.File(path, "r") as f:
        g = f["all_events"]
        for k in ("hist", "y", "weight"):
            np.testing.assert_array_equal(g[k][()], ref[k])
        assert g["hist"].chunks == (256, 64, 64)
        assert g["hist"].compression is None
        assert f.attrs["generator"] == "lhccnn.synthetic"
        assert f.attrs["seed"] == 4 and f.attrs["n_events"] == 1100
        assert f.attrs["version"] == synthetic.VERSION
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.h5"]


def test_write_file_leaves_no_file_when_interrupted(tmp_path, monkeypatch):
    real, calls = synthetic._generate_range, []

    def failing(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt  # e.g. Ctrl-C in the middle of the second chunk
        return real(*args, **kwargs)

    monkeypatch.setattr(synthetic, "_generate_range", failing)
    with pytest.raises(KeyboardInterrupt):
        synthetic.write_file(tmp_path / "x.h5", 2048, 1, chunk=1024, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_energy_sum_separates_but_not_trivially(sample):
    auc = physics.roc_auc(sample["y"], physics.total_energy(sample["hist"]))
    assert 0.7 < auc < 0.9


def test_split_seeds_differ():
    seeds = {synthetic.split_seed(0, s) for s in synthetic.SPLITS}
    assert len(seeds) == 3
