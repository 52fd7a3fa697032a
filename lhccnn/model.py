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


def seeded_dropout_layer():
    """A Dropout layer for models that are reused across runs (PBT members on one worker):
    its rate and random stream live in variables set from outside between runs (`reseed`),
    so neither a retrace nor the runs before changes the masks. Each training call draws a
    stateless mask from (seed, call count). Keras would save variables assigned to a layer
    with its weights; these are kept in a plain namespace, out of checkpoints."""
    import types

    import tensorflow as tf

    class SeededDropout(tf.keras.layers.Layer):
        def __init__(self, rate, **kwargs):
            super().__init__(**kwargs)
            self.state = types.SimpleNamespace(
                rate=tf.Variable(float(rate), trainable=False, dtype=tf.float32),
                seed=tf.Variable(0, trainable=False, dtype=tf.int64),
                calls=tf.Variable(0, trainable=False, dtype=tf.int64),
            )

        def call(self, inputs, training=None):
            if not training:
                return inputs
            self.state.calls.assign_add(1)
            seed = tf.stack([self.state.seed, self.state.calls])
            return tf.nn.experimental.stateless_dropout(inputs, rate=self.state.rate, seed=seed)

    return SeededDropout


def reseed(model, dropout: float, seed: int) -> None:
    """Set the rate and restart the random stream of a reusable model's dropout layers."""
    for i, layer in enumerate(x for x in model.layers if hasattr(x, "state")):
        layer.state.rate.assign(dropout)
        layer.state.seed.assign(seed * 16 + i)  # a stream per layer
        layer.state.calls.assign(0)


def build_model(
    config: ModelConfig | None = None,
    input_shape=IMAGE_SHAPE,
    compile=True,
    optimizer=None,
    reusable=False,
    precision: str = "float32",
):
    """Build the CNN.

    Shapes with the defaults: (64,64,1) -conv8/pool-> (32,32,8) -conv16/pool-> (16,16,16)
    -conv32/pool-> (8,8,32) -flatten-> 2048 -dense64-> 64 -> 1 (sigmoid); 137,089 parameters.
    `optimizer` overrides the one named in the config (Horovod passes its wrapped optimizer).
    `reusable` gives seeded dropout layers (see `seeded_dropout_layer`), for a model that is
    trained again with another dropout rate and seed without being traced again. `precision`:
    a Keras dtype policy for the layers ("mixed_bfloat16": bfloat16 compute, float32 weights);
    the output layer stays float32, so the loss and the probabilities are computed in float32.
    """
    import tensorflow as tf

    config = config or ModelConfig()
    previous = tf.keras.mixed_precision.global_policy()
    tf.keras.mixed_precision.set_global_policy(precision)  # layers take it when made
    try:
        model = _layers(config, input_shape, reusable)
    finally:
        tf.keras.mixed_precision.set_global_policy(previous)
    if compile:
        opt = optimizer or make_optimizer(config.optimizer, config.lr)
        model.compile(optimizer=opt, loss="binary_crossentropy", metrics=["accuracy"])
    return model


def _layers(config: ModelConfig, input_shape, reusable: bool):
    import tensorflow as tf
    from tensorflow.keras import layers

    Dropout = seeded_dropout_layer() if reusable else layers.Dropout
    inputs = layers.Input(shape=input_shape, name="hist")
    h = inputs
    for size in config.conv_sizes:
        h = layers.Conv2D(size, 3, padding="same", activation="relu")(h)
        h = layers.MaxPooling2D(2)(h)
    h = Dropout(config.dropout)(h)
    h = layers.Flatten()(h)
    for size in config.dense_sizes:
        h = layers.Dense(size, activation="relu")(h)
        h = Dropout(config.dropout)(h)
    outputs = layers.Dense(1, activation="sigmoid", name="p_signal", dtype="float32")(h)
    return tf.keras.Model(inputs, outputs, name="lhccnn")


def training_flops(config: ModelConfig | None = None, input_shape=IMAGE_SHAPE) -> int:
    """Floating-point operations to train on one sample: the convolutions' and dense layers'
    multiply-adds (2 FLOPs each) forward, times 3 for forward plus backward. Pooling, ReLU and
    dropout are left out (a few percent). The default model: 16.7 MFLOP."""
    config = config or ModelConfig()
    h, w, channels = input_shape
    macs = 0
    for size in config.conv_sizes:
        macs += h * w * 9 * channels * size  # 3x3 kernels, 'same' padding
        h, w, channels = h // 2, w // 2, size
    width = h * w * channels
    for size in (*config.dense_sizes, 1):
        macs += width * size
        width = size
    return 3 * 2 * macs
