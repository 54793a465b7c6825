"""The benchmark compares like with like: its preset is the keras.io convnet."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from mnist_cnn.bench import (
    KERAS_IO_PRESET,
    PREVIOUS_DEFAULT,
    STAGE_SPEED,
    TimeToTargets,
    forward_flops,
    images_per_second,
    preset_params_file,
    time_to_accuracy,
    validate_overlay,
)
from mnist_cnn.input_pipeline import training_dataset
from mnist_cnn.model import build_model, compile_model
from mnist_cnn.params import ModelParams, Params, TrainParams
from mnist_cnn.peer import BATCH_SIZE, keras_io_convnet, published_inputs
from tests.conftest import PROJECT_ROOT, committed_params, restored_tf_global_state


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


def preset_train() -> TrainParams:
    """The train section the bench's stage process reads (the preset over params.yaml)."""
    raw = committed_params()
    return Params.model_validate(preset_params_file(raw, "mnist", epochs=2)).train_for("mnist")


def test_preset_trains_like_the_published_script():
    preset = preset_train()
    ours = compile_model(build_model(preset.model, (28, 28, 1), 10), preset, 100)
    theirs = keras_io_convnet()
    assert type(ours.optimizer) is type(theirs.optimizer)
    assert float(ours.optimizer.learning_rate) == float(theirs.optimizer.learning_rate)
    assert ours.loss.get_config()["label_smoothing"] == 0.0
    # The published script feeds the images as they are: no augmentation on our side either.
    assert not preset.augment.changes_images()


def test_images_per_second_times_every_contender_in_turns():
    rng = np.random.default_rng(0)
    x = rng.random((4 * BATCH_SIZE, 28, 28, 1), dtype=np.float32)
    y = keras.utils.to_categorical(rng.integers(0, 10, len(x)), 10)
    data = training_dataset(x, y, BATCH_SIZE, 0, preset_train().augment)
    batches: list[str] = []  # which contender's pipeline gave each batch, in order

    def noting(name: str) -> tf.data.Dataset:
        def note(images, labels):
            token = tf.py_function(lambda: batches.append(name) or 0, [], tf.int32)
            with tf.control_dependencies([token]):
                return tf.identity(images), labels

        return data.map(note)

    speeds = images_per_second(
        {"one": (keras_io_convnet(), noting("one")), "two": (keras_io_convnet(), noting("two"))},
        steps=2,
        repeats=3,
    )
    assert set(speeds) == {"one", "two"}
    assert all(np.isfinite(speed) and speed > 0 for speed in speeds.values())
    # In turns: a warm-up each, then one, two, one, two, ... never a contender's repeats
    # back to back.
    turns = [name for index, name in enumerate(batches) if batches[index - 1 : index] != [name]]
    assert turns == ["one", "two"] * 4, batches


def test_peer_preprocesses_as_published():
    images = np.array([[[0, 255], [51, 102]]], dtype=np.uint8)
    x, y = published_inputs(images, np.array([3]))
    assert x.dtype == np.float32 and x.shape == (1, 2, 2, 1)
    assert x[0, :, :, 0] == pytest.approx(np.array([[0.0, 1.0], [0.2, 0.4]]))
    assert y.tolist() == [[0, 0, 0, 1, 0, 0, 0, 0, 0, 0]]


def test_stage_speed_pattern_matches_the_train_stage_line():
    source = (PROJECT_ROOT / "stages/train.py").read_text()
    # The f-string the pattern reads (split over two source lines).
    assert "epochs in {seconds:.0f} s " in source and "images/s); " in source
    line = "[train] MNIST: 2 epochs in 13 s (8123 images/s); kept epoch 2: val_accuracy 0.98"
    assert STAGE_SPEED.search(line).group(1) == "8123"


def test_stage_preset_params_are_valid_and_train_the_keras_io_convnet():
    raw = committed_params()
    params = Params.model_validate(preset_params_file(raw, "fashion_mnist", epochs=2))
    train = params.train_for("fashion_mnist")  # its own overrides must not apply
    assert train.epochs == 2 and not train.early_stopping.enabled
    assert train.model.model_dump() == KERAS_IO_PRESET["model"]
    assert list(params.datasets) == ["fashion_mnist"]


def test_previous_default_is_a_valid_recipe_that_differs_from_today():
    raw = committed_params()
    previous = validate_overlay(raw, PREVIOUS_DEFAULT)
    current = Params.model_validate(raw)
    for key in ("mnist", "fashion_mnist"):
        assert previous.train_for(key).model_dump() != current.train_for(key).model_dump(), key
    # Its augmentation: ±2 px shifts, and flips for clothes; nothing else.
    on = {
        key: {k: v for k, v in previous.train_for(key).augment if v}
        for key in ("mnist", "fashion_mnist")
    }
    assert on == {
        "mnist": {"shift_pixels": 2},
        "fashion_mnist": {"shift_pixels": 2, "horizontal_flip": True},
    }


def test_time_to_targets_records_first_crossings_and_stops_when_all_reached():
    timer = TimeToTargets((0.9, 0.95))
    timer.set_model(keras.Sequential([keras.Input((1,)), keras.layers.Dense(1)]))
    timer.model.stop_training = False
    for epoch, accuracy in enumerate([0.85, 0.91, 0.93, 0.96, 0.97]):
        timer.on_epoch_begin(epoch)
        timer.on_epoch_end(epoch, {"val_accuracy": accuracy})
        if timer.model.stop_training:
            break
    assert {target: epoch for target, (_, epoch) in timer.reached.items()} == {0.9: 2, 0.95: 4}
    assert timer.epochs_run == 4 and timer.model.stop_training
    assert "90.0% in" in timer.describe() and "(epoch 4)" in timer.describe()
    unreached = TimeToTargets((0.99,))
    unreached.on_epoch_begin(0)
    unreached.on_epoch_end(0, {"val_accuracy": 0.5})
    assert "99.0% not reached" in unreached.describe()


def test_time_to_accuracy_trains_through_the_stage_fit_and_stops_at_the_targets(
    tf_global_state,
):
    """Separable toy data: the targets are met, and training stops there, not at `epochs`."""
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 10, 640)
    images = np.zeros((640, 28, 28, 1), np.float32)
    images[np.arange(640), 2 * labels + 4, 14, 0] = 1.0  # class = row of one bright pixel
    y = np.eye(10, dtype=np.float32)[labels]
    train = preset_train().model_copy(update={"epochs": 30, "batch_size": 32})
    data = {"train": (images[:512], y[:512]), "val": (images[512:], y[512:])}
    timer = time_to_accuracy(train, 0, data, (0.5, 0.9))
    assert set(timer.reached) == {0.5, 0.9}
    assert timer.epochs_run == max(epoch for _, epoch in timer.reached.values()) < 30


def test_tf_global_state_is_put_back_after_a_test_that_trains():
    """What time_to_accuracy (through make_deterministic) sets, undone by the fixture."""
    import random

    from tensorflow.python.framework import config as tf_config

    from mnist_cnn.training import make_deterministic

    assert not tf_config.is_op_determinism_enabled()
    python_state, numpy_state = random.getstate(), np.random.get_state()[1].copy()
    with restored_tf_global_state():
        make_deterministic(3)
        assert tf_config.is_op_determinism_enabled()
    assert not tf_config.is_op_determinism_enabled()
    assert random.getstate() == python_state
    assert (np.random.get_state()[1] == numpy_state).all()
