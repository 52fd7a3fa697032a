"""PBT's pure parts: steering checks and log, config validation, checkpoint checks and fallback."""

import json

import pytest

from lhccnn.pbt import PBTConfig, Steering, check_steering, load_inherited, member_seed
from lhccnn.space import default_space, space_from_dict, space_to_dict
from lhccnn.store import CheckpointError, Store


@pytest.mark.parametrize(
    "bad, message",
    [
        ({"mutation_rate": -0.1}, r"mutation_rate must be a number in \[0, 1\], got -0.1"),
        ({"crossover_rate": 1.5}, r"crossover_rate must be a number in \[0, 1\], got 1.5"),
        ({"crossover_rate": "0.3"}, r"crossover_rate must be a number in \[0, 1\], got '0.3'"),
        ({"population": 1}, "population must be an integer >= 2, got 1"),
        ({"population": 2.5}, "population must be an integer >= 2, got 2.5"),
        ({"paused": "yes"}, "paused must be True or False, got 'yes'"),
        ({"speed": 2}, "unknown steering knob 'speed'"),
    ],
)
def test_invalid_steering_values_are_refused_with_the_knob_named(bad, message):
    with pytest.raises(ValueError, match=message):
        check_steering(**bad)


def test_steering_is_kept_on_disk_and_every_request_logged(tmp_path):
    s = Steering(tmp_path)
    s.set(mutation_rate=0.1, population=4)
    s.pause()
    again = Steering(tmp_path)  # another process, or a restarted kernel
    assert again.values() == {"mutation_rate": 0.1, "population": 4, "paused": True}
    events = again.events()
    assert [e["event"] for e in events] == ["requested", "requested"]
    assert events[1]["paused"] is True and events[0]["time"] <= events[1]["time"]
    with pytest.raises(ValueError):
        again.set(population=0)
    assert again.values()["population"] == 4  # a refused value changes nothing


@pytest.mark.parametrize(
    "field, value",
    [
        ("generations", 0),
        ("epochs_per_generation", 0),
        ("population", 1),
        ("survivors", 1.0),
        ("survivors", 0),
        ("mutation_rate", 2),
    ],
)
def test_pbt_config_refuses_bad_values(field, value):
    with pytest.raises(ValueError, match=field.split("_")[0]):
        PBTConfig(**{field: value})


@pytest.mark.parametrize("size, expected", [(8, 4), (5, 2), (3, 2), (2, 1)])
def test_survivors_leave_room_for_a_child(size, expected):
    assert PBTConfig(population=8, survivors=0.5).n_survivors(size) == expected
    assert 1 <= PBTConfig(population=2, survivors=0.9).n_survivors(size) < size


def test_member_seeds_differ_by_generation_and_member_and_repeat():
    seeds = {member_seed(0, g, m) for g in range(5) for m in range(5)}
    assert len(seeds) == 25 and member_seed(0, 2, 3) == member_seed(0, 2, 3)


def test_search_space_survives_json():
    space = default_space()
    assert space_from_dict(json.loads(json.dumps(space_to_dict(space)))) == space


def _model():
    import tensorflow as tf

    model = tf.keras.Sequential([tf.keras.Input((3,)), tf.keras.layers.Dense(2)])
    model.compile(optimizer=tf.keras.optimizers.legacy.Adam(), loss="mse")
    return model


def _completed(store, trial_id, model, optimizer="Adam"):
    """A member that trained and saved `model` through the store's checkpoint protocol."""
    attempt = store.begin_attempt(trial_id)
    attempt.save_checkpoint(model, epoch=1, optimizer=optimizer)
    attempt.finish("completed")


def test_truncated_checkpoint_is_detected_and_the_lineage_falls_back(tmp_path):
    store = Store(tmp_path)
    grand = store.create_trial({"inherit": None}, trial_id="g000-m00")
    parent = store.create_trial({"inherit": grand}, trial_id="g001-m00")
    good, bad = _model(), _model()
    _completed(store, grand, good)
    _completed(store, parent, bad)
    store.verify_checkpoint(parent)
    path = store.checkpoint(parent)
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="corrupt or truncated, 100 bytes"):
        store.verify_checkpoint(parent)
    model = _model()
    with pytest.warns(RuntimeWarning, match="falling back to its parent's g000-m00"):
        loaded, warned, _ = load_inherited(model, store, parent)
    assert loaded == grand and len(warned) == 1
    assert all((a == b).all() for a, b in zip(model.get_weights(), good.get_weights()))


def test_checkpoint_without_a_recorded_hash_is_not_trusted(tmp_path):
    store = Store(tmp_path)
    t = store.create_trial({"inherit": None}, trial_id="g000-m00")
    _model().save_weights(str(store.checkpoint(t)))  # written, but never recorded
    with pytest.raises(CheckpointError, match="no sha256 recorded"):
        store.verify_checkpoint(t)
    with pytest.warns(RuntimeWarning, match="fresh weights"):
        assert load_inherited(_model(), store, t)[0] is None


def test_a_store_holding_another_run_is_refused_and_reopens_as_it_was(tmp_path):
    from lhccnn.config import smoke
    from lhccnn.pbt import PBT

    first = PBT(tmp_path, smoke(), config=PBTConfig(population=3, seed=1))
    with pytest.raises(ValueError, match="already holds a PBT run with another config"):
        PBT(tmp_path, smoke(), config=PBTConfig(population=4, seed=1))
    again = PBT(tmp_path)  # no arguments: read back
    assert again.config == first.config and again.base == first.base and again.space == first.space
    assert again.steering.values() == {
        "mutation_rate": 0.2,
        "crossover_rate": 0.33,
        "population": 3,
        "paused": False,
        "stopped": False,
    }


def test_optimizer_state_is_carried_over_only_to_the_same_kind_and_only_if_intact(tmp_path):
    import numpy as np

    from lhccnn.config import ModelConfig
    from lhccnn.model import build_model

    store = Store(tmp_path)
    parent = store.create_trial({"optimizer": "Adam", "inherit": None}, trial_id="g000-m00")
    trained = build_model(ModelConfig(conv_sizes=(2,), dense_sizes=(4,)))
    x, y = np.random.default_rng(0).random((32, 64, 64, 1)), np.arange(32) % 2
    trained.fit(x, y, epochs=2, batch_size=16, verbose=0)  # 4 steps: Adam's moments are set
    _completed(store, parent, trained)

    child = build_model(ModelConfig(conv_sizes=(2,), dense_sizes=(4,), lr=5e-3))
    assert load_inherited(child, store, parent, "Adam")[2]
    assert int(child.optimizer.iterations) == 4
    assert float(child.optimizer.lr) == pytest.approx(5e-3)  # the child's own learning rate
    assert all(
        np.array_equal(a, b)
        for a, b in zip(child.optimizer.get_weights(), trained.optimizer.get_weights())
    )
    sgd = build_model(ModelConfig(conv_sizes=(2,), dense_sizes=(4,), optimizer="SGD"))
    assert not load_inherited(sgd, store, parent, "SGD")[2]
    path = store.optimizer_state(parent)
    path.write_bytes(path.read_bytes()[:50])
    with pytest.warns(RuntimeWarning, match="optimizer state missing or corrupt"):
        assert not load_inherited(child, store, parent, "Adam")[2]  # afresh, not a crash


def _lineage(root, data, order, clear_cache):
    """Three generations of two members, trained in `order` on this thread."""
    from lhccnn.config import TrainConfig
    from lhccnn.pbt import _MODELS, train_member

    store, models = Store(root), []
    base = TrainConfig(n_train=512, n_val=256, batch_size=64, epochs=1, warmup_epochs=0.0)
    hp = {
        0: {"lr": 3e-3, "dropout": 0.3, "optimizer": "Nadam"},
        1: {"lr": 1e-3, "dropout": 0.1, "optimizer": "Adam"},
    }
    for g in range(3):
        for m in order:
            inherit = f"g{g - 1:03d}-m{m:02d}" if g else None
            t = store.create_trial(
                {
                    **hp[m],
                    "generation": g,
                    "member": m,
                    "inherit": inherit,
                    "parents": [inherit] if inherit else [],
                },
                trial_id=f"g{g:03d}-m{m:02d}",
            )
            if clear_cache:
                _MODELS.__dict__.clear()
            train_member(str(root), t, base, str(data), epochs=1, seed=0)
            models.append(id(_MODELS.models[((8, 16, 32), (64,), hp[m]["optimizer"])]))
    return {t: store.status(t)["val_loss"] for t in store.trial_ids()}, models


def test_a_reused_model_gives_exactly_what_a_fresh_one_gives(tiny_data, tmp_path):
    # a worker keeps one compiled model per architecture and optimizer kind (no retracing);
    # a member's result must not depend on which members that worker ran before
    reused, models = _lineage(tmp_path / "a", tiny_data, [0, 1], clear_cache=False)
    fresh, _ = _lineage(tmp_path / "b", tiny_data, [1, 0], clear_cache=True)
    assert reused == fresh
    assert len(set(models[2:])) == 2  # generations 1 and 2 reuse the two models of generation 0


def test_create_refuses_an_existing_run_and_open_a_folder_without_one(tmp_path):
    from lhccnn.config import smoke
    from lhccnn.pbt import PBT

    with pytest.raises(FileNotFoundError, match="pbt.json: no PBT run there"):
        PBT.open(tmp_path / "run")
    assert not (tmp_path / "run" / "pbt.json").exists()  # open made nothing
    made = PBT.create(tmp_path / "run", smoke(), config=PBTConfig(population=3, seed=2))
    with pytest.raises(FileExistsError, match="a PBT run is already there"):
        PBT.create(tmp_path / "run", smoke(), config=PBTConfig(population=3, seed=2))
    assert PBT.open(tmp_path / "run").config == made.config


def test_notebook_tables_keep_their_columns_and_the_cost_line_its_wording():
    from lhccnn.pbt import comparison_table, history_table, member_costs, timing_table

    history = [
        {"generation": g, "mean_val_loss": 0.6, "best_val_loss": 0.5, "best": f"g00{g}-m01"}
        | {"wall_s": 2.0, "work_s": 1.5, "overhead_s": 0.5, "overhead_fraction": 0.25}
        | {"checkpoint_s": 0.1, "workers": 2}
        for g in range(2)
    ]
    assert list(history_table(history).columns) == ["mean_val_loss", "best_val_loss", "best"]
    assert list(timing_table(history).index) == [0, 1]
    assert "workers" not in timing_table(history).columns
    assert list(comparison_table([{"seed": 3, "pbt_wins": True}]).index) == [3]

    class Statuses:  # what member_costs reads of a store
        times = {"a": (0.01, 0.03, 2.0), "b": (0.02, 0.02, 3.0), "c": (0.03, 0.04, 2.5)}

        def status(self, t):
            return dict(zip(("load_s", "save_s", "train_s"), self.times[t]))

    assert member_costs(Statuses(), ["a", "b", "c"]) == (
        "checkpoint load median 0.020 s, save 0.030 s, training median 2.50 s per member"
    )


def test_a_run_written_before_a_config_field_existed_reopens_with_the_same_base(tmp_path):
    import json

    from lhccnn.config import smoke
    from lhccnn.pbt import PBT

    PBT(tmp_path, smoke(), config=PBTConfig(population=3, seed=1))
    meta = json.loads((tmp_path / "pbt.json").read_text())
    del meta["base"]["precision"]  # as an older lhccnn wrote it
    (tmp_path / "pbt.json").write_text(json.dumps(meta))
    again = PBT(tmp_path, smoke(), config=PBTConfig(population=3, seed=1))  # not refused
    assert again.base == smoke()
    with pytest.raises(ValueError, match="another base"):
        PBT(tmp_path, smoke().replace(precision="mixed_bfloat16"), config=again.config)
