"""The CNN family from the seed write-up, built entirely from params.

Each block is `convs_per_block` × (conv → [batch-norm] → ReLU), then 2×2 max-pool
and dropout; the head is dense layers with dropout and a softmax over the classes.
"""

from __future__ import annotations

import keras
from keras import layers


def build_model(model_params: dict, input_shape: tuple[int, ...], num_classes: int) -> keras.Model:
    batch_norm = model_params["batch_norm"]
    # Keras' default moving-average momentum (0.99) needs hundreds of steps before the
    # inference statistics settle; a lower one makes short runs evaluate sensibly.
    bn_momentum = model_params["batch_norm_momentum"]
    inputs = keras.Input(shape=input_shape, name="image")
    x = inputs
    for block, filters in enumerate(model_params["conv_filters"], start=1):
        for conv in range(1, model_params["convs_per_block"] + 1):
            # With batch-norm right after, a conv bias would be redundant.
            x = layers.Conv2D(filters, model_params["kernel_size"], padding="same",
                              use_bias=not batch_norm, name=f"block{block}_conv{conv}")(x)
            if batch_norm:
                x = layers.BatchNormalization(momentum=bn_momentum,
                                              name=f"block{block}_bn{conv}")(x)
            x = layers.Activation("relu", name=f"block{block}_relu{conv}")(x)
        x = layers.MaxPooling2D(name=f"block{block}_pool")(x)
        x = layers.Dropout(model_params["conv_dropout"], name=f"block{block}_dropout")(x)

    x = layers.Flatten(name="flatten")(x)
    for index, units in enumerate(model_params["dense_units"], start=1):
        x = layers.Dense(units, use_bias=not batch_norm, name=f"dense{index}")(x)
        if batch_norm:
            x = layers.BatchNormalization(momentum=bn_momentum, name=f"dense{index}_bn")(x)
        x = layers.Activation("relu", name=f"dense{index}_relu")(x)
        x = layers.Dropout(model_params["dense_dropout"], name=f"dense{index}_dropout")(x)
    outputs = layers.Dense(num_classes, activation="softmax", name="class_probabilities")(x)
    return keras.Model(inputs, outputs, name="cnn")


def compile_model(model: keras.Model, learning_rate: float) -> keras.Model:
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate=learning_rate),
        loss="categorical_crossentropy",
        metrics=["accuracy"],
    )
    return model
