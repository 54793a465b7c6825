"""The tf.data input pipeline: augmentation moves pixels as asked, reproducibly."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from mnist_cnn.input_pipeline import (
    augment_batch,
    erase_rectangles,
    evaluation_dataset,
    rotate_zoom_and_shift,
    shift_images,
    training_dataset,
)
from mnist_cnn.params import AugmentParams, ErasingParams

NO_ERASING = ErasingParams(probability=0.0, min_area=0.02, max_area=0.4, max_aspect_ratio=3.3)


def augmentation(
    shift: int = 0, flip: bool = False, erase: float = 0.0, rotate: float = 0.0, zoom: float = 0.0
) -> AugmentParams:
    return AugmentParams(
        shift_pixels=shift,
        horizontal_flip=flip,
        rotation_degrees=rotate,
        zoom=zoom,
        random_erasing=NO_ERASING.model_copy(update={"probability": erase}),
    )


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
    first = augment_batch(images, tf.constant([7, 1], tf.int64), augmentation(shift=2))
    again = augment_batch(images, tf.constant([7, 1], tf.int64), augmentation(shift=2))
    other = augment_batch(images, tf.constant([8, 1], tf.int64), augmentation(shift=2))
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)
    rows, cols = zip(*dot_positions(first), strict=True)
    assert set(rows) == set(range(8, 13)) and set(cols) == set(range(10, 15))  # all of ±2


def test_flips_only_when_asked():
    images = tf.constant(images_with_a_dot(64))
    seed = tf.constant([3, 1], tf.int64)
    unflipped = dot_positions(augment_batch(images, seed, augmentation()))
    assert set(unflipped) == {(10, 12)}
    flipped = dot_positions(augment_batch(images, seed, augmentation(flip=True)))
    assert set(flipped) == {(10, 12), (10, 15)}  # column 12 mirrors to 27 - 12


def epoch_batches(dataset) -> list[np.ndarray]:
    return [images.numpy() for images, _ in dataset]


def test_training_dataset_reproducible_and_new_each_epoch():
    rng = np.random.default_rng(0)
    images = rng.random((50, 28, 28, 1), dtype=np.float32)
    labels = np.eye(10, dtype=np.float32)[rng.integers(0, 10, 50)]
    augment = augmentation(shift=2, flip=True, erase=0.5)

    dataset = training_dataset(images, labels, 16, seed=5, augment=augment)
    epoch1, epoch2 = epoch_batches(dataset), epoch_batches(dataset)
    assert [len(b) for b in epoch1] == [16, 16, 16, 2]
    assert not np.array_equal(np.concatenate(epoch1), np.concatenate(epoch2))

    rebuilt = training_dataset(images, labels, 16, seed=5, augment=augment)
    for ours, theirs in zip(
        epoch1 + epoch2, epoch_batches(rebuilt) + epoch_batches(rebuilt), strict=True
    ):
        np.testing.assert_array_equal(ours, theirs)

    plain = training_dataset(images, labels, 50, seed=5, augment=augmentation())
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


def test_rotation_turns_about_the_centre_and_zoom_scales():
    dots = tf.constant(images_with_a_dot(2))
    same = rotate_zoom_and_shift(dots, tf.constant([0.0, 0.0]), tf.constant([1.0, 1.0]))
    np.testing.assert_array_equal(same, dots)
    # A quarter turn counter-clockwise as displayed: the dot 1.5 px left of and 3.5 px
    # above the centre (13.5, 13.5) ends 3.5 px left of and 1.5 px below it.
    turned = rotate_zoom_and_shift(
        dots, tf.constant([np.pi / 2, -np.pi / 2]), tf.constant([1.0, 1.0])
    )
    assert dot_positions(turned.numpy().round(4)) == [(15, 10), (12, 17)]
    square = np.zeros((2, 28, 28, 1), np.float32)
    square[:, 9:19, 9:19] = 1.0  # 10 x 10, centred
    scaled = rotate_zoom_and_shift(
        tf.constant(square), tf.constant([0.0, 0.0]), tf.constant([1.2, 0.8])
    )
    areas = scaled.numpy().sum(axis=(1, 2, 3))
    np.testing.assert_allclose(areas, [144, 64], rtol=0.1)


def test_one_transform_equals_rotating_then_shifting():
    # The single op that rotates, zooms and shifts gives the pixels of two ops in turn
    # (bilinear rotation, then a whole-pixel shift), for content away from the borders.
    rng = np.random.default_rng(3)
    images = np.zeros((6, 28, 28, 1), np.float32)
    images[:, 6:22, 6:22] = rng.random((6, 16, 16, 1))
    images = tf.constant(images)
    angles = tf.constant(np.radians([-10, -4, 0, 3, 7, 10]), tf.float32)
    scales = tf.constant([0.9, 1.1, 1.0, 0.95, 1.05, 1.1])
    offsets = tf.constant([[2, -2], [-1, 0], [0, 1], [2, 2], [-2, -2], [0, 0]])
    one_op = rotate_zoom_and_shift(images, angles, scales, offsets)
    two_ops = shift_images(rotate_zoom_and_shift(images, angles, scales), offsets)
    np.testing.assert_allclose(one_op, two_ops, atol=1e-5)
    assert (
        float(tf.reduce_max(tf.abs(one_op - rotate_zoom_and_shift(images, angles, scales)))) > 0.1
    )


def test_rotation_and_zoom_draws_stay_in_range():
    images = np.zeros((256, 28, 28, 1), np.float32)
    images[:, 3, 13, 0] = 1.0  # far from the centre, so a turn moves it by pixels
    images = tf.constant(images)
    seed = tf.constant([5, 1], tf.int64)
    out = augment_batch(images, seed, augmentation(rotate=10, zoom=0.1)).numpy()
    again = augment_batch(images, seed, augmentation(rotate=10, zoom=0.1))
    np.testing.assert_array_equal(out, again)
    centre = np.array([13.5, 13.5])
    dot = np.array([3, 13]) - centre  # (row, col) offset from the centre, 10.5 px long
    radius = np.linalg.norm(dot)
    angles = []
    for image in out[..., 0]:
        where = np.argwhere(image > 0)
        offset = (where * image[image > 0][:, None]).sum(axis=0) / image.sum() - centre
        # Zoom moves the dot along its radius by at most 10 % (plus bilinear's half pixel).
        assert 0.9 * radius - 0.5 <= np.linalg.norm(offset) <= 1.1 * radius + 0.5
        cosine = offset @ dot / (np.linalg.norm(offset) * radius)
        angles.append(np.degrees(np.arccos(min(cosine, 1.0))))
    # Turned by at most 10° (half a pixel of sampling at 10 px is ~3°), and really turned.
    assert max(angles) <= 13 and np.percentile(angles, 75) > 4


def test_erasing_blanks_one_rectangle_in_the_asked_share_of_images():
    count = 2000
    images = tf.ones((count, 28, 28, 1))
    erasing = NO_ERASING.model_copy(update={"probability": 0.5})
    seed = tf.constant([4, 2], tf.int64)
    erased = erase_rectangles(images, seed, erasing).numpy()[..., 0]
    np.testing.assert_array_equal(erased, erase_rectangles(images, seed, erasing).numpy()[..., 0])
    blank = erased == 0
    touched = blank.any(axis=(1, 2))
    assert 0.45 < touched.mean() < 0.55  # ~probability of the images, binomial spread ~0.011
    for image in blank[touched]:
        rows, cols = np.flatnonzero(image.any(axis=1)), np.flatnonzero(image.any(axis=0))
        # One solid rectangle: its bounding box is all black, nothing else is.
        assert image.sum() == len(rows) * len(cols)
        assert np.ptp(rows) + 1 == len(rows) and np.ptp(cols) + 1 == len(cols)
    area = blank[touched].sum(axis=(1, 2)) / (28 * 28)
    # Area is drawn in [0.02, 0.4], then sides are rounded and clipped to the image.
    assert area.min() >= 0.005 and area.max() <= 0.5 and 0.15 < area.mean() < 0.25
    never = erase_rectangles(images, seed, NO_ERASING).numpy()
    assert (never == 1).all()


@pytest.mark.parametrize("shift", [0, 3])
def test_shapes_and_dtypes_survive(shift):
    images = tf.constant(images_with_a_dot(4))
    out = augment_batch(
        images, tf.constant([1, 2], tf.int64), augmentation(shift=shift, flip=True, erase=0.5)
    )
    assert out.shape == images.shape and out.dtype == tf.float32
