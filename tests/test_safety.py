"""Loading never executes stored code: no unpickling of arrays, Keras safe_mode for models."""

from __future__ import annotations

import re

import keras
import numpy as np
import pytest

from mnist_cnn.artifacts import load_split
from mnist_cnn.evaluation import load_trained_model
from mnist_cnn.tools.predict import main
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


def save_model(path, input_shape=(28, 28, 1), classes=10, code=False):
    inputs = keras.Input(input_shape)
    x = keras.layers.Flatten()(inputs)
    if code:
        x = keras.layers.Lambda(lambda t: t * 2)(x)
    keras.Model(inputs, keras.layers.Dense(classes, activation="softmax")(x)).save(path)
    return path


@pytest.mark.parametrize(
    "kind, message",
    [
        ("code", "refused: the model holds Python code"),
        ("classes", r"gives outputs of shape \(None, 20\), not \(None, 10\)"),
        ("shape", r"takes inputs of shape \(None, 32, 32, 1\)"),
        ("garbage", "not a Keras model this project can load"),
    ],
)
def test_bad_model_files_are_one_line_naming_the_file(tmp_path, capsys, kind, message):
    """`mnist-cnn-predict --model` with a model from elsewhere: one clear line, exit 2."""
    from PIL import Image

    model = tmp_path / f"{kind}.keras"
    if kind == "garbage":
        model.write_bytes(b"PK\x03\x04 not really a zip")
    else:
        save_model(
            model,
            input_shape=(32, 32, 1) if kind == "shape" else (28, 28, 1),
            classes=20 if kind == "classes" else 10,
            code=kind == "code",
        )
    digit = np.zeros((28, 28), dtype=np.uint8)
    digit[6:22, 12:16] = 255
    Image.fromarray(digit).save(tmp_path / "one.png")
    assert main(["--dataset", "mnist", "--model", str(model), str(tmp_path / "one.png")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(model) in err[0], err
    assert re.search(message, err[0]), err[0]


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
