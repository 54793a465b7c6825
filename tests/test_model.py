"""The CNN is built from params exactly as they say."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from mnist_cnn.model import build_model, compile_model, learning_rate_schedule
from mnist_cnn.params import ModelParams, TrainParams, validate_params
from tests.conftest import changed, committed_params


@pytest.fixture(scope="module")
def model_params() -> ModelParams:
    return validate_params(committed_params()).train.model


def layers_of(model, kind):
    return [layer for layer in model.layers if isinstance(layer, kind)]


def test_default_model_shape_and_softmax(model_params):
    model = build_model(model_params, (28, 28, 1), 10)
    assert model.output_shape == (None, 10)
    probabilities = model(np.random.default_rng(0).random((4, 28, 28, 1), dtype=np.float32))
    np.testing.assert_allclose(keras.ops.convert_to_numpy(probabilities).sum(axis=1), 1, rtol=1e-5)
    convs = layers_of(model, keras.layers.Conv2D)
    assert [c.filters for c in convs] == [
        f
        for f, n in zip(model_params.conv_filters, model_params.convs_per_block, strict=True)
        for _ in range(n)
    ]
    assert len(layers_of(model, keras.layers.MaxPooling2D)) == len(model_params.conv_filters)


def test_every_architecture_param_is_used(model_params):
    variant = changed(
        model_params,
        conv_filters=[8, 16],
        convs_per_block=[1, 2],
        kernel_size=5,
        batch_norm=False,
        conv_dropout=0.1,
        dense_units=[32, 16],
        dense_dropout=0.3,
    )
    model = build_model(variant, (28, 28, 1), 10)
    convs = layers_of(model, keras.layers.Conv2D)
    assert [c.filters for c in convs] == [8, 16, 16]
    assert all(c.kernel_size == (5, 5) and c.use_bias for c in convs)
    assert layers_of(model, keras.layers.BatchNormalization) == []
    dense = layers_of(model, keras.layers.Dense)
    assert [d.units for d in dense] == [32, 16, 10]
    rates = sorted({d.rate for d in layers_of(model, keras.layers.Dropout)})
    assert rates == [0.1, 0.3]

    variant = changed(variant, batch_norm=True, batch_norm_momentum=0.8)
    norms = layers_of(build_model(variant, (28, 28, 1), 10), keras.layers.BatchNormalization)
    assert len(norms) == 5 and all(n.momentum == 0.8 for n in norms)


@pytest.fixture(scope="module")
def train_params() -> TrainParams:
    return validate_params(committed_params()).train


def rate_at(schedule, step: int) -> float:
    return float(keras.ops.convert_to_numpy(schedule(step)))


def test_compile_adamw_with_warmup_then_cosine_and_label_smoothing(train_params, model_params):
    params = changed(
        train_params,
        optimizer="adamw",
        weight_decay=0.02,
        learning_rate=0.004,
        epochs=10,
        label_smoothing=0.2,
        lr_schedule={"name": "cosine", "warmup_epochs": 2},
    )
    model = compile_model(build_model(model_params, (28, 28, 1), 10), params, steps_per_epoch=5)
    optimizer = model.optimizer
    assert isinstance(optimizer, keras.optimizers.AdamW) and optimizer.weight_decay == 0.02
    assert model.loss.label_smoothing == 0.2
    assert float(keras.ops.convert_to_numpy(optimizer.learning_rate)) == 0.0  # step 0
    schedule = learning_rate_schedule(params, 0.004, steps_per_epoch=5)
    assert rate_at(schedule, 5) == pytest.approx(0.002)  # half-way through the warm-up
    assert rate_at(schedule, 10) == pytest.approx(0.004)  # peak
    assert rate_at(schedule, 30) == pytest.approx(0.002)  # half-way through the decay
    assert rate_at(schedule, 50) == pytest.approx(0.0, abs=1e-9)


def test_compile_plain_adam_with_constant_rate(train_params, model_params):
    """The write-up's setup: Adam at a fixed rate (ReduceLROnPlateau may then change it)."""
    params = changed(
        train_params,
        optimizer="adam",
        learning_rate=0.005,
        label_smoothing=0.0,
        lr_schedule={"name": "constant", "warmup_epochs": 0},
    )
    model = compile_model(
        build_model(model_params, (28, 28, 1), 10), params, steps_per_epoch=5, learning_rate=0.01
    )  # a distributed run passes the scaled rate
    assert type(model.optimizer) is keras.optimizers.Adam
    assert float(keras.ops.convert_to_numpy(model.optimizer.learning_rate)) == pytest.approx(0.01)
    assert model.loss.label_smoothing == 0.0


def test_mixed_bfloat16_computes_in_bfloat16_but_outputs_float32(model_params):
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        model = build_model(model_params, (28, 28, 1), 10)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert model.get_layer("block1_conv1").compute_dtype == "bfloat16"
    assert model.get_layer("block1_conv1").variable_dtype == "float32"
    assert model.output.dtype == "float32"


def test_saved_model_bytes_do_not_depend_on_the_clock(model_params, tmp_path):
    import json
    import zipfile

    from mnist_cnn.model import FIXED_ZIP_TIME, save_model

    model = build_model(model_params, (28, 28, 1), 10)
    save_model(model, tmp_path / "a.keras")
    save_model(model, tmp_path / "b.keras")
    assert (tmp_path / "a.keras").read_bytes() == (tmp_path / "b.keras").read_bytes()
    # No clock inside, whenever it is saved: every zip entry carries the fixed time, and
    # Keras' save time is dropped (comparing two saves alone would need them to straddle
    # a tick of the clock to catch a change).
    with zipfile.ZipFile(tmp_path / "a.keras") as archive:
        assert {entry.date_time for entry in archive.infolist()} == {FIXED_ZIP_TIME}
        assert "date_saved" not in json.loads(archive.read("metadata.json"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.keras", "b.keras"]
    images = np.random.default_rng(1).random((3, 28, 28, 1), dtype=np.float32)
    loaded = keras.models.load_model(tmp_path / "a.keras", safe_mode=True)
    np.testing.assert_allclose(loaded.predict(images, verbose=0), model.predict(images, verbose=0))


def test_backups_are_keyed_to_seed_params_and_data(tmp_path, train_params, capsys):
    """train.backup_and_restore resumes only a backup of the same run; others are deleted."""
    from mnist_cnn.training import matching_backup_dir, run_fingerprint

    images = np.zeros((4, 28, 28, 1), dtype=np.float32)
    labels = np.eye(10, dtype=np.float32)[:4]
    first = run_fingerprint(42, train_params, images, labels)
    assert run_fingerprint(42, train_params, images.copy(), labels) == first
    assert run_fingerprint(7, train_params, images, labels) != first
    other_params = changed(train_params, epochs=train_params.epochs + 1)
    assert run_fingerprint(42, other_params, images, labels) != first
    other_images = images.copy()
    other_images[0, 0, 0, 0] = 1.0
    assert run_fingerprint(42, train_params, other_images, labels) != first

    root = tmp_path / "checkpoints/mnist"
    (root / "0123456789abcdef").mkdir(parents=True)  # an older run's backup
    (root / first).mkdir()
    (root / first / "chkpt").write_text("state")
    (root / first / "training_metadata.json").write_text('{"epoch": 3, "batch": -1}')
    assert matching_backup_dir(root, first, epochs=4) == root / first
    assert sorted(p.name for p in root.iterdir()) == [first]
    assert (root / first / "chkpt").read_text() == "state"  # this run's backup is kept
    assert "discarding" in capsys.readouterr().out

    # A backup of all the epochs (killed after the last one was saved) would resume into
    # zero epochs: it is discarded, and the run trains from the start.
    (root / first / "training_metadata.json").write_text('{"epoch": 4, "batch": -1}')
    assert matching_backup_dir(root, first, epochs=4) == root / first
    assert not (root / first).exists()
    assert "holds a finished run" in capsys.readouterr().out


def test_weight_averaging_validates_and_keeps_the_average_with_its_statistics(
    train_params, tf_global_state, tmp_path
):
    """With weight averaging, what fit() logs for the kept epoch is what the final model
    scores, the final weights are the optimizer's average (not the last step's), and the
    batch-norm statistics are the ones the average produces on the re-estimation images."""
    from mnist_cnn.training import BatchNormReestimation, fit, make_deterministic

    rng = np.random.default_rng(0)
    labels = rng.integers(0, 10, 704)
    images = rng.normal(0.2, 0.1, (704, 28, 28, 1)).astype(np.float32)
    images[np.arange(704), 2 * labels + 4, 14, 0] += 1.0  # class = row of one bright pixel
    y = np.eye(10, dtype=np.float32)[labels]
    train = TrainParams.model_validate(
        {
            **train_params.model_dump(),
            "epochs": 3,
            "batch_size": 32,
            "augment": {**train_params.augment.model_dump(), "shift_pixels": 0},
            "model": {
                **train_params.model.model_dump(),
                "conv_filters": [8],
                "convs_per_block": [1],
                "dense_units": [16],
            },
            "early_stopping": {"enabled": True, "monitor": "val_loss", "patience": 5},
            "weight_averaging": {"enabled": True, "momentum": 0.99, "batch_norm_batches": 4},
        }
    )
    make_deterministic(0)
    model = compile_model(build_model(train.model, (28, 28, 1), 10), train, 18)
    split = {"train": (images[:576], y[:576]), "val": (images[576:], y[576:])}
    history = fit(model, train, 0, split["train"], split["val"], 32, tmp_path).history

    kept = int(np.argmin(history["val_loss"]))
    loss, accuracy = model.evaluate(*split["val"], batch_size=32, verbose=0)
    assert accuracy == pytest.approx(history["val_accuracy"][kept], abs=1e-6)
    assert loss == pytest.approx(history["val_loss"][kept], rel=1e-5)

    # The statistics describe these weights on the re-estimation images: the first
    # batch-norm's mean is the mean of its conv's output over the 4 x 32 images, and
    # re-estimating every layer again changes nothing.
    conv = keras.Model(model.input, model.get_layer("block1_conv1").output)
    channel_means = conv.predict(images[:128], verbose=0).mean(axis=(0, 1, 2))
    np.testing.assert_allclose(
        np.array(model.get_layer("block1_bn1").moving_mean), channel_means, atol=1e-5
    )
    norms = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
    before = [np.array(layer.moving_mean) for layer in norms]
    again = BatchNormReestimation(images[:576], 32, 4)
    again.set_model(model)
    again.on_test_begin()
    for layer, mean in zip(norms, before, strict=True):
        np.testing.assert_allclose(np.array(layer.moving_mean), mean, rtol=1e-5, atol=1e-6)
    assert [layer.momentum for layer in norms] == [train.model.batch_norm_momentum] * len(norms)
    dropouts = [layer.rate for layer in model.layers if isinstance(layer, keras.layers.Dropout)]
    assert dropouts == [train.model.conv_dropout, train.model.dense_dropout]
