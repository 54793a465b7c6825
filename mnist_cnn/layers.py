"""Custom Keras layers the models are built from (and that loading a model needs).

`FusedBatchNormalization` is Keras' BatchNormalization computed by TensorFlow's fused
kernel. Keras 3 normalizes with separate ops (upcast to float32, mean, variance,
normalize, cast back), each a pass over the activations in the forward and the backward
step; on our 2-core CPU that made the batch-norms cost as much as all the convolutions.
The fused kernel (oneDNN on x86) does it in one pass, in bfloat16 under mixed precision,
and trains the default model much faster (measured: CHANGELOG.md, "Fused batch-norm").
"""

from __future__ import annotations

import keras
import tensorflow as tf
from keras import layers


@keras.saving.register_keras_serializable(package="stages")
class FusedBatchNormalization(layers.BatchNormalization):
    """BatchNormalization over the channels of NHWC images, by `FusedBatchNormV3`.

    Same weights, config and training/inference behaviour as the Keras layer, with one
    documented difference: the moving variance is updated with the batch variance
    corrected by n/(n-1) (the fused kernel's unbiased estimate; n = batch × height ×
    width, so the factor is 1.00001 for a batch of 128 at 28×28). Inputs that are not
    4-D channels-last images (the dense head's batch-norm) go through the Keras code.
    """

    def call(self, inputs, training=None, mask=None):
        if (
            len(inputs.shape) != 4
            or self.axis not in (-1, 3)
            or mask is not None
            or self.renorm
            or self.synchronized
            or not (self.center and self.scale)
        ):
            return super().call(inputs, training=training, mask=mask)
        # Normalize in the input's dtype (bfloat16 under mixed precision); the kernel
        # keeps the statistics and the scale/offset in float32.
        common = dict(
            x=inputs,
            scale=tf.cast(self.gamma, tf.float32),
            offset=tf.cast(self.beta, tf.float32),
            mean=tf.cast(self.moving_mean, tf.float32),
            variance=tf.cast(self.moving_variance, tf.float32),
            epsilon=self.epsilon,
            data_format="NHWC",
        )
        if training and self.trainable:
            # With exponential_avg_factor the kernel returns the updated moving averages.
            outputs, moving_mean, moving_variance, *_ = tf.raw_ops.FusedBatchNormV3(
                **common, exponential_avg_factor=1.0 - self.momentum, is_training=True
            )
            self.moving_mean.assign(moving_mean)
            self.moving_variance.assign(moving_variance)
        else:
            outputs, *_ = tf.raw_ops.FusedBatchNormV3(**common, is_training=False)
        return tf.cast(outputs, self.compute_dtype)
