"""Test-time augmentation: the softmax averaged over shifted views of each image."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from mnist_cnn.evaluation import predict_probabilities, shift_offsets
from tests.conftest import restored_tf_global_state


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
    with restored_tf_global_state():  # seeded weights, without seeding later tests
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


# --- the metrics, against a tiny case computed by hand ------------------------------------
# Three classes, six items: true 0 0 0 1 1 2, predicted 0 0 1 1 2 2.
#   class 0: tp 2, predicted 2, actual 3 -> precision 1,   recall 2/3, F1 0.8
#   class 1: tp 1, predicted 2, actual 2 -> precision 1/2, recall 1/2, F1 0.5
#   class 2: tp 1, predicted 2, actual 1 -> precision 1/2, recall 1,   F1 2/3
TRUE = np.array([0, 0, 0, 1, 1, 2])
PREDICTED = np.array([0, 0, 1, 1, 2, 2])


def test_classification_metrics_match_a_hand_computed_confusion():
    from mnist_cnn.evaluation import classification_metrics

    summary, per_class = classification_metrics(TRUE, PREDICTED, ("a", "b", "c"))
    assert summary["accuracy"] == round(4 / 6, 6)
    assert summary["macro_precision"] == round((1 + 0.5 + 0.5) / 3, 6)
    assert summary["macro_recall"] == round((2 / 3 + 0.5 + 1) / 3, 6)
    assert summary["macro_f1"] == round((0.8 + 0.5 + 2 / 3) / 3, 6)
    assert per_class.index.tolist() == ["a", "b", "c"]
    assert per_class["f1"].tolist() == [0.8, 0.5, round(2 / 3, 6)]
    assert per_class["support"].tolist() == [3, 2, 1]


def test_a_class_never_predicted_scores_zero_not_an_error():
    from mnist_cnn.evaluation import classification_metrics

    summary, per_class = classification_metrics(np.array([0, 1]), np.array([0, 0]), ("a", "b"))
    assert per_class.loc["b", "precision"] == 0 and per_class.loc["b", "recall"] == 0
    assert summary["accuracy"] == 0.5


def test_cross_entropy_is_plain_not_label_smoothed():
    from mnist_cnn.evaluation import cross_entropy

    onehot = np.eye(3, dtype=np.float32)[[0, 2]]
    probabilities = np.array([[0.5, 0.25, 0.25], [0.1, 0.1, 0.8]], dtype=np.float32)
    expected = -(np.log(0.5) + np.log(0.8)) / 2  # only the true class's probability counts
    assert cross_entropy(onehot, probabilities) == pytest.approx(expected, rel=1e-6)


def test_most_confident_mistakes_come_first_and_only_mistakes():
    from mnist_cnn.evaluation import most_confident_mistakes

    confidence = np.array([0.9, 0.99, 0.6, 0.7, 0.95, 0.8])
    # Mistakes are items 2 (0.6) and 4 (0.95); the confident correct item 1 is not one.
    assert most_confident_mistakes(TRUE, PREDICTED, confidence, 5).tolist() == [4, 2]
    assert most_confident_mistakes(TRUE, PREDICTED, confidence, 1).tolist() == [4]
    ties = np.full(6, 0.5)
    assert most_confident_mistakes(TRUE, PREDICTED, ties, 5).tolist() == [2, 4]  # stable
