"""The CNN and its config: parameter count, architecture, optimizer errors."""

import pytest

from lhccnn.config import ModelConfig, TrainConfig, smoke
from lhccnn.model import build_model, make_optimizer


def test_default_model_has_paper_parameter_count():
    assert build_model().count_params() == 137_089


def test_architecture_is_conv_pool_blocks_then_dense():
    m = build_model(ModelConfig(conv_sizes=(4, 8), dense_sizes=(16, 8)), compile=False)
    kinds = [type(layer).__name__ for layer in m.layers]
    assert kinds == [
        "InputLayer",
        "Conv2D",
        "MaxPooling2D",
        "Conv2D",
        "MaxPooling2D",
        "Dropout",
        "Flatten",
        "Dense",
        "Dropout",
        "Dense",
        "Dropout",
        "Dense",
    ]
    assert m.output_shape == (None, 1)
    assert m.layers[-1].activation.__name__ == "sigmoid"
    assert [layer.filters for layer in m.layers if hasattr(layer, "filters")] == [4, 8]


def test_config_sizes_change_the_model():
    small = build_model(ModelConfig(conv_sizes=(4, 8, 16), dense_sizes=(32,)), compile=False)
    assert small.count_params() < 137_089


def test_optimizer_and_lr_come_from_config():
    m = build_model(ModelConfig(optimizer="SGD", lr=0.05))
    assert type(m.optimizer).__name__ == "SGD"
    assert m.optimizer.learning_rate.numpy() == pytest.approx(0.05)
    assert m.loss == "binary_crossentropy"


def test_unknown_optimizer_lists_valid_names():
    with pytest.raises(ValueError, match="unknown optimizer 'Adamw'.*Adam, Nadam"):
        ModelConfig(optimizer="Adamw")
    with pytest.raises(ValueError, match="valid names"):
        make_optimizer("Lion", 1e-3)


@pytest.mark.parametrize(
    "bad",
    [
        dict(dropout=1.0),
        dict(dropout=-0.1),
        dict(lr=0.0),
        dict(conv_sizes=()),
        dict(dense_sizes=(0,)),
    ],
)
def test_bad_model_values_are_refused(bad):
    with pytest.raises(ValueError):
        ModelConfig(**bad)


def test_train_config_replace_and_round_trip():
    c = smoke().replace(epochs=3, model_lr=0.01)
    assert c.epochs == 3 and c.model.lr == 0.01 and smoke().model.lr == 1e-3
    assert TrainConfig.from_dict(c.to_dict()) == c
    with pytest.raises(ValueError, match="lr_scaling"):
        TrainConfig(lr_scaling="cubic")


def test_unknown_precision_is_refused_with_the_valid_ones():
    with pytest.raises(ValueError, match="unknown precision 'float16'; valid: float32, mixed_bf"):
        TrainConfig(precision="float16")


def test_bfloat16_computes_in_bfloat16_keeps_float32_weights_and_output():
    import numpy as np
    import tensorflow as tf

    model = build_model(precision="mixed_bfloat16")
    conv = next(x for x in model.layers if x.name.startswith("conv2d"))
    assert conv.compute_dtype == "bfloat16" and conv.variable_dtype == "float32"
    assert model.output.dtype == tf.float32  # loss and probabilities in float32
    assert tf.keras.mixed_precision.global_policy().name == "float32"  # put back after building
    assert build_model().layers[1].compute_dtype == "float32"
    x = np.random.default_rng(0).random((64, 64, 64, 1), dtype=np.float32)
    y = (x.mean(axis=(1, 2, 3)) > 0.5).astype(np.float32)
    loss = model.fit(x, y, epochs=1, verbose=0).history["loss"][0]
    assert np.isfinite(loss)
