"""The benchmark compares like with like: its preset is the keras.io convnet."""

from __future__ import annotations

import keras
import numpy as np

from mnist_cnn.bench import (
    BATCH_SIZE,
    KERAS_IO_PRESET,
    forward_flops,
    images_per_second,
    keras_io_convnet,
    preset_params,
)
from mnist_cnn.input_pipeline import training_dataset
from mnist_cnn.model import build_model, compile_model
from mnist_cnn.params import AugmentParams, ModelParams, TrainParams, load_params
from tests.conftest import PROJECT_ROOT


def layer_summary(model: keras.Model) -> list[tuple]:
    """Kind, output shape and weight shapes of every layer that computes something."""
    return [
        (
            type(layer).__name__,
            tuple(layer.output.shape[1:]),
            tuple(tuple(w.shape) for w in layer.weights),
        )
        for layer in model.layers
        if not isinstance(layer, keras.layers.InputLayer)
    ]


def test_preset_builds_the_published_convnet():
    ours = build_model(ModelParams.model_validate(KERAS_IO_PRESET["model"]), (28, 28, 1), 10)
    theirs = keras_io_convnet()
    assert ours.count_params() == theirs.count_params() == 34_826
    # Ours spells conv+ReLU and dense+softmax as two layers each; the arithmetic is equal.
    fused = [row for row in layer_summary(ours) if row[0] != "Activation"]
    assert [row[0] for row in fused] == [row[0] for row in layer_summary(theirs)]
    assert [row[1:] for row in fused] == [row[1:] for row in layer_summary(theirs)]


def test_forward_flops_counts_convs_and_dense():
    # conv 26x26x32 of 3x3x1, conv 11x11x64 of 3x3x32, dense 1600 -> 10; x2 for multiply-add
    expected = 2 * (26 * 26 * 32 * 9 + 11 * 11 * 64 * 9 * 32 + 1600 * 10)
    assert forward_flops(keras_io_convnet()) == expected


def test_preset_keys_exist_in_params():
    fields = TrainParams.model_fields
    for key, value in KERAS_IO_PRESET.items():
        assert key in fields
        if isinstance(value, dict):
            assert set(value) == set(fields[key].annotation.model_fields)


def test_preset_trains_like_the_published_script():
    preset = preset_params(load_params(PROJECT_ROOT / "params.yaml").train)
    ours = compile_model(build_model(preset.model, (28, 28, 1), 10), preset, 100)
    theirs = keras_io_convnet()
    assert type(ours.optimizer) is type(theirs.optimizer)
    assert float(ours.optimizer.learning_rate) == float(theirs.optimizer.learning_rate)
    assert ours.loss.get_config()["label_smoothing"] == 0.0
    # The published script feeds the images as they are: no augmentation on our side either.
    assert not preset.augment.shift_pixels and not preset.augment.horizontal_flip


def test_images_per_second_times_every_contender_on_both_kinds_of_input():
    rng = np.random.default_rng(0)
    x = rng.random((4 * BATCH_SIZE, 28, 28, 1), dtype=np.float32)
    y = keras.utils.to_categorical(rng.integers(0, 10, len(x)), 10)
    data = training_dataset(
        x, y, BATCH_SIZE, 0, AugmentParams(shift_pixels=0, horizontal_flip=False)
    )
    speeds = images_per_second(
        {"numpy": (keras_io_convnet(), (x, y)), "tf.data": (keras_io_convnet(), data)},
        steps=2,
        repeats=3,
    )
    assert set(speeds) == {"numpy", "tf.data"}
    assert all(np.isfinite(speed) and speed > 0 for speed in speeds.values())
