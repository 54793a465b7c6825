"""Shared test helpers."""

from __future__ import annotations

import gzip
import hashlib
import os
from pathlib import Path

import numpy as np
import pytest

from stages.datasets import DATASETS

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

PROJECT_ROOT = Path(__file__).resolve().parent.parent

# Params laid over params.yaml by the integration tests: a class-balanced subset, one short
# epoch and a small model, through the same code path as a full run.
TINY_OVERRIDE = {
    "preprocess": {"max_train_samples": 3000, "max_test_samples": 500},
    "train": {"epochs": 1, "batch_size": 32, "lr_schedule": {"warmup_epochs": 0},
              "model": {"conv_filters": [16, 32], "convs_per_block": [1, 1],
                        "dense_units": [64]}},
    # The per-dataset sections of params.yaml override `train`: tiny them too.
    "datasets": {key: {"train": {"epochs": 1, "model": {"convs_per_block": [1, 1]}}}
                 for key in DATASETS},
}


def idx_bytes(array: np.ndarray) -> bytes:
    """Encode a uint8 array in the IDX format (what MNIST ships)."""
    array = np.asarray(array, dtype=np.uint8)
    header = bytes([0, 0, 0x08, array.ndim]) + np.array(array.shape, dtype=">u4").tobytes()
    return header + array.tobytes()


def write_gz(path: Path, payload: bytes, level: int = 9) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(payload, compresslevel=level, mtime=0))
    return path


def sha256(payload: bytes) -> str:
    return hashlib.sha256(payload).hexdigest()


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)
