"""Preprocessing: IDX pixels and labels → what the network trains on.

Images become float32 in [0, 1] shaped N x 28 x 28 x 1; labels become one-hot
float32 vectors. Splits and subsets are stratified and seeded. Used by the
preprocess stage and by `predict` (the same pixel scaling for any image).
"""

from __future__ import annotations

import numpy as np
from sklearn.model_selection import train_test_split

from mnist_cnn.datasets import NUM_CLASSES


def normalize_images(images: np.ndarray) -> np.ndarray:
    """uint8 N x H x W pixels (0-255) → float32 N x H x W x 1 in [0, 1].

    The one place pixel scaling is defined: training, evaluation and any later
    inference must all go through it.
    """
    return (images.astype(np.float32) / 255.0)[..., np.newaxis]


def one_hot(labels: np.ndarray, num_classes: int = NUM_CLASSES) -> np.ndarray:
    return np.eye(num_classes, dtype=np.float32)[labels]


def stratified_subset(labels: np.ndarray, size: int | None, seed: int) -> np.ndarray:
    """Indices of a class-balanced subset of `size` items (all indices if size is None)."""
    indices = np.arange(len(labels))
    if size is None or size >= len(labels):
        return indices
    subset, _ = train_test_split(indices, train_size=size, stratify=labels, random_state=seed)
    return np.sort(subset)


def split_train_val(
    labels: np.ndarray, val_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Stratified, seeded (train indices, validation indices)."""
    indices = np.arange(len(labels))
    train_idx, val_idx = train_test_split(
        indices, test_size=val_fraction, stratify=labels, random_state=seed
    )
    return np.sort(train_idx), np.sort(val_idx)


def first_per_class(
    labels: np.ndarray, per_class: int, num_classes: int = NUM_CLASSES
) -> np.ndarray:
    """Indices of the first `per_class` items of each class, class 0 first."""
    return np.concatenate([np.flatnonzero(labels == k)[:per_class] for k in range(num_classes)])


def class_counts(labels: np.ndarray, class_names: tuple[str, ...]) -> dict[str, int]:
    counts = np.bincount(labels, minlength=len(class_names))
    return {name: int(count) for name, count in zip(class_names, counts, strict=True)}
