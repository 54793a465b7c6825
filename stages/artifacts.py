"""Where stage outputs live, and how they are written so none is ever half-written.

Every output is first written under a temporary name next to its final path and
then moved into place with os.replace, which is atomic on one file system. A
crash mid-write leaves at most a stray temporary, never a truncated output.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

import numpy as np

RAW_DIR = Path("data/raw")
PREPARED_DIR = Path("data/prepared")
MODELS_DIR = Path("models")
METRICS_DIR = Path("metrics")
PLOTS_DIR = Path("plots")

SPLITS = ("train", "val", "test")


def raw_dir(dataset: str) -> Path:
    return RAW_DIR / dataset


def prepared_dir(dataset: str) -> Path:
    return PREPARED_DIR / dataset


def model_path(dataset: str) -> Path:
    return MODELS_DIR / f"{dataset}.keras"


def plots_dir(dataset: str) -> Path:
    return PLOTS_DIR / dataset


@contextlib.contextmanager
def atomic_path(final: Path | str) -> Iterator[Path]:
    """Yield a temporary path; on success it replaces `final`, on error it is removed."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".tmp" + final.suffix,
                                   dir=final.parent)
    os.close(handle)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, final)
    finally:
        tmp_path.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_dir(final: Path | str) -> Iterator[Path]:
    """Yield an empty staging directory that replaces directory `final` on success."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".partial", dir=final.parent))
    try:
        yield staging
        if final.exists():
            shutil.rmtree(final)
        os.replace(staging, final)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def write_json(path: Path | str, data: dict) -> None:
    """Write JSON atomically, with a stable layout so git diffs stay readable."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2) + "\n")


def save_split(directory: Path, split: str, images: np.ndarray, labels: np.ndarray) -> None:
    # Plain .npy (not .npz): the format has no timestamps, so equal arrays give equal bytes.
    np.save(directory / f"{split}_images.npy", images, allow_pickle=False)
    np.save(directory / f"{split}_labels.npy", labels, allow_pickle=False)


def load_split(dataset: str, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Load prepared (images, one-hot labels) for one split; never unpickles."""
    directory = prepared_dir(dataset)
    images_file = directory / f"{split}_images.npy"
    labels_file = directory / f"{split}_labels.npy"
    for path in (images_file, labels_file):
        if not path.is_file():
            raise FileNotFoundError(
                f"{path} is missing: run `dvc repro preprocess@{dataset}` first"
            )
    images = np.load(images_file, allow_pickle=False)
    labels = np.load(labels_file, allow_pickle=False)
    if len(images) != len(labels):
        raise ValueError(f"{directory}: {split} has {len(images)} images but {len(labels)} labels")
    return images, labels
