"""The benchmark compares like with like: its preset is the keras.io convnet."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from mnist_cnn.input_pipeline import training_dataset
from mnist_cnn.model import build_model, compile_model
from mnist_cnn.params import ModelParams, Params, TrainParams
from mnist_cnn.tools.bench import (
    KERAS_IO_PRESET,
    STAGE_SPEED,
    accuracy_over_time,
    forward_flops,
    images_per_second,
    plot_accuracy_against_time,
    preset_params_file,
)
from mnist_cnn.tools.peer import BATCH_SIZE, EpochClock, keras_io_convnet, published_inputs
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


def test_epoch_clock_records_each_epochs_end_and_validation_accuracy():
    clock = EpochClock()
    clock.on_train_begin()
    for epoch, accuracy in enumerate([0.5, 0.75]):
        clock.on_epoch_end(epoch, {"val_accuracy": accuracy, "accuracy": 0.1})
    assert clock.val_accuracy == [0.5, 0.75]
    assert len(clock.seconds) == 2 and 0 <= clock.seconds[0] <= clock.seconds[1]


def test_accuracy_over_time_trains_through_the_stage_fit_every_epoch(tf_global_state):
    """Separable toy data: one clocked point per epoch, and the model learns."""
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 10, 640)
    images = np.zeros((640, 28, 28, 1), np.float32)
    images[np.arange(640), 2 * labels + 4, 14, 0] = 1.0  # class = row of one bright pixel
    y = np.eye(10, dtype=np.float32)[labels]
    train = preset_train().model_copy(update={"epochs": 4, "batch_size": 32})
    data = {"train": (images[:512], y[:512]), "val": (images[512:], y[512:])}
    clock = accuracy_over_time(train, 0, data)
    assert len(clock.seconds) == len(clock.val_accuracy) == 4
    assert clock.seconds == sorted(clock.seconds) and clock.seconds[0] > 0
    assert clock.val_accuracy[-1] > 0.5


def test_accuracy_figure_draws_both_curves(tmp_path):
    from PIL import Image

    curves = {
        "peer": {"epoch_seconds": [5.0, 10.0], "val_accuracy": [0.97, 0.985]},
        "ours": {"epoch_seconds": [8.0, 16.0, 24.0], "val_accuracy": [0.98, 0.99, 0.995]},
    }
    path = tmp_path / "curves.png"
    plot_accuracy_against_time(curves, path, "MNIST")
    pixels = np.asarray(Image.open(path).convert("RGB")).astype(int)
    # Two coloured lines (matplotlib's first two colours: blue, orange) are drawn.
    blue = ((pixels[..., 2] - pixels[..., 0]) > 100).sum()
    orange = ((pixels[..., 0] - pixels[..., 2]) > 100).sum()
    assert blue > 200 and orange > 200, (blue, orange)


def test_tf_global_state_is_put_back_after_a_test_that_trains():
    """What accuracy_over_time (through make_deterministic) sets, undone by the fixture."""
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
