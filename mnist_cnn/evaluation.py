"""Evaluation helpers: test metrics from predictions, and loading a trained model.

Used by the evaluate stage (stages/evaluate.py) and by `predict`.
"""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import pandas as pd
from sklearn.metrics import classification_report

from mnist_cnn.artifacts import DatasetPaths
from mnist_cnn.datasets import IMAGE_SHAPE, NUM_CLASSES
from mnist_cnn.input_pipeline import shift_images
from mnist_cnn.layers import FusedBatchNormalization

DIGITS = 6  # metrics are rounded so that reruns and diffs are not float noise


def classification_metrics(
    y_true: np.ndarray, y_pred: np.ndarray, class_names: tuple[str, ...]
) -> tuple[dict, pd.DataFrame]:
    """(summary, per class): accuracy and macro precision/recall/F1, then a row per class."""
    report = classification_report(
        y_true,
        y_pred,
        labels=list(range(len(class_names))),
        target_names=list(class_names),
        output_dict=True,
        zero_division=0,
    )
    macro = report["macro avg"]
    summary = {
        "accuracy": round(float(np.mean(y_true == y_pred)), DIGITS),
        "macro_precision": round(float(macro["precision"]), DIGITS),
        "macro_recall": round(float(macro["recall"]), DIGITS),
        "macro_f1": round(float(macro["f1-score"]), DIGITS),
    }
    per_class = (
        pd.DataFrame({name: report[name] for name in class_names})
        .T.rename(columns={"f1-score": "f1"})
        .rename_axis("class")
    )
    per_class = per_class[["precision", "recall", "f1", "support"]].round(DIGITS)
    return summary, per_class.astype({"support": int})


def shift_offsets(shift_pixels: int) -> list[tuple[int, int]]:
    """Every (dx, dy) within ±shift_pixels, the unshifted (0, 0) first."""
    span = range(-shift_pixels, shift_pixels + 1)
    return sorted(((dx, dy) for dx in span for dy in span), key=lambda xy: xy != (0, 0))


def predict_probabilities(
    model: keras.Model, images: np.ndarray, batch_size: int, shift_pixels: int = 0
) -> np.ndarray:
    """Softmax outputs, averaged over shifted copies of each image when shift_pixels > 0.

    Test-time augmentation with the same kind of shifts the model trained on: a few
    ambiguous images are decided by the consensus of their neighbours' views.
    """
    total = np.zeros((len(images), model.output_shape[-1]), dtype=np.float64)
    offsets = shift_offsets(shift_pixels)
    for dx, dy in offsets:
        view = images
        if (dx, dy) != (0, 0):
            view = shift_images(images, np.full((len(images), 2), (dx, dy))).numpy()
        total += model.predict(view, batch_size=batch_size, verbose=0)
    return (total / len(offsets)).astype(np.float32)


def most_confident_mistakes(
    y_true: np.ndarray, y_pred: np.ndarray, confidence: np.ndarray, count: int
) -> np.ndarray:
    """Indices of up to `count` misclassified items, most confident first (stable order)."""
    wrong = np.flatnonzero(y_true != y_pred)
    return wrong[np.argsort(-confidence[wrong], kind="stable")][:count]


class ModelError(ValueError):
    """A model file that cannot be used; the message names the file and the problem."""


def load_trained_model(dataset: str, path: Path | None = None) -> keras.Model:
    """The trained model of `dataset` (or the .keras file at `path`), checked to take
    28 x 28 x 1 images and give NUM_CLASSES probabilities.

    A model file may come from someone else: safe_mode refuses any that would run
    Python code (a Lambda layer's bytecode) on load, and every other failure of Keras'
    loader becomes one ModelError line instead of a traceback.
    """
    path = Path(path) if path else DatasetPaths(dataset).model
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: run `dvc repro train@{dataset}` first")
    try:
        model = keras.models.load_model(
            path,
            safe_mode=True,
            custom_objects={"FusedBatchNormalization": FusedBatchNormalization},
        )
    except Exception as error:  # Keras raises TypeError, ValueError, OSError, KeyError...
        text = str(error).strip().splitlines()[0] if str(error).strip() else ""
        if "safe_mode" in str(error) or "lambda" in str(error).lower():
            raise ModelError(
                f"{path}: refused: the model holds Python code (e.g. a Lambda layer), "
                "which Keras' safe_mode does not load"
            ) from None
        raise ModelError(
            f"{path}: not a Keras model this project can load ({type(error).__name__}: {text[:200]})"
        ) from None
    expected_input = (None, *IMAGE_SHAPE, 1)
    if not isinstance(model.input_shape, tuple) or tuple(model.input_shape) != expected_input:
        raise ModelError(
            f"{path}: takes inputs of shape {model.input_shape}, not {expected_input} "
            "(28 x 28 grayscale images)"
        )
    if not isinstance(model.output_shape, tuple) or tuple(model.output_shape) != (
        None,
        NUM_CLASSES,
    ):
        raise ModelError(
            f"{path}: gives outputs of shape {model.output_shape}, not (None, {NUM_CLASSES}) "
            f"(one probability per class of {dataset})"
        )
    return model


def cross_entropy(y_onehot: np.ndarray, probabilities: np.ndarray) -> float:
    """Mean plain categorical cross-entropy against the true labels.

    Plain, not label-smoothed like the training loss: test losses of models trained
    with different smoothing stay comparable.
    """
    return float(keras.ops.mean(keras.losses.categorical_crossentropy(y_onehot, probabilities)))
