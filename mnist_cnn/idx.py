"""Read the IDX format that MNIST and Fashion-MNIST ship in, refusing anything malformed.

IDX layout: two zero bytes, a type code (0x08 = unsigned byte), the number of
dimensions, one big-endian uint32 per dimension, then the values row-major.
"""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import numpy as np

UNSIGNED_BYTE = 0x08


class IdxFormatError(ValueError):
    """An IDX file is malformed or does not hold what the dataset needs."""


def parse_idx(data: bytes, name: str = "<bytes>") -> np.ndarray:
    """Parse IDX bytes into a uint8 array shaped as the header says."""
    if len(data) < 4:
        raise IdxFormatError(f"{name}: only {len(data)} bytes, too short for an IDX header")
    if data[0] != 0 or data[1] != 0:
        raise IdxFormatError(
            f"{name}: bad magic number {data[:4].hex()}: an IDX file starts with two zero bytes"
        )
    if data[2] != UNSIGNED_BYTE:
        raise IdxFormatError(
            f"{name}: unsupported IDX type code 0x{data[2]:02x}; expected 0x08 (unsigned byte)"
        )
    ndim = data[3]
    if ndim == 0:
        raise IdxFormatError(f"{name}: header declares zero dimensions")
    header_size = 4 + 4 * ndim
    if len(data) < header_size:
        raise IdxFormatError(f"{name}: truncated header ({len(data)} of {header_size} bytes)")
    shape = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    expected = int(np.prod(shape, dtype=np.int64))
    actual = len(data) - header_size
    if actual != expected:
        raise IdxFormatError(
            f"{name}: header promises shape {shape} ({expected} values) "
            f"but the file holds {actual} values"
        )
    return np.frombuffer(data, dtype=np.uint8, offset=header_size).reshape(shape)


def read_idx_gz(path: Path | str) -> np.ndarray:
    """Decompress and parse one .gz IDX file."""
    path = Path(path)
    try:
        with gzip.open(path, "rb") as handle:
            data = handle.read()
    except (OSError, EOFError, zlib.error) as error:
        raise IdxFormatError(f"{path}: cannot decompress ({error})") from error
    return parse_idx(data, str(path))


def check_images(images: np.ndarray, name: str, image_shape: tuple[int, int]) -> np.ndarray:
    if images.ndim != 3 or images.shape[1:] != image_shape:
        raise IdxFormatError(
            f"{name}: expected images shaped N x {image_shape[0]} x {image_shape[1]}, "
            f"got {images.shape}"
        )
    return images


def check_labels(labels: np.ndarray, name: str, num_classes: int) -> np.ndarray:
    if labels.ndim != 1:
        raise IdxFormatError(f"{name}: expected a 1-D label vector, got shape {labels.shape}")
    if labels.size and labels.max() >= num_classes:
        bad = int(labels.max())
        raise IdxFormatError(f"{name}: label {bad} outside 0..{num_classes - 1}")
    return labels


def load_image_label_pair(
    images_path: Path, labels_path: Path, image_shape: tuple[int, int], num_classes: int
) -> tuple[np.ndarray, np.ndarray]:
    """Read matching image and label files and check they agree."""
    images = check_images(read_idx_gz(images_path), str(images_path), image_shape)
    labels = check_labels(read_idx_gz(labels_path), str(labels_path), num_classes)
    if len(images) != len(labels):
        raise IdxFormatError(
            f"{images_path} holds {len(images)} images but {labels_path} holds {len(labels)} labels"
        )
    return images, labels
