"""Preprocessing: scaling, shapes, one-hot labels, stratified seeded splits."""

from __future__ import annotations

import numpy as np
import pytest

from mnist_cnn.preprocessing import (
    class_counts,
    normalize_images,
    one_hot,
    split_train_val,
    stratified_subset,
)


@pytest.fixture
def labels(rng) -> np.ndarray:
    # Unbalanced classes, as real data can be: class k appears 100 + 20k times.
    labels = np.concatenate([np.full(100 + 20 * k, k) for k in range(10)])
    return rng.permutation(labels).astype(np.uint8)


def test_normalize_scales_to_unit_range_and_adds_channel(rng):
    images = rng.integers(0, 256, size=(7, 28, 28), dtype=np.uint8)
    images[0, 0, 0], images[0, 0, 1] = 0, 255
    scaled = normalize_images(images)
    assert scaled.shape == (7, 28, 28, 1) and scaled.dtype == np.float32
    assert scaled.min() == 0.0 and scaled.max() == 1.0
    np.testing.assert_allclose(scaled[..., 0] * 255, images, atol=1e-4)


def test_one_hot():
    encoded = one_hot(np.array([0, 3, 9]))
    assert encoded.shape == (3, 10) and encoded.dtype == np.float32
    assert encoded.sum(axis=1).tolist() == [1, 1, 1]
    assert encoded.argmax(axis=1).tolist() == [0, 3, 9]


def test_split_is_stratified_disjoint_and_seeded(labels):
    train, val = split_train_val(labels, 0.1, seed=7)
    assert len(val) == round(0.1 * len(labels))
    assert set(train).isdisjoint(val) and len(train) + len(val) == len(labels)
    # Every class keeps its share in the validation set (within one item).
    expected = np.bincount(labels) * 0.1
    assert np.all(np.abs(np.bincount(labels[val], minlength=10) - expected) <= 1)
    again_train, again_val = split_train_val(labels, 0.1, seed=7)
    np.testing.assert_array_equal(val, again_val)
    _, other_val = split_train_val(labels, 0.1, seed=8)
    assert not np.array_equal(val, other_val)


def test_stratified_subset(labels):
    keep = stratified_subset(labels, 500, seed=1)
    assert len(keep) == 500 and len(set(keep)) == 500
    share = np.bincount(labels[keep], minlength=10) / 500
    np.testing.assert_allclose(share, np.bincount(labels) / len(labels), atol=0.01)
    assert len(stratified_subset(labels, None, seed=1)) == len(labels)
    assert len(stratified_subset(labels, 10**6, seed=1)) == len(labels)


def test_class_counts():
    counts = class_counts(np.array([0, 0, 2]), ("a", "b", "c"))
    assert counts == {"a": 2, "b": 0, "c": 1}
