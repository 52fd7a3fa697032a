"""The LHC-image CNN (Bhimji et al., arXiv:1711.03573) as a compiled tf.keras model."""

from __future__ import annotations

from .config import IMAGE_SHAPE, OPTIMIZERS, ModelConfig


def make_optimizer(name: str, lr: float):
    """A fresh Keras optimizer by name; an unknown name lists the valid ones."""
    import tensorflow as tf

    if name not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {name!r}; valid names: {', '.join(OPTIMIZERS)}")
    # legacy optimizers: Horovod 0.28's DistributedOptimizer wraps these reliably on TF 2.15
    return getattr(tf.keras.optimizers.legacy, name)(learning_rate=lr)


def build_model(config: ModelConfig | None = None, input_shape=IMAGE_SHAPE, compile=True,
                optimizer=None):
    """Build the CNN.

    Shapes with the defaults: (64,64,1) -conv8/pool-> (32,32,8) -conv16/pool-> (16,16,16)
    -conv32/pool-> (8,8,32) -flatten-> 2048 -dense64-> 64 -> 1 (sigmoid); 137,089 parameters.
    `optimizer` overrides the one named in the config (Horovod passes its wrapped optimizer).
    """
    import tensorflow as tf
    from tensorflow.keras import layers

    config = config or ModelConfig()
    inputs = layers.Input(shape=input_shape, name="hist")
    h = inputs
    for size in config.conv_sizes:
        h = layers.Conv2D(size, 3, padding="same", activation="relu")(h)
        h = layers.MaxPooling2D(2)(h)
    h = layers.Dropout(config.dropout)(h)
    h = layers.Flatten()(h)
    for size in config.dense_sizes:
        h = layers.Dense(size, activation="relu")(h)
        h = layers.Dropout(config.dropout)(h)
    outputs = layers.Dense(1, activation="sigmoid", name="p_signal")(h)
    model = tf.keras.Model(inputs, outputs, name="lhccnn")
    if compile:
        opt = optimizer or make_optimizer(config.optimizer, config.lr)
        model.compile(optimizer=opt, loss="binary_crossentropy", metrics=["accuracy"])
    return model
