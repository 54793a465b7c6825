"""tf.data input pipelines for training and validation, with stateless augmentation.

Augmentation is drawn from stateless random ops seeded per batch, so a run is
reproducible under op determinism, and different in every epoch (the per-batch seeds
come from `Dataset.random(..., rerandomize_each_iteration=True)`).
"""

from __future__ import annotations

import math

import numpy as np
import tensorflow as tf

from mnist_cnn.params import AugmentParams, ErasingParams


def _transform(images: tf.Tensor, transforms: tf.Tensor, interpolation: str) -> tf.Tensor:
    """One projective transform per image (rows of 8 coefficients mapping each output
    pixel to its input pixel), same size out, black fill."""
    return tf.raw_ops.ImageProjectiveTransformV3(
        images=images,
        transforms=transforms,
        output_shape=tf.shape(images)[1:3],
        fill_value=0.0,
        interpolation=interpolation,
        fill_mode="CONSTANT",
    )


def shift_images(images: tf.Tensor, offsets: tf.Tensor) -> tf.Tensor:
    """Translate each image by whole pixels (offsets[i] = (dx, dy)), filling with 0.

    Uses the projective-transform kernel with nearest sampling, so pixels are moved,
    never blended, and a batch of different shifts is one op.
    """
    count = tf.shape(images)[0]
    offsets = tf.cast(offsets, tf.float32)
    ones, zeros = tf.ones((count,)), tf.zeros((count,))
    # Each row maps an output pixel (x, y) to the input pixel (x - dx, y - dy).
    transforms = tf.stack(
        [ones, zeros, -offsets[:, 0], zeros, ones, -offsets[:, 1], zeros, zeros], axis=1
    )
    return _transform(images, transforms, "NEAREST")


def rotate_zoom_and_shift(
    images: tf.Tensor, angles: tf.Tensor, scales: tf.Tensor, offsets: tf.Tensor | None = None
) -> tf.Tensor:
    """Rotate each image by angles[i] radians (counter-clockwise as displayed) and scale
    it by scales[i], both about its centre, then move it by offsets[i] = (dx, dy) pixels;
    bilinear sampling, black fill.

    One projective-transform op for all three: a second op for the shift would resample
    the whole batch again (whole-pixel shifts of a bilinear image are the same pixels).
    """
    height, width = tf.unstack(tf.cast(tf.shape(images)[1:3], tf.float32))
    centre_x, centre_y = (width - 1) / 2, (height - 1) / 2
    if offsets is None:
        offsets = tf.zeros((tf.shape(images)[0], 2))
    # Each row maps an output pixel back to its input pixel: p_in = R(-angle) (p_out - d
    # - c) / scale + c. Image rows grow downwards, hence the signs of the sine terms.
    cos, sin = tf.cos(angles) / scales, tf.sin(angles) / scales
    from_x = centre_x + tf.cast(offsets[:, 0], tf.float32)
    from_y = centre_y + tf.cast(offsets[:, 1], tf.float32)
    zeros = tf.zeros_like(angles)
    transforms = tf.stack(
        [
            cos,
            -sin,
            centre_x - cos * from_x + sin * from_y,
            sin,
            cos,
            centre_y - sin * from_x - cos * from_y,
            zeros,
            zeros,
        ],
        axis=1,
    )
    return _transform(images, transforms, "BILINEAR")


def erase_rectangles(images: tf.Tensor, seed: tf.Tensor, erasing: ErasingParams) -> tf.Tensor:
    """Random erasing (Zhong et al., 2017): with probability `erasing.probability`, one
    rectangle of each image, of random area and aspect ratio, is set to black.

    Written here rather than keras.layers.RandomErasing because that layer draws from a
    stateful SeedGenerator (a plain tensor seed is refused), which would break the
    per-batch stateless seeding that makes runs reproducible under tf.data.
    """
    count = tf.shape(images)[0]
    # Dynamic sizes: the shift's transform op leaves the static image shape unknown.
    height, width = tf.unstack(tf.cast(tf.shape(images)[1:3], tf.float32))
    area_seed, ratio_seed, top_seed, left_seed, apply_seed = tf.unstack(
        tf.random.experimental.stateless_split(seed, 5)
    )
    area = (
        height
        * width
        * tf.random.stateless_uniform((count,), area_seed, erasing.min_area, erasing.max_area)
    )
    log_ratio = math.log(erasing.max_aspect_ratio)
    ratio = tf.exp(tf.random.stateless_uniform((count,), ratio_seed, -log_ratio, log_ratio))
    # Rectangle sides in whole pixels, clipped to the image.
    box_height = tf.clip_by_value(tf.round(tf.sqrt(area * ratio)), 1.0, height)
    box_width = tf.clip_by_value(tf.round(tf.sqrt(area / ratio)), 1.0, width)
    top = tf.floor(tf.random.stateless_uniform((count,), top_seed) * (height - box_height + 1))
    left = tf.floor(tf.random.stateless_uniform((count,), left_seed) * (width - box_width + 1))
    erase = tf.random.stateless_uniform((count,), apply_seed) < erasing.probability
    rows = tf.range(height)[tf.newaxis, :]
    cols = tf.range(width)[tf.newaxis, :]
    in_rows = (rows >= top[:, tf.newaxis]) & (rows < (top + box_height)[:, tf.newaxis])
    in_cols = (cols >= left[:, tf.newaxis]) & (cols < (left + box_width)[:, tf.newaxis])
    mask = in_rows[:, :, tf.newaxis] & in_cols[:, tf.newaxis, :] & erase[:, tf.newaxis, tf.newaxis]
    return tf.where(mask[..., tf.newaxis], tf.zeros_like(images), images)


def augment_batch(images: tf.Tensor, seed: tf.Tensor, augment: AugmentParams) -> tf.Tensor:
    """Random rotation and zoom, shifts of up to ±shift_pixels, left-right flips and
    random erasing, each only if `augment` asks for it.

    `seed` is a shape-[2] int tensor; the same seed gives the same batch.
    Flips suit Fashion-MNIST (a mirrored shoe is a shoe) but never digits.
    """
    count = tf.shape(images)[0]
    # Split into more seeds leaves the first ones as they were (measured): adding an
    # augmentation does not change the draws of the others.
    shift_seed, flip_seed, erase_seed, angle_seed, scale_seed = tf.unstack(
        tf.random.experimental.stateless_split(seed, 5)
    )
    offsets = None
    if augment.shift_pixels:
        shift = augment.shift_pixels
        offsets = tf.random.stateless_uniform(
            (count, 2), shift_seed, minval=-shift, maxval=shift + 1, dtype=tf.int32
        )
    if augment.rotation_degrees or augment.zoom:
        limit = math.radians(augment.rotation_degrees)
        angles = tf.random.stateless_uniform((count,), angle_seed, -limit, limit)
        scales = tf.random.stateless_uniform(
            (count,), scale_seed, 1 - augment.zoom, 1 + augment.zoom
        )
        images = rotate_zoom_and_shift(images, angles, scales, offsets)
    elif offsets is not None:
        images = shift_images(images, offsets)
    if augment.horizontal_flip:
        flip = tf.random.stateless_uniform((count, 1, 1, 1), flip_seed) < 0.5
        images = tf.where(flip, tf.reverse(images, axis=[2]), images)
    if augment.random_erasing:
        images = erase_rectangles(images, erase_seed, augment.random_erasing)
    return images


def _with_options(dataset: tf.data.Dataset) -> tf.data.Dataset:
    """Shard by element across workers (the arrays are in memory, not in files), and
    switch tf.data's runtime autotuner off.

    The autotuner's background thread made Keras wait for it when an epoch's iterator
    was torn down: on our 2-core machines whole epochs stalled with every thread idle,
    and without it epochs were no slower (docs/benchmark.md). AUTOTUNE below then means
    TF's static defaults, plenty for slicing in-memory arrays.
    """
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    options.autotune.enabled = False
    return dataset.with_options(options)


def training_dataset(
    images: np.ndarray, labels: np.ndarray, batch_size: int, seed: int, augment: AugmentParams
) -> tf.data.Dataset:
    """Shuffled (differently each epoch, reproducibly), batched, augmented, prefetched."""
    dataset = tf.data.Dataset.from_tensor_slices((images, labels))
    dataset = dataset.shuffle(len(images), seed=seed, reshuffle_each_iteration=True)
    dataset = dataset.batch(batch_size)
    if augment.changes_images():
        # One int64 per batch, a new sequence each epoch, the same sequence each run.
        seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True)
        dataset = tf.data.Dataset.zip(dataset, seeds).map(
            lambda batch, draw: (
                augment_batch(batch[0], tf.stack([draw, tf.constant(seed, tf.int64)]), augment),
                batch[1],
            ),
            num_parallel_calls=tf.data.AUTOTUNE,
        )
    return _with_options(dataset.prefetch(tf.data.AUTOTUNE))


def evaluation_dataset(images: np.ndarray, labels: np.ndarray, batch_size: int) -> tf.data.Dataset:
    """In order, batched, no augmentation."""
    dataset = tf.data.Dataset.from_tensor_slices((images, labels)).batch(batch_size)
    return _with_options(dataset.prefetch(tf.data.AUTOTUNE))
