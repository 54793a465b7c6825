"""Stage 2 — preprocess: IDX files → scaled, one-hot, train/val/test arrays.

Images become float32 in [0, 1] shaped N x 28 x 28 x 1; labels become one-hot
float32 vectors. The validation set is a stratified, seeded slice of the original
training file, so the test file stays untouched until the evaluate stage.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np
import pandas as pd
from sklearn.model_selection import train_test_split

from stages.artifacts import atomic_dir, atomic_path, plots_dir, prepared_dir, raw_dir, save_split, write_json
from stages.datasets import FILENAMES, IMAGE_SHAPE, NUM_CLASSES, get_spec
from stages.figures import plot_image_grid
from stages.idx import IdxFormatError, load_image_label_pair
from stages.params import load_params


def normalize_images(images: np.ndarray) -> np.ndarray:
    """uint8 N x H x W pixels (0-255) → float32 N x H x W x 1 in [0, 1].

    The one place pixel scaling is defined: training, evaluation and any later
    inference must all go through it.
    """
    return (images.astype(np.float32) / 255.0)[..., np.newaxis]


def one_hot(labels: np.ndarray, num_classes: int = NUM_CLASSES) -> np.ndarray:
    return np.eye(num_classes, dtype=np.float32)[labels]


def stratified_subset(labels: np.ndarray, size: int | None, seed: int) -> np.ndarray:
    """Indices of a class-balanced subset of `size` items (all indices if size is None)."""
    indices = np.arange(len(labels))
    if size is None or size >= len(labels):
        return indices
    subset, _ = train_test_split(indices, train_size=size, stratify=labels, random_state=seed)
    return np.sort(subset)


def split_train_val(
    labels: np.ndarray, val_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Stratified, seeded (train indices, validation indices)."""
    indices = np.arange(len(labels))
    train_idx, val_idx = train_test_split(
        indices, test_size=val_fraction, stratify=labels, random_state=seed
    )
    return np.sort(train_idx), np.sort(val_idx)


def first_per_class(labels: np.ndarray, per_class: int, num_classes: int = NUM_CLASSES) -> np.ndarray:
    """Indices of the first `per_class` items of each class, class 0 first."""
    return np.concatenate([np.flatnonzero(labels == k)[:per_class] for k in range(num_classes)])


def class_counts(labels: np.ndarray, class_names: tuple[str, ...]) -> dict[str, int]:
    counts = np.bincount(labels, minlength=len(class_names))
    return {name: int(count) for name, count in zip(class_names, counts)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dataset", help="dataset key, e.g. mnist or fashion_mnist")
    args = parser.parse_args(argv)

    params = load_params()
    spec = get_spec(args.dataset)
    settings = params["preprocess"]
    seed = params["seed"]
    source = raw_dir(spec.key)

    # Parse and validate the raw files.
    try:
        train_images, train_labels = load_image_label_pair(
            source / FILENAMES["train_images"], source / FILENAMES["train_labels"],
            IMAGE_SHAPE, NUM_CLASSES,
        )
        test_images, test_labels = load_image_label_pair(
            source / FILENAMES["test_images"], source / FILENAMES["test_labels"],
            IMAGE_SHAPE, NUM_CLASSES,
        )
    except (IdxFormatError, FileNotFoundError) as error:
        print(f"[preprocess] {spec.title}: {error}", file=sys.stderr)
        print(f"Fix: re-run `dvc repro -f download@{spec.key}`.", file=sys.stderr)
        return 1

    # Optional class-balanced subsets (quick experiments and tests use them).
    keep = stratified_subset(train_labels, settings["max_train_samples"], seed)
    train_images, train_labels = train_images[keep], train_labels[keep]
    keep = stratified_subset(test_labels, settings["max_test_samples"], seed)
    test_images, test_labels = test_images[keep], test_labels[keep]

    train_idx, val_idx = split_train_val(train_labels, settings["val_fraction"], seed)
    splits = {
        "train": (train_images[train_idx], train_labels[train_idx]),
        "val": (train_images[val_idx], train_labels[val_idx]),
        "test": (test_images, test_labels),
    }

    with atomic_dir(prepared_dir(spec.key)) as staging:
        for split, (images, labels) in splits.items():
            save_split(staging, split, normalize_images(images), one_hot(labels))

    # How many images each split holds (`dvc metrics show`), and per class (`dvc plots`).
    summary = {f"{split}_samples": int(len(labels)) for split, (_, labels) in splits.items()}
    write_json(f"metrics/{spec.key}_data.json", summary)
    counts = pd.DataFrame({split: class_counts(labels, spec.class_names)
                           for split, (_, labels) in splits.items()}).rename_axis("class")
    with atomic_path(plots_dir(spec.key) / "class_counts.csv") as tmp:
        counts.to_csv(tmp)

    # A picture of what the network sees: one row of training inputs per class.
    per_class = settings["samples_per_class"]
    images, labels = splits["train"]
    shown = first_per_class(labels, per_class)
    plot_image_grid(normalize_images(images[shown]), [spec.class_names[k] for k in labels[shown]],
                    plots_dir(spec.key) / "samples.png",
                    f"{spec.title}: training inputs, one row per class", columns=per_class)
    print(f"[preprocess] {spec.title}: " + ", ".join(
        f"{split} {len(labels)}" for split, (_, labels) in splits.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
