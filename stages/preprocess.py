"""Stage 2 — preprocess: IDX files → scaled, one-hot, train/val/test arrays.

Images become float32 in [0, 1] shaped N x 28 x 28 x 1; labels one-hot vectors. The
validation set is a stratified, seeded slice of the original training file, so the test
file stays untouched until the evaluate stage. Also writes how many images each split
holds (`dvc metrics show`), per class (`dvc plots show`), and a grid of sample inputs.
"""

from __future__ import annotations

import sys

import pandas as pd

from mnist_cnn.artifacts import DatasetPaths, atomic_dir, save_split, write_csv, write_json
from mnist_cnn.datasets import FILENAMES, IMAGE_SHAPE, NUM_CLASSES, spec_from_command_line
from mnist_cnn.figures import plot_image_grid
from mnist_cnn.idx import IdxFormatError, load_image_label_pair
from mnist_cnn.params import load_params
from mnist_cnn.preprocessing import (
    class_counts,
    first_per_class,
    normalize_images,
    one_hot,
    split_train_val,
    stratified_subset,
)


def main(argv: list[str] | None = None) -> int:
    spec = spec_from_command_line(argv, description=__doc__.splitlines()[0])
    params = load_params()
    settings, seed = params.preprocess, params.seed
    paths = DatasetPaths(spec.key)

    # Parse and validate the raw files.
    try:
        train_images, train_labels = load_image_label_pair(
            paths.raw / FILENAMES["train_images"],
            paths.raw / FILENAMES["train_labels"],
            IMAGE_SHAPE,
            NUM_CLASSES,
        )
        test_images, test_labels = load_image_label_pair(
            paths.raw / FILENAMES["test_images"],
            paths.raw / FILENAMES["test_labels"],
            IMAGE_SHAPE,
            NUM_CLASSES,
        )
    except (IdxFormatError, FileNotFoundError) as error:
        print(f"[preprocess] {spec.title}: {error}", file=sys.stderr)
        print(f"Fix: re-run `dvc repro -f download@{spec.key}`.", file=sys.stderr)
        return 1

    # Optional class-balanced subsets (quick experiments and tests use them).
    keep = stratified_subset(train_labels, settings.max_train_samples, seed)
    train_images, train_labels = train_images[keep], train_labels[keep]
    keep = stratified_subset(test_labels, settings.max_test_samples, seed)
    test_images, test_labels = test_images[keep], test_labels[keep]

    train_idx, val_idx = split_train_val(train_labels, settings.val_fraction, seed)
    splits = {
        "train": (train_images[train_idx], train_labels[train_idx]),
        "val": (train_images[val_idx], train_labels[val_idx]),
        "test": (test_images, test_labels),
    }
    with atomic_dir(paths.prepared) as staging:
        for split, (images, labels) in splits.items():
            save_split(staging, split, normalize_images(images), one_hot(labels))

    # How many images each split holds, in total and per class.
    write_json(
        paths.data_summary,
        {f"{split}_samples": len(labels) for split, (_, labels) in splits.items()},
    )
    counts = {
        split: class_counts(labels, spec.class_names) for split, (_, labels) in splits.items()
    }
    write_csv(paths.class_counts, pd.DataFrame(counts).rename_axis("class"), index=True)

    # A picture of what the network sees: one row of training inputs per class.
    images, labels = splits["train"]
    shown = first_per_class(labels, settings.samples_per_class)
    plot_image_grid(
        normalize_images(images[shown]),
        [spec.class_names[k] for k in labels[shown]],
        paths.samples,
        f"{spec.title}: training inputs, one row per class",
        columns=settings.samples_per_class,
    )
    print(
        f"[preprocess] {spec.title}: "
        + ", ".join(f"{split} {len(labels)}" for split, (_, labels) in splits.items())
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
