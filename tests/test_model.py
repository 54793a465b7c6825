"""The CNN is built from params exactly as they say."""

from __future__ import annotations

import copy

import keras
import numpy as np
import pytest

from stages.model import build_model, compile_model
from stages.params import load_params
from tests.conftest import PROJECT_ROOT


@pytest.fixture(scope="module")
def model_params() -> dict:
    return load_params(PROJECT_ROOT / "params.yaml")["train"]["model"]


def layers_of(model, kind):
    return [layer for layer in model.layers if isinstance(layer, kind)]


def test_default_model_shape_and_softmax(model_params):
    model = build_model(model_params, (28, 28, 1), 10)
    assert model.output_shape == (None, 10)
    probabilities = model(np.random.default_rng(0).random((4, 28, 28, 1), dtype=np.float32))
    np.testing.assert_allclose(keras.ops.convert_to_numpy(probabilities).sum(axis=1), 1, rtol=1e-5)
    convs = layers_of(model, keras.layers.Conv2D)
    assert [c.filters for c in convs] == [
        f for f in model_params["conv_filters"] for _ in range(model_params["convs_per_block"])
    ]
    assert len(layers_of(model, keras.layers.MaxPooling2D)) == len(model_params["conv_filters"])


def test_every_architecture_param_is_used(model_params):
    variant = copy.deepcopy(model_params)
    variant.update(conv_filters=[8, 16], convs_per_block=2, kernel_size=5, batch_norm=False,
                   conv_dropout=0.1, dense_units=[32, 16], dense_dropout=0.3)
    model = build_model(variant, (28, 28, 1), 10)
    convs = layers_of(model, keras.layers.Conv2D)
    assert [c.filters for c in convs] == [8, 8, 16, 16]
    assert all(c.kernel_size == (5, 5) and c.use_bias for c in convs)
    assert layers_of(model, keras.layers.BatchNormalization) == []
    dense = layers_of(model, keras.layers.Dense)
    assert [d.units for d in dense] == [32, 16, 10]
    rates = sorted({d.rate for d in layers_of(model, keras.layers.Dropout)})
    assert rates == [0.1, 0.3]

    variant.update(batch_norm=True, batch_norm_momentum=0.8)
    norms = layers_of(build_model(variant, (28, 28, 1), 10), keras.layers.BatchNormalization)
    assert len(norms) == 6 and all(n.momentum == 0.8 for n in norms)


def test_compile_uses_adam_and_categorical_crossentropy(model_params):
    model = compile_model(build_model(model_params, (28, 28, 1), 10), 0.005)
    assert isinstance(model.optimizer, keras.optimizers.Adam)
    assert float(keras.ops.convert_to_numpy(model.optimizer.learning_rate)) == pytest.approx(0.005)
    assert model.loss == "categorical_crossentropy"


def test_saved_model_bytes_do_not_depend_on_the_clock(model_params, tmp_path):
    import time

    from stages.model import save_model

    model = build_model(model_params, (28, 28, 1), 10)
    save_model(model, tmp_path / "a.keras")
    time.sleep(1.1)  # zip timestamps have 2 s resolution; Keras' date_saved has 1 s
    save_model(model, tmp_path / "b.keras")
    assert (tmp_path / "a.keras").read_bytes() == (tmp_path / "b.keras").read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.keras", "b.keras"]
    images = np.random.default_rng(1).random((3, 28, 28, 1), dtype=np.float32)
    loaded = keras.models.load_model(tmp_path / "a.keras", safe_mode=True)
    np.testing.assert_allclose(loaded.predict(images, verbose=0), model.predict(images, verbose=0))
