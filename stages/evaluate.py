"""Stage 4 — evaluate: score the trained model once on the untouched test split.

With `evaluate.test_time_shift_pixels` > 0 each image's softmax is averaged over its
shifted copies. The validation split is scored the same way (`val_accuracy`), so such
settings are chosen on validation, never on test.

Writes the test metrics (cross-entropy, accuracy, macro precision/recall/F1, and the
validation accuracy: one readable row in `dvc metrics show`), the same per class and the
confusion-matrix rows (CSV, for `dvc plots show`), a PNG of the matrix (counts and
normalised) and a gallery of the most confident mistakes.
"""

from __future__ import annotations

import sys

import numpy as np
import pandas as pd
from sklearn.metrics import confusion_matrix

from mnist_cnn.artifacts import DatasetPaths, load_split, write_csv, write_json
from mnist_cnn.datasets import spec_from_command_line
from mnist_cnn.evaluation import (
    DIGITS,
    classification_metrics,
    cross_entropy,
    load_trained_model,
    most_confident_mistakes,
    predict_probabilities,
    shift_offsets,
)
from mnist_cnn.figures import plot_confusion_matrix, plot_image_grid
from mnist_cnn.params import load_params


def main(argv: list[str] | None = None) -> int:
    spec = spec_from_command_line(argv, description=__doc__.splitlines()[0])
    settings = load_params().evaluate_for(spec.key)
    paths = DatasetPaths(spec.key)

    # Predict the test split with the trained model (averaged over shifted views if
    # test-time augmentation is on), and the validation split the same way: settings
    # such as the shifts are chosen on validation accuracy, never on the test's.
    model = load_trained_model(spec.key)
    x_test, y_test = load_split(spec.key, "test")
    x_val, y_val = load_split(spec.key, "val")
    shifts, batch_size = settings.test_time_shift_pixels, settings.batch_size
    probabilities = predict_probabilities(model, x_test, batch_size, shifts)
    y_true, y_pred = y_test.argmax(axis=1), probabilities.argmax(axis=1)
    val_pred = predict_probabilities(model, x_val, batch_size, shifts).argmax(axis=1)

    # Scores: overall (metrics) and per class (a bar chart in `dvc plots`).
    summary, per_class = classification_metrics(y_true, y_pred, spec.class_names)
    metrics = {
        "loss": round(cross_entropy(y_test, probabilities), DIGITS),
        **summary,
        "test_samples": len(y_true),
        "val_accuracy": round(float(np.mean(val_pred == y_val.argmax(axis=1))), DIGITS),
    }
    write_json(paths.test_metrics, metrics)
    write_csv(paths.per_class, per_class, index=True)

    # Confusion matrix: one row per test image for `dvc plots` (template: confusion),
    # and a PNG with class names.
    names = np.array(spec.class_names)
    write_csv(paths.confusion, pd.DataFrame({"actual": names[y_true], "predicted": names[y_pred]}))
    matrix = confusion_matrix(y_true, y_pred, labels=list(range(len(names))))
    plot_confusion_matrix(
        matrix,
        spec.class_names,
        paths.confusion_matrix,
        f"{spec.title}: test confusion matrix (accuracy {metrics['accuracy']:.2%})",
    )

    # The model's most confident mistakes, to see what it gets wrong.
    confidence = probabilities.max(axis=1)
    mistakes = most_confident_mistakes(y_true, y_pred, confidence, settings.gallery_size)
    plot_image_grid(
        x_test[mistakes],
        [
            f"true: {names[y_true[i]]}\npred: {names[y_pred[i]]} ({confidence[i]:.0%})"
            for i in mistakes
        ],
        paths.misclassified,
        f"{spec.title}: the {len(mistakes)} most confident test mistakes",
        columns=8,
    )
    print(
        f"[evaluate] {spec.title}: test accuracy {metrics['accuracy']:.4f}, "
        f"loss {metrics['loss']:.4f} on {len(y_true)} images, "
        f"{len(shift_offsets(shifts))} view(s) each; validation accuracy "
        f"{metrics['val_accuracy']:.4f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
