"""The CNN family of the starting write-up (docs/design-notes.md), built from params.

Block i is `convs_per_block[i]` × (conv → [batch-norm] → ReLU), then 2×2 max-pool
and dropout; the head is dense layers with dropout and a softmax over the classes
(with no hidden dense layer, the dropout sits between the flatten and the softmax).
Dropout layers of rate 0 are left out.
`compile_model` adds the optimizer, learning-rate schedule and loss from params.
"""

from __future__ import annotations

import json
import tempfile
import zipfile
from pathlib import Path

import keras
from keras import layers

from mnist_cnn.artifacts import atomic_path
from mnist_cnn.layers import FusedBatchNormalization
from mnist_cnn.params import ModelParams, TrainParams

# Zip's earliest representable time: every entry gets it, so saves are byte-identical.
FIXED_ZIP_TIME = (1980, 1, 1, 0, 0, 0)


def build_model(
    model_params: ModelParams, input_shape: tuple[int, ...], num_classes: int
) -> keras.Model:
    batch_norm = model_params.batch_norm
    # Keras' default moving-average momentum (0.99) needs hundreds of steps before the
    # inference statistics settle; a lower one makes short runs evaluate sensibly.
    bn_momentum = model_params.batch_norm_momentum
    inputs = keras.Input(shape=input_shape, name="image")
    x = inputs
    blocks = zip(model_params.conv_filters, model_params.convs_per_block, strict=True)
    for block, (filters, convs) in enumerate(blocks, start=1):
        for conv in range(1, convs + 1):
            # With batch-norm right after, a conv bias would be redundant.
            x = layers.Conv2D(
                filters,
                model_params.kernel_size,
                padding=model_params.padding,
                use_bias=not batch_norm,
                name=f"block{block}_conv{conv}",
            )(x)
            if batch_norm:
                # Fused kernel: the Keras layer's separate ops cost as much as the convs.
                x = FusedBatchNormalization(momentum=bn_momentum, name=f"block{block}_bn{conv}")(x)
            x = layers.Activation("relu", name=f"block{block}_relu{conv}")(x)
        x = layers.MaxPooling2D(name=f"block{block}_pool")(x)
        if model_params.conv_dropout:
            x = layers.Dropout(model_params.conv_dropout, name=f"block{block}_dropout")(x)

    x = layers.Flatten(name="flatten")(x)
    dense_dropout = model_params.dense_dropout
    if not model_params.dense_units and dense_dropout:
        x = layers.Dropout(dense_dropout, name="flatten_dropout")(x)
    for index, units in enumerate(model_params.dense_units, start=1):
        x = layers.Dense(units, use_bias=not batch_norm, name=f"dense{index}")(x)
        if batch_norm:
            x = layers.BatchNormalization(momentum=bn_momentum, name=f"dense{index}_bn")(x)
        x = layers.Activation("relu", name=f"dense{index}_relu")(x)
        if dense_dropout:
            x = layers.Dropout(dense_dropout, name=f"dense{index}_dropout")(x)
    x = layers.Dense(num_classes, name="class_logits")(x)
    # Softmax (and so the loss) in float32 even under mixed precision: bfloat16 has
    # too few mantissa bits for probabilities near 0 and 1.
    outputs = layers.Activation("softmax", dtype="float32", name="class_probabilities")(x)
    return keras.Model(inputs, outputs, name="cnn")


def learning_rate_schedule(train_params: TrainParams, learning_rate: float, steps_per_epoch: int):
    """A constant rate, or a linear warm-up to `learning_rate` then cosine decay to 0."""
    schedule = train_params.lr_schedule
    if schedule.name == "constant":
        return learning_rate
    warmup_steps = schedule.warmup_epochs * steps_per_epoch
    return keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=0.0 if warmup_steps else learning_rate,
        decay_steps=train_params.epochs * steps_per_epoch - warmup_steps,
        warmup_target=learning_rate if warmup_steps else None,
        warmup_steps=warmup_steps,
    )


def compile_model(
    model: keras.Model,
    train_params: TrainParams,
    steps_per_epoch: int,
    learning_rate: float | None = None,
) -> keras.Model:
    """Adam or AdamW (decoupled weight decay, optionally with a moving average of the
    weights), label-smoothed cross-entropy, accuracy.

    `learning_rate` overrides the params' rate (the distributed run scales it).
    """
    rate = learning_rate_schedule(
        train_params, learning_rate or train_params.learning_rate, steps_per_epoch
    )
    # Weight averaging: the optimizer keeps the moving average beside the weights;
    # training.build_callbacks swaps it in for validation and for the saved model.
    averaging = train_params.weight_averaging
    ema = {"use_ema": averaging.enabled, "ema_momentum": averaging.momentum}
    if train_params.optimizer == "adamw":
        optimizer = keras.optimizers.AdamW(
            learning_rate=rate, weight_decay=train_params.weight_decay, **ema
        )
    else:
        optimizer = keras.optimizers.Adam(learning_rate=rate, **ema)
    model.compile(
        optimizer=optimizer,
        loss=keras.losses.CategoricalCrossentropy(label_smoothing=train_params.label_smoothing),
        metrics=["accuracy"],
    )
    return model


def _renumber_shared_objects(node, numbers: dict) -> None:
    """Replace Keras' `shared_object_id`s (Python id()s: memory addresses) by 1, 2, ...

    The ids only link config entries that share one object, so numbering them in order
    of first appearance keeps their meaning and removes the per-process noise.
    """
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "shared_object_id":
                node[key] = numbers.setdefault(value, len(numbers) + 1)
            else:
                _renumber_shared_objects(value, numbers)
    elif isinstance(node, list):
        for value in node:
            _renumber_shared_objects(value, numbers)


def save_model(model: keras.Model, path: Path | str) -> None:
    """Save a .keras file whose bytes depend only on the model, never on the clock.

    Keras writes the save time (metadata.json and the zip entries) and memory addresses
    (config.json's shared_object_id) into the file, so equal weights would hash
    differently and DVC would see a changed model on every rerun. We save to a scratch
    file and rewrite the zip without them.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=".save-") as scratch:
        plain = Path(scratch) / "model.keras"
        model.save(plain)
        with (
            atomic_path(path) as tmp,
            zipfile.ZipFile(plain) as source,
            zipfile.ZipFile(tmp, "w") as target,
        ):
            for entry in source.infolist():
                data = source.read(entry)
                if entry.filename == "metadata.json":
                    metadata = json.loads(data)
                    metadata.pop("date_saved", None)
                    data = json.dumps(metadata, sort_keys=True).encode()
                elif entry.filename == "config.json":
                    config = json.loads(data)
                    _renumber_shared_objects(config, {})
                    data = json.dumps(config).encode()
                stable = zipfile.ZipInfo(entry.filename, date_time=FIXED_ZIP_TIME)
                stable.compress_type = entry.compress_type
                stable.external_attr = 0o644 << 16
                target.writestr(stable, data)
