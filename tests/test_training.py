"""Weight averaging (train.ema): what validation measured is what the model holds."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from mnist_cnn.model import build_model, compile_model
from mnist_cnn.params import TrainParams, load_params
from mnist_cnn.training import build_callbacks, make_deterministic, selected_epoch_index
from tests.conftest import PROJECT_ROOT, changed

EPOCHS = 6


@pytest.fixture(scope="module")
def tiny_train() -> TrainParams:
    train = load_params(PROJECT_ROOT / "params.yaml").train
    model = changed(
        train.model, conv_filters=[4], convs_per_block=[1], dense_units=[8], conv_dropout=0.0
    )
    return changed(
        train,
        epochs=EPOCHS,
        learning_rate=0.01,
        model=model.model_dump(),
        ema={"enabled": True, "momentum": 0.9},
    )


def learnable_data(seed: int, count: int) -> tuple[np.ndarray, np.ndarray]:
    """Images whose class is the quadrant-and-level of their brightest block."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, count)
    images = rng.uniform(0, 0.3, (count, 28, 28, 1)).astype("float32")
    for image, label in zip(images, labels, strict=True):
        row, col = divmod(int(label), 5)
        image[row * 14 : row * 14 + 8, col * 5 : col * 5 + 5] += 0.7
    return images, keras.utils.to_categorical(labels, 10)


def fit(train: TrainParams, tmp_path) -> tuple[keras.Model, dict, tuple]:
    make_deterministic(7)
    x, y = learnable_data(1, 256)
    val = learnable_data(2, 128)
    model = compile_model(build_model(train.model, (28, 28, 1), 10), train, steps_per_epoch=8)
    history = model.fit(
        x,
        y,
        batch_size=32,
        epochs=train.epochs,
        validation_data=val,
        callbacks=build_callbacks(train, tmp_path),
        verbose=0,
    ).history
    return model, history, val


@pytest.mark.parametrize("early_stopping", [True, False])
def test_model_holds_the_averaged_weights_validation_selected(tiny_train, tmp_path, early_stopping):
    # Validation ran on the averaged weights (momentum 0.9 over 8 steps an epoch: far
    # from the raw ones), so the saved model must reproduce it exactly. Patience 0 stops
    # at the first epoch that does not improve, so the kept epoch is not the last: the
    # restore must bring back that epoch's *average*, not fit()'s final raw weights.
    stop = {"enabled": early_stopping, "monitor": "val_loss", "patience": 0}
    train = changed(tiny_train, early_stopping=stop)
    model, history, (x_val, y_val) = fit(train, tmp_path)
    selected = selected_epoch_index(history, train.early_stopping)
    loss, accuracy = model.evaluate(x_val, y_val, batch_size=32, verbose=0)
    assert loss == pytest.approx(history["val_loss"][selected], rel=1e-5)
    assert accuracy == pytest.approx(history["val_accuracy"][selected])


def test_ema_off_adds_no_averaging(tiny_train, tmp_path):
    train = changed(tiny_train, ema={"enabled": False, "momentum": 0.9})
    callbacks = build_callbacks(train, tmp_path)
    assert not any(isinstance(c, keras.callbacks.SwapEMAWeights) for c in callbacks)
    model = compile_model(build_model(train.model, (28, 28, 1), 10), train, steps_per_epoch=8)
    assert model.optimizer.use_ema is False
