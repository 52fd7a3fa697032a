"""lhccnn.data: file validation errors, sharding, and the streaming / in-memory pipelines."""

from collections import Counter

import h5py
import numpy as np
import pytest

from lhccnn import data
from lhccnn.data import DataError, Shard

tf = pytest.importorskip("tensorflow")


def write_events(path, n=96, hist=None, y=None, weight=None, group="all_events", skip=()):
    """A small event file; by default hist[i] is filled with i so every sample is identifiable."""
    ids = np.arange(n)
    fields = {
        "hist": np.broadcast_to(ids[:, None, None], (n, 64, 64)).astype(np.float32)
        if hist is None
        else hist,
        "y": (ids % 2).astype(np.int8) if y is None else y,
        "weight": (1.0 + ids / 1000).astype(np.float32) if weight is None else weight,
    }
    with h5py.File(path, "w") as f:
        g = f.create_group(group)
        for name, value in fields.items():
            if name not in skip:
                g.create_dataset(name, data=value)
    return path


@pytest.fixture
def events(tmp_path):
    return write_events(tmp_path / "events.h5")


def sample_ids(x):
    """Invert preprocess on the filled images: the event index each sample came from."""
    x = np.asarray(x)
    assert np.all(x == x[:, :1, :1, :1])  # every cell of an image holds the same value
    return np.rint(x[:, 0, 0, 0].astype(np.float64) * data.ENERGY_SCALE).astype(int)


def epoch_ids(ds):
    return [int(i) for batch in ds for i in sample_ids(batch[0])]


# ----------------------------------------------------------------------------- errors


def expect_error(path, *words, **kwargs):
    with pytest.raises(DataError) as info:
        data.validate_file(path, **kwargs)
    message = str(info.value)
    assert str(path) in message
    for word in words:
        assert word in message, message
    return message


def test_validate_returns_number_of_events(events):
    assert data.validate_file(events) == 96


def test_missing_file_is_a_data_error(tmp_path):
    expect_error(tmp_path / "nope.h5", "no such file")


def test_directory_is_a_data_error(tmp_path):
    expect_error(tmp_path, "directory")


def test_missing_group_names_it(tmp_path):
    expect_error(write_events(tmp_path / "f.h5", group="events"), "all_events", "events")


@pytest.mark.parametrize("field", ["hist", "y", "weight"])
def test_missing_dataset_names_it(tmp_path, field):
    expect_error(write_events(tmp_path / "f.h5", skip=(field,)), f"all_events/{field}")


@pytest.mark.parametrize("shape", [(10, 32, 32), (10, 4096), (10, 64, 64, 2)])
def test_wrong_image_shape_says_what_was_expected(tmp_path, shape):
    path = write_events(tmp_path / "f.h5", n=10, hist=np.zeros(shape, np.float32))
    expect_error(path, "hist", str(shape), "expected (N, 64, 64)")


def test_labels_must_be_one_dimensional(tmp_path):
    path = write_events(tmp_path / "f.h5", n=10, y=np.zeros((10, 2)))
    expect_error(path, "all_events/y", "(10, 2)", "expected (N,)")


def test_different_lengths_give_all_three(tmp_path):
    path = write_events(tmp_path / "f.h5", n=10, y=np.zeros(9), weight=np.ones(11))
    expect_error(path, "hist: 10", "y: 9", "weight: 11")


def test_labels_other_than_0_1_show_value_and_index(tmp_path):
    y = np.zeros(80)
    y[57] = 2
    expect_error(write_events(tmp_path / "f.h5", n=80, y=y), "all_events/y", "2.0", "index 57")


def test_nan_label_is_rejected(tmp_path):
    y = np.zeros(20)
    y[3] = np.nan
    expect_error(write_events(tmp_path / "f.h5", n=20, y=y), "all_events/y", "index 3")


@pytest.mark.parametrize("field,bad", [("hist", np.nan), ("hist", np.inf), ("weight", np.nan)])
def test_non_finite_values_name_field_and_first_index(tmp_path, field, bad):
    n = 70
    arrays = {"hist": np.zeros((n, 64, 64), np.float32), "weight": np.ones(n, np.float32)}
    arrays[field][[41, 60]] = bad  # both rows bad: the message gives the first
    path = write_events(tmp_path / "f.h5", n=n, **arrays)
    expect_error(path, f"all_events/{field}", "non-finite", "index 41")


def test_bad_value_in_a_later_chunk_has_its_file_index(tmp_path, monkeypatch):
    monkeypatch.setattr(data, "READ_ROWS", 16)
    y = np.zeros(70)
    y[50] = -1
    path = write_events(tmp_path / "f.h5", n=70, y=y)
    expect_error(path, "index 50")
    assert data.validate_file(path, max_check=48) == 70  # the bad row is not scanned
    assert data.validate_file(path, check_values=False) == 70


def test_empty_file(tmp_path):
    path = write_events(tmp_path / "f.h5", n=0, hist=np.zeros((0, 64, 64), np.float32))
    expect_error(path, "no events", "N == 0")


def test_truncated_file(tmp_path, events):
    raw = events.read_bytes()
    cut = tmp_path / "cut.h5"
    cut.write_bytes(raw[: len(raw) // 2])
    expect_error(cut, "truncated or not an HDF5 file")


def test_text_file(tmp_path):
    path = tmp_path / "notes.h5"
    path.write_text("hist,y,weight\n1,2,3\n")
    expect_error(path, "truncated or not an HDF5 file")


def test_non_numeric_dataset(tmp_path):
    path = write_events(tmp_path / "f.h5", n=3, weight=np.array([b"a", b"b", b"c"]))
    expect_error(path, "all_events/weight", "numeric")


def test_load_arrays_checks_values_of_what_it_loads(tmp_path):
    y = np.zeros(30)
    y[20] = 5
    path = write_events(tmp_path / "f.h5", n=30, y=y)
    assert len(data.load_arrays(path, n=20)[0]) == 20  # row 20 not loaded: fine
    with pytest.raises(DataError, match="index 20"):
        data.load_arrays(path, start=10)


@pytest.mark.parametrize(
    "kwargs,words",
    [
        (dict(batch_size=0), "batch_size"),
        (dict(batch_size=8, n=0), "n must be"),
        (dict(batch_size=8, rank=2, size=2), "rank"),
        (dict(batch_size=8, rank=-1), "rank"),
        (dict(batch_size=8, size=0), "size"),
        (dict(batch_size=8, n=3, size=4), "non-empty shards"),
        (dict(batch_size=200, drop_remainder=True), "no full batch"),
    ],
)
def test_bad_arguments_are_data_errors(events, kwargs, words):
    with pytest.raises(DataError, match=words):
        data.make_dataset(events, **kwargs)


def test_make_dataset_reports_file_errors_before_iterating(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        data.make_dataset(tmp_path / "missing.h5", batch_size=8)


def test_streaming_raises_on_bad_labels(tmp_path):
    y = np.zeros(40)
    y[33] = 7
    ds, _ = data.make_dataset(write_events(tmp_path / "f.h5", n=40, y=y), 8, shuffle=False)
    with pytest.raises(tf.errors.OpError, match="index 33"):
        epoch_ids(ds)


# ----------------------------------------------------------------------------- arrays, shards


def test_preprocess_adds_channel_and_scales_energies():
    hist = np.zeros((2, 64, 64))
    hist[0, 0, :3] = [100.0, -5.0, 1e6]
    x = data.preprocess(hist)
    assert x.shape == (2, 64, 64, 1) and x.dtype == np.float32
    np.testing.assert_allclose(x[0, 0, :4, 0], [1.0, -0.05, 1e4, 0.0], rtol=1e-6)


def test_load_arrays_types_shapes_and_limits(events):
    x, y, w = data.load_arrays(events, n=10, start=5)
    assert x.shape == (10, 64, 64, 1) and y.shape == w.shape == (10,)
    assert x.dtype == y.dtype == w.dtype == np.float32
    assert list(sample_ids(x)) == list(range(5, 15))
    np.testing.assert_array_equal(y, np.arange(5, 15) % 2)
    np.testing.assert_allclose(w, 1 + np.arange(5, 15) / 1000, rtol=1e-6)
    assert len(data.load_arrays(events, n=10_000)[0]) == 96  # n is an upper limit
    with pytest.raises(DataError, match="start"):
        data.load_arrays(events, start=96)


@pytest.mark.parametrize("size", [1, 2, 3])
@pytest.mark.parametrize("n", [None, 50])
def test_shards_are_disjoint_equal_and_cover_the_front(size, n):
    n_total = 100
    shards = [data.shard_range(n_total, r, size, n) for r in range(size)]
    n_limit = min(n or n_total, n_total)
    assert len({s.n for s in shards}) == 1
    rows = [i for s in shards for i in range(s.start, s.stop)]
    assert rows == list(range(size * (n_limit // size)))
    assert shards[0] == Shard(rank=0, size=size, start=0, stop=n_limit // size)


def test_block_ranges_tile_the_shard():
    shard = Shard(rank=1, size=2, start=50, stop=100)
    assert data.block_ranges(shard, 16) == [(50, 66), (66, 82), (82, 98), (98, 100)]


def test_steps_per_epoch():
    shard = Shard(0, 1, 0, 100)
    assert data.steps_per_epoch(shard, 32) == 4
    assert data.steps_per_epoch(shard, 32, drop_remainder=True) == 3


# ----------------------------------------------------------------------------- pipelines


@pytest.mark.parametrize("size", [2, 3])
def test_streaming_and_in_memory_yield_the_same_shard(events, size):
    for rank in range(size):
        shard = data.shard_range(96, rank, size, n=90)
        got = {}
        for streaming in (True, False):
            ds, s = data.make_dataset(
                events,
                8,
                n=90,
                rank=rank,
                size=size,
                streaming=streaming,
                block_size=8,
                shuffle_buffer=16,
            )
            assert s == shard
            got[streaming] = Counter(epoch_ids(ds))
        assert got[True] == got[False] == Counter(range(shard.start, shard.stop))


@pytest.mark.parametrize("streaming", [True, False])
def test_shuffle_is_seeded_and_each_epoch_covers_the_shard_once(events, streaming):
    kwargs = dict(batch_size=8, streaming=streaming, block_size=8, shuffle_buffer=16)
    ds_a, shard = data.make_dataset(events, seed=1, **kwargs)
    ds_b, _ = data.make_dataset(events, seed=1, **kwargs)
    ds_c, _ = data.make_dataset(events, seed=2, **kwargs)
    a1, a2 = epoch_ids(ds_a), epoch_ids(ds_a)
    b1, b2 = epoch_ids(ds_b), epoch_ids(ds_b)
    c1 = epoch_ids(ds_c)
    assert (a1, a2) == (b1, b2)  # same seed: same order, epoch by epoch
    assert a1 != c1  # another seed: another order
    assert a1 != a2  # reshuffled every epoch
    assert a1 != sorted(a1)
    for epoch in (a1, a2, c1):
        assert sorted(epoch) == list(range(shard.start, shard.stop))


def test_no_shuffle_keeps_file_order(events):
    ds, _ = data.make_dataset(events, 10, n=35, shuffle=False)
    assert epoch_ids(ds) == list(range(35))


def test_repeat_runs_whole_epochs(events):
    ds, shard = data.make_dataset(events, 10, n=40, repeat=True, block_size=10)
    steps = data.steps_per_epoch(shard, 10)
    ids = [int(i) for batch in ds.take(3 * steps) for i in sample_ids(batch[0])]
    for e in range(3):
        assert sorted(ids[e * 40 : (e + 1) * 40]) == list(range(40))


@pytest.mark.parametrize("streaming", [True, False])
def test_with_weights_gives_each_sample_its_weight_and_label(events, streaming):
    ds, _ = data.make_dataset(events, 16, with_weights=True, streaming=streaming)
    assert ds.cardinality().numpy() == 6
    for x, y, w in ds:
        ids = sample_ids(x)
        np.testing.assert_array_equal(y.numpy(), ids % 2)
        np.testing.assert_allclose(w.numpy(), 1 + ids / 1000, rtol=1e-6)


def test_drop_remainder_gives_full_batches(events):
    ds, shard = data.make_dataset(events, 10, drop_remainder=True)
    shapes = [batch[0].shape[0] for batch in ds]
    assert shapes == [10] * data.steps_per_epoch(shard, 10, drop_remainder=True) == [10] * 9


def test_streaming_reads_bounded_blocks(events, monkeypatch):
    reads = []
    read_rows = data._read_rows

    def counting(g, start, stop, *args, **kwargs):
        reads.append(stop - start)
        return read_rows(g, start, stop, *args, **kwargs)

    monkeypatch.setattr(data, "_read_rows", counting)
    ds, shard = data.make_dataset(events, 8, block_size=16)
    assert sorted(epoch_ids(ds)) == list(range(96))
    assert max(reads) <= 16 and sum(reads) == 96 and len(reads) == 6


def test_signal_fraction_is_the_mean_label_of_the_first_n_events(tmp_path):
    y = np.array([1, 1, 1, 0, 0, 0, 0, 0], dtype=np.int8)
    path = write_events(tmp_path / "val.h5", n=8, y=y)
    assert data.signal_fraction(path) == pytest.approx(3 / 8)
    assert data.signal_fraction(path, n=4) == pytest.approx(3 / 4)
