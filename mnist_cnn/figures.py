"""Matplotlib PNGs for people reading the repo (dvc plots renders the same data interactively)."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt  # headless: mnist_cnn/__init__.py sets MPLBACKEND=Agg
import numpy as np
from matplotlib.ticker import MaxNLocator

from mnist_cnn.artifacts import atomic_path


def save_figure(figure: plt.Figure, path: Path | str) -> None:
    with atomic_path(path) as tmp:
        # No Software/date metadata: identical figures give identical bytes.
        figure.savefig(tmp, format="png", dpi=100, metadata={"Software": None})
    plt.close(figure)


def plot_training_curves(history: dict[str, list[float]], path: Path | str, title: str) -> None:
    """Loss, accuracy and learning rate per epoch, train vs validation. The epochs'
    numbers are `history["epoch"]` when given (a resumed run starts later), else 1, 2, …"""
    epochs = history.get("epoch") or np.arange(1, len(history["loss"]) + 1)
    panels = [("loss", "loss"), ("accuracy", "accuracy")]
    has_lr = "learning_rate" in history
    figure, axes = plt.subplots(1, 3 if has_lr else 2, figsize=(13 if has_lr else 9, 3.6))
    for axis in axes:
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))  # whole epochs only
    # A third axis, if any, holds the learning rate.
    for axis, (metric, label) in zip(axes, panels, strict=False):
        axis.plot(epochs, history[metric], marker="o", ms=3, label="train")
        axis.plot(epochs, history[f"val_{metric}"], marker="o", ms=3, label="validation")
        axis.set_xlabel("epoch")
        axis.set_ylabel(label)
        axis.grid(alpha=0.3)
        axis.legend()
    if has_lr:
        axes[2].plot(epochs, history["learning_rate"], marker="o", ms=3, color="tab:green")
        axes[2].set_yscale("log")
        axes[2].set_xlabel("epoch")
        axes[2].set_ylabel("learning rate")
        axes[2].grid(alpha=0.3)
    figure.suptitle(title)
    figure.tight_layout()
    save_figure(figure, path)


def _draw_matrix(axis, values, labels, class_names, title, vmax):
    """Draw one heat map with a label per cell; return the image (for a colour bar)."""
    image = axis.imshow(values, cmap="Blues", vmin=0, vmax=vmax)
    ticks = np.arange(len(class_names))
    axis.set_xticks(ticks, class_names, rotation=45, ha="right")
    axis.set_yticks(ticks, class_names)
    axis.set_xlabel("predicted")
    axis.set_ylabel("true")
    for row in range(values.shape[0]):
        for col in range(values.shape[1]):
            axis.text(
                col,
                row,
                labels[row][col],
                ha="center",
                va="center",
                fontsize=7,
                color="white" if values[row, col] > 0.5 * vmax else "black",
            )
    axis.set_title(title)
    return image


def plot_confusion_matrix(
    matrix: np.ndarray, class_names: tuple[str, ...], path: Path | str, title: str
) -> None:
    """Two panels: raw counts, and each row normalised to the true class (recall)."""
    rates = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    figure, (left, right) = plt.subplots(1, 2, figsize=(15, 6.5))
    counts = [[str(int(v)) for v in row] for row in matrix]
    _draw_matrix(left, matrix, counts, class_names, "counts", max(int(matrix.max()), 1))
    percents = [[f"{100 * v:.0f}" if v >= 0.005 else "" for v in row] for row in rates]
    image = _draw_matrix(right, rates, percents, class_names, "normalised by true class (%)", 1.0)
    figure.colorbar(image, ax=right, fraction=0.046, pad=0.04)
    figure.suptitle(title)
    figure.tight_layout()
    save_figure(figure, path)


def plot_image_grid(
    images: np.ndarray,
    captions: list[str],
    path: Path | str,
    title: str,
    columns: int,
) -> None:
    """Grayscale images (N x H x W [x 1], values in [0, 1]) in a grid with a caption each."""
    rows = max(1, int(np.ceil(len(images) / columns)))
    figure, axes = plt.subplots(
        rows, columns, figsize=(1.5 * columns, 1.75 * rows + 0.6), squeeze=False
    )
    for index, axis in enumerate(axes.flat):
        axis.axis("off")
        if index >= len(images):
            continue
        axis.imshow(np.squeeze(images[index]), cmap="gray", vmin=0, vmax=1)
        axis.set_title(captions[index], fontsize=7)
    figure.suptitle(title)
    figure.tight_layout()
    save_figure(figure, path)
