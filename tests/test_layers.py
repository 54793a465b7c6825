"""The fused batch-norm layer computes what Keras' BatchNormalization computes."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from mnist_cnn.layers import FusedBatchNormalization


def pair(momentum=0.9):
    """A Keras and a fused batch-norm with the same (non-trivial) weights, built for 4 channels."""
    keras_bn = keras.layers.BatchNormalization(momentum=momentum)
    fused_bn = FusedBatchNormalization(momentum=momentum)
    rng = np.random.default_rng(3)
    weights = [
        rng.normal(1, 0.2, 4),
        rng.normal(0, 0.2, 4),
        rng.normal(0, 0.5, 4),
        rng.uniform(0.5, 2.0, 4),
    ]  # gamma, beta, moving mean, moving variance
    for layer in (keras_bn, fused_bn):
        layer.build((None, 6, 6, 4))
        layer.set_weights([w.astype("float32") for w in weights])
    return keras_bn, fused_bn


def images(seed=0):
    return tf.constant(np.random.default_rng(seed).normal(2.0, 3.0, (8, 6, 6, 4)), tf.float32)


@pytest.mark.parametrize("training", [True, False])
def test_fused_output_matches_keras(training):
    keras_bn, fused_bn = pair()
    x = images()
    np.testing.assert_allclose(
        fused_bn(x, training=training), keras_bn(x, training=training), rtol=1e-4, atol=1e-4
    )


def test_fused_moving_statistics_follow_keras_momentum():
    keras_bn, fused_bn = pair(momentum=0.8)
    x = images(1)
    keras_bn(x, training=True)
    fused_bn(x, training=True)
    np.testing.assert_allclose(fused_bn.moving_mean, keras_bn.moving_mean, rtol=1e-5, atol=1e-6)
    # The fused kernel feeds the unbiased batch variance (× n/(n-1)) into the average.
    n = 8 * 6 * 6
    batch_variance = tf.math.reduce_variance(x, axis=(0, 1, 2))
    expected = keras_bn.moving_variance + 0.2 * batch_variance * (n / (n - 1) - 1)
    np.testing.assert_allclose(fused_bn.moving_variance, expected, rtol=1e-4)
    # Inference does not touch them.
    before = fused_bn.moving_mean.numpy()
    fused_bn(x, training=False)
    np.testing.assert_array_equal(fused_bn.moving_mean.numpy(), before)


def test_fused_gradients_match_keras():
    keras_bn, fused_bn = pair()
    x = images(2)
    gradients = []
    for layer in (keras_bn, fused_bn):
        with tf.GradientTape() as tape:
            tape.watch(x)
            loss = tf.reduce_sum(layer(x, training=True) ** 2 * tf.range(4, dtype=tf.float32))
        gradients.append(tape.gradient(loss, [x, layer.gamma, layer.beta]))
    for keras_gradient, fused_gradient in zip(*gradients, strict=True):
        np.testing.assert_allclose(fused_gradient, keras_gradient, rtol=1e-3, atol=1e-3)


def test_fused_runs_in_bfloat16_under_mixed_precision():
    layer = FusedBatchNormalization(dtype="mixed_bfloat16")
    outputs = layer(tf.cast(images(), tf.bfloat16), training=True)
    assert outputs.dtype == tf.bfloat16
    assert layer.moving_mean.dtype == "float32"


def test_dense_inputs_fall_back_to_the_keras_computation():
    keras_bn, fused_bn = keras.layers.BatchNormalization(), FusedBatchNormalization()
    x = tf.constant(np.random.default_rng(4).normal(1.0, 2.0, (16, 5)), tf.float32)
    np.testing.assert_allclose(fused_bn(x, training=True), keras_bn(x, training=True), rtol=1e-5)
