"""Test-time augmentation: the softmax averaged over shifted views of each image."""

from __future__ import annotations

import keras
import numpy as np

from mnist_cnn.evaluation import predict_probabilities, shift_offsets


def shifted_by_numpy(images: np.ndarray, dx: int, dy: int) -> np.ndarray:
    """Move every image right by dx and down by dy, filling with black (independent of TF)."""
    out = np.zeros_like(images)
    height, width = images.shape[1:3]
    rows_to, rows_from = (
        slice(max(dy, 0), height + min(dy, 0)),
        slice(max(-dy, 0), height - max(dy, 0)),
    )
    cols_to, cols_from = (
        slice(max(dx, 0), width + min(dx, 0)),
        slice(max(-dx, 0), width - max(dx, 0)),
    )
    out[:, rows_to, cols_to] = images[:, rows_from, cols_from]
    return out


def position_sensitive_model() -> keras.Model:
    """Dense on the raw pixels: any shift changes its output."""
    keras.utils.set_random_seed(0)
    return keras.Sequential(
        [
            keras.Input((28, 28, 1)),
            keras.layers.Flatten(),
            keras.layers.Dense(10, activation="softmax"),
        ]
    )


def test_offsets_cover_the_square_with_the_original_first():
    assert shift_offsets(0) == [(0, 0)]
    one = shift_offsets(1)
    assert one[0] == (0, 0) and len(one) == len(set(one)) == 9
    assert {abs(c) for xy in shift_offsets(2) for c in xy} == {0, 1, 2}
    assert len(shift_offsets(2)) == 25


def test_without_shifts_it_is_a_plain_predict():
    model = position_sensitive_model()
    images = np.random.default_rng(1).random((7, 28, 28, 1), dtype=np.float32)
    # Batches of 4 against Keras' 32: the kernels may sum in another order (seen on an AMD
    # EPYC without AVX-512), so equal up to float32 rounding, not bit for bit.
    np.testing.assert_allclose(
        predict_probabilities(model, images, batch_size=4),
        model.predict(images, verbose=0),
        rtol=1e-6,
        atol=1e-7,
    )


def test_shifted_views_are_averaged():
    model = position_sensitive_model()
    images = np.random.default_rng(2).random((5, 28, 28, 1), dtype=np.float32)
    expected = np.mean(
        [
            model.predict(shifted_by_numpy(images, dx, dy), verbose=0)
            for dx in (-1, 0, 1)
            for dy in (-1, 0, 1)
        ],
        axis=0,
    )
    averaged = predict_probabilities(model, images, batch_size=3, shift_pixels=1)
    np.testing.assert_allclose(averaged, expected, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(averaged.sum(axis=1), 1, rtol=1e-5)
    # The views really differ: a plain predict is not the average.
    assert not np.allclose(averaged, model.predict(images, verbose=0), atol=1e-4)
