"""Loading never executes stored code: no unpickling of arrays, Keras safe_mode for models."""

from __future__ import annotations

import re

import keras
import numpy as np
import pytest

from mnist_cnn.artifacts import load_split
from mnist_cnn.evaluation import load_trained_model
from tests.conftest import PROJECT_ROOT


def test_prepared_arrays_are_never_unpickled(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    directory = tmp_path / "data/prepared/toy"
    directory.mkdir(parents=True)
    np.save(
        directory / "test_images.npy", np.array([{"payload": 1}], dtype=object), allow_pickle=True
    )
    np.save(directory / "test_labels.npy", np.zeros((1, 10), dtype=np.float32))
    with pytest.raises(ValueError, match="allow_pickle=False"):
        load_split("toy", "test")


def test_missing_prepared_split_says_what_to_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError, match=r"run `dvc repro preprocess@toy` first"):
        load_split("toy", "train")


def test_models_with_code_are_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "models").mkdir()
    inputs = keras.Input((2,))
    outputs = keras.layers.Lambda(lambda x: x * 2)(inputs)
    keras.Model(inputs, outputs).save(tmp_path / "models/toy.keras")
    with pytest.raises(ValueError, match="safe_mode"):
        load_trained_model("toy")
    with pytest.raises(FileNotFoundError, match=r"run `dvc repro train@other` first"):
        load_trained_model("other")


def test_no_unsafe_loading_flags_in_project_code():
    """Ruff's security rules (S: shell=True, eval, exec, pickle, yaml.load) run in CI; these
    two library flags are beyond them: pickled arrays and models allowed to run code."""
    pattern = re.compile(r"allow_pickle\s*=\s*True|safe_mode\s*=\s*False")
    offenders = [
        f"{path.relative_to(PROJECT_ROOT)}:{number}: {line.strip()}"
        for folder in ("stages", "mnist_cnn")
        for path in sorted((PROJECT_ROOT / folder).glob("*.py"))
        for number, line in enumerate(path.read_text().splitlines(), start=1)
        if pattern.search(line)
    ]
    assert offenders == []
