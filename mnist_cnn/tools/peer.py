"""The peer we measure ourselves against, run the way its own users run it.

keras.io's "Simple MNIST convnet" (https://keras.io/examples/vision/mnist_convnet/):
two conv/pool blocks, dropout, softmax; Adam, batch 128, `validation_split=0.1`, NumPy
arrays straight into `fit()`, float32, no seeds and no determinism settings. The only
departure is where the images come from: the published script downloads them with
`keras.datasets.mnist.load_data()`, which cannot reach its host here, so this reads
the same 60 000 training images from the pipeline's downloaded files (data/raw/).

`python -m mnist_cnn.tools.peer --epochs 2` prints one JSON line: the wall time of `fit()`
(tracing and validation included, as a user timing the script sees it), the images per
second that makes, and each epoch's validation accuracy with the wall time at its end
(a clock read once per epoch: nothing the script does changes). The benchmark
(mnist_cnn/tools/bench.py) starts it in a process of its own, like a user would.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import keras
import numpy as np
from keras import layers

from mnist_cnn.artifacts import DatasetPaths
from mnist_cnn.datasets import FILENAMES, IMAGE_SHAPE, NUM_CLASSES, get_spec
from mnist_cnn.idx import load_image_label_pair

BATCH_SIZE = 128  # the script's
VALIDATION_SPLIT = 0.1  # the script's


def keras_io_convnet() -> keras.Model:
    """The published model, compiled as published."""
    model = keras.Sequential(
        [
            keras.Input(shape=(28, 28, 1)),
            layers.Conv2D(32, kernel_size=(3, 3), activation="relu"),
            layers.MaxPooling2D(pool_size=(2, 2)),
            layers.Conv2D(64, kernel_size=(3, 3), activation="relu"),
            layers.MaxPooling2D(pool_size=(2, 2)),
            layers.Flatten(),
            layers.Dropout(0.5),
            layers.Dense(NUM_CLASSES, activation="softmax"),
        ]
    )
    model.compile(loss="categorical_crossentropy", optimizer="adam", metrics=["accuracy"])
    return model


class EpochClock(keras.callbacks.Callback):
    """Seconds since training began at the end of each epoch (validation included), and
    that epoch's validation accuracy: one point per epoch of accuracy against time."""

    def __init__(self):
        super().__init__()
        self.seconds: list[float] = []
        self.val_accuracy: list[float] = []

    def on_train_begin(self, logs=None):
        self._started = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.seconds.append(round(time.perf_counter() - self._started, 2))
        self.val_accuracy.append(float(logs["val_accuracy"]))


def published_inputs(images: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The script's preprocessing: scale to [0, 1], add the channel axis, one-hot labels."""
    x = np.expand_dims(images.astype("float32") / 255, -1)
    return x, keras.utils.to_categorical(labels, NUM_CLASSES)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="mnist")
    parser.add_argument("--epochs", type=int, default=15, help="the script's default: 15")
    args = parser.parse_args(argv)
    raw = DatasetPaths(get_spec(args.dataset).key).raw
    images, labels = load_image_label_pair(
        raw / FILENAMES["train_images"], raw / FILENAMES["train_labels"], IMAGE_SHAPE, NUM_CLASSES
    )
    x, y = published_inputs(images, labels)

    model = keras_io_convnet()
    clock = EpochClock()
    started = time.perf_counter()
    model.fit(
        x,
        y,
        batch_size=BATCH_SIZE,
        epochs=args.epochs,
        validation_split=VALIDATION_SPLIT,
        callbacks=[clock],
        verbose=2,
    )
    seconds = time.perf_counter() - started
    trained = args.epochs * round(len(x) * (1 - VALIDATION_SPLIT))
    result = {
        "seconds": round(seconds, 2),
        "images_per_second": round(trained / seconds, 1),
        "val_accuracy": clock.val_accuracy,
        "epoch_seconds": clock.seconds,
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
