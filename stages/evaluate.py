"""Stage 4 — evaluate: score the trained model once on the untouched test split.

Writes metrics/<dataset>.json (cross-entropy, accuracy, macro precision/recall/F1: one
readable row in `dvc metrics show`), plots/<dataset>/per_class.csv (the same per
class, a bar chart in `dvc plots`), the confusion-matrix rows for `dvc plots` (plots/<dataset>/confusion.csv),
a PNG of the matrix (counts and normalised) and a gallery of the most confident mistakes.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from sklearn.metrics import confusion_matrix, precision_recall_fscore_support  # noqa: E402

from stages.artifacts import atomic_path, load_split, model_path, plots_dir, write_json  # noqa: E402
from stages.datasets import get_spec  # noqa: E402
from stages.figures import plot_confusion_matrix, plot_image_grid  # noqa: E402
from stages.layers import FusedBatchNormalization  # noqa: E402
from stages.params import load_params  # noqa: E402

DIGITS = 6  # metrics are rounded so that reruns and diffs are not float noise


def classification_metrics(
    y_true: np.ndarray, y_pred: np.ndarray, class_names: tuple[str, ...]
) -> tuple[dict, dict]:
    """(summary, per class): accuracy and macro precision/recall/F1, then per class."""
    labels = list(range(len(class_names)))
    precision, recall, f1, support = precision_recall_fscore_support(
        y_true, y_pred, labels=labels, zero_division=0
    )
    summary = {
        "accuracy": round(float(np.mean(y_true == y_pred)), DIGITS),
        "macro_precision": round(float(precision.mean()), DIGITS),
        "macro_recall": round(float(recall.mean()), DIGITS),
        "macro_f1": round(float(f1.mean()), DIGITS),
    }
    per_class = {
        name: {
            "precision": round(float(precision[i]), DIGITS),
            "recall": round(float(recall[i]), DIGITS),
            "f1": round(float(f1[i]), DIGITS),
            "support": int(support[i]),
        }
        for i, name in enumerate(class_names)
    }
    return summary, per_class


def most_confident_mistakes(
    y_true: np.ndarray, y_pred: np.ndarray, confidence: np.ndarray, count: int
) -> np.ndarray:
    """Indices of up to `count` misclassified items, most confident first (stable order)."""
    wrong = np.flatnonzero(y_true != y_pred)
    return wrong[np.argsort(-confidence[wrong], kind="stable")][:count]


def load_trained_model(dataset: str, path: Path | None = None) -> keras.Model:
    """The trained model of `dataset` (or the .keras file at `path`)."""
    path = Path(path) if path else model_path(dataset)
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: run `dvc repro train@{dataset}` first")
    # safe_mode refuses models that would run arbitrary code (lambdas) on load.
    return keras.models.load_model(
        path, safe_mode=True,
        custom_objects={"FusedBatchNormalization": FusedBatchNormalization})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dataset", help="dataset key, e.g. mnist or fashion_mnist")
    args = parser.parse_args(argv)

    params = load_params()
    spec = get_spec(args.dataset)
    batch_size = params["evaluate"]["batch_size"]
    gallery_size = params["evaluate"]["gallery_size"]

    model = load_trained_model(spec.key)
    x_test, y_test = load_split(spec.key, "test")

    probabilities = model.predict(x_test, batch_size=batch_size, verbose=0)
    y_true = y_test.argmax(axis=1)
    y_pred = probabilities.argmax(axis=1)
    # Plain cross-entropy against the true labels: the training loss may be label-smoothed,
    # which would make test losses of differently trained models incomparable.
    loss = float(keras.ops.mean(keras.losses.categorical_crossentropy(y_test, probabilities)))

    summary, per_class = classification_metrics(y_true, y_pred, spec.class_names)
    metrics = {"loss": round(loss, DIGITS), **summary,
               "test_samples": int(len(y_true))}
    write_json(f"metrics/{spec.key}.json", metrics)
    with atomic_path(plots_dir(spec.key) / "per_class.csv") as tmp:
        pd.DataFrame.from_dict(per_class, orient="index").rename_axis("class").to_csv(tmp)

    # Confusion matrix: one row per test image for `dvc plots` (template: confusion),
    # and a PNG with class names.
    names = np.array(spec.class_names)
    with atomic_path(plots_dir(spec.key) / "confusion.csv") as tmp:
        pd.DataFrame({"actual": names[y_true], "predicted": names[y_pred]}).to_csv(
            tmp, index=False
        )
    matrix = confusion_matrix(y_true, y_pred, labels=list(range(len(names))))
    plot_confusion_matrix(matrix, spec.class_names, plots_dir(spec.key) / "confusion_matrix.png",
                          f"{spec.title}: test confusion matrix "
                          f"(accuracy {metrics['accuracy']:.2%})")
    # The model's most confident mistakes, to see what it gets wrong.
    confidence = probabilities.max(axis=1)
    mistakes = most_confident_mistakes(y_true, y_pred, confidence, gallery_size)
    plot_image_grid(
        x_test[mistakes],
        [f"true: {names[y_true[i]]}\npred: {names[y_pred[i]]} ({confidence[i]:.0%})"
         for i in mistakes],
        plots_dir(spec.key) / "misclassified.png",
        f"{spec.title}: the {len(mistakes)} most confident test mistakes", columns=8,
    )
    print(f"[evaluate] {spec.title}: test accuracy {metrics['accuracy']:.4f}, "
          f"loss {metrics['loss']:.4f} on {len(y_true)} images")
    return 0


if __name__ == "__main__":
    sys.exit(main())
