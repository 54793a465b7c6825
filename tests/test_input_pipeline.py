"""The tf.data input pipeline: augmentation moves pixels as asked, reproducibly."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from mnist_cnn.input_pipeline import (
    augment_batch,
    evaluation_dataset,
    shift_images,
    training_dataset,
)
from mnist_cnn.params import AugmentParams


def images_with_a_dot(count: int) -> np.ndarray:
    """Each image black except one bright pixel at (row 10, col 12), off-centre on purpose."""
    images = np.zeros((count, 28, 28, 1), np.float32)
    images[:, 10, 12, 0] = 1.0
    return images


def dot_positions(images) -> list[tuple[int, int]]:
    images = np.asarray(images)
    return [tuple(np.argwhere(image[..., 0] == 1.0)[0]) for image in images]


def test_shift_moves_whole_pixels_and_fills_with_black():
    images = images_with_a_dot(3)
    shifted = shift_images(tf.constant(images), tf.constant([[2, -1], [-2, 2], [0, 0]]))
    assert dot_positions(shifted) == [(9, 14), (12, 10), (10, 12)]  # (row + dy, col + dx)
    assert set(np.unique(shifted)) == {0.0, 1.0}  # moved, never blended
    edge = np.zeros((1, 28, 28, 1), np.float32)
    edge[0, :, 0, 0] = 1.0  # a line on the left border leaves the image when shifted left
    assert float(tf.reduce_sum(shift_images(tf.constant(edge), tf.constant([[-1, 0]])))) == 0


def test_augment_stays_within_the_shift_and_is_a_function_of_the_seed():
    images = tf.constant(images_with_a_dot(64))
    first = augment_batch(images, tf.constant([7, 1], tf.int64), 2, horizontal_flip=False)
    again = augment_batch(images, tf.constant([7, 1], tf.int64), 2, horizontal_flip=False)
    other = augment_batch(images, tf.constant([8, 1], tf.int64), 2, horizontal_flip=False)
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)
    rows, cols = zip(*dot_positions(first), strict=True)
    assert set(rows) == set(range(8, 13)) and set(cols) == set(range(10, 15))  # all of ±2


def test_flips_only_when_asked():
    images = tf.constant(images_with_a_dot(64))
    seed = tf.constant([3, 1], tf.int64)
    unflipped = dot_positions(augment_batch(images, seed, 0, horizontal_flip=False))
    assert set(unflipped) == {(10, 12)}
    flipped = dot_positions(augment_batch(images, seed, 0, horizontal_flip=True))
    assert set(flipped) == {(10, 12), (10, 15)}  # column 12 mirrors to 27 - 12


def epoch_batches(dataset) -> list[np.ndarray]:
    return [images.numpy() for images, _ in dataset]


def test_training_dataset_reproducible_and_new_each_epoch():
    rng = np.random.default_rng(0)
    images = rng.random((50, 28, 28, 1), dtype=np.float32)
    labels = np.eye(10, dtype=np.float32)[rng.integers(0, 10, 50)]
    augment = AugmentParams(shift_pixels=2, horizontal_flip=True)

    dataset = training_dataset(images, labels, 16, seed=5, augment=augment)
    epoch1, epoch2 = epoch_batches(dataset), epoch_batches(dataset)
    assert [len(b) for b in epoch1] == [16, 16, 16, 2]
    assert not np.array_equal(np.concatenate(epoch1), np.concatenate(epoch2))

    rebuilt = training_dataset(images, labels, 16, seed=5, augment=augment)
    for ours, theirs in zip(
        epoch1 + epoch2, epoch_batches(rebuilt) + epoch_batches(rebuilt), strict=True
    ):
        np.testing.assert_array_equal(ours, theirs)

    plain = training_dataset(
        images, labels, 50, seed=5, augment=AugmentParams(shift_pixels=0, horizontal_flip=False)
    )
    ((batch, batch_labels),) = [(x.numpy(), y.numpy()) for x, y in plain]
    # Without augmentation the epoch is a permutation of the data, labels kept with images.
    order = [int(np.flatnonzero((images == image).all(axis=(1, 2, 3)))[0]) for image in batch]
    assert sorted(order) == list(range(50))
    np.testing.assert_array_equal(batch_labels, labels[order])


def test_evaluation_dataset_keeps_order():
    images = np.arange(5 * 28 * 28, dtype=np.float32).reshape(5, 28, 28, 1)
    labels = np.eye(10, dtype=np.float32)[:5]
    batches = list(evaluation_dataset(images, labels, 2))
    np.testing.assert_array_equal(np.concatenate([b[0] for b in batches]), images)
    options = evaluation_dataset(images, labels, 2).options()
    assert (
        options.experimental_distribute.auto_shard_policy
        == tf.data.experimental.AutoShardPolicy.DATA
    )


@pytest.mark.parametrize("shift", [0, 3])
def test_shapes_and_dtypes_survive(shift):
    images = tf.constant(images_with_a_dot(4))
    out = augment_batch(images, tf.constant([1, 2], tf.int64), shift, horizontal_flip=True)
    assert out.shape == images.shape and out.dtype == tf.float32
