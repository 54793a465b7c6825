"""Benchmark: our training pipeline against the keras.io "Simple MNIST convnet".

Not a pipeline stage (timings are not reproducible outputs); run it after
`dvc repro preprocess@mnist` with `make bench`, `mnist-cnn-bench` or
`python -m mnist_cnn.bench`. In one
process, on the same prepared training split, it measures:

1. the matmul ceiling of this machine (4096² float32 and bfloat16 GFLOP/s);
2. (a) the keras.io convnet exactly as published (NumPy input, float32, batch 128)
   against (b) the same architecture built by our model code from a params preset and
   fed by our train stage's input pipeline and precision, for the same number of steps
   (one epoch of full batches by default), timed in turns, the median of 3 runs each:
   images/s of each and their ratio;
3. the default model's images/s and achieved GFLOP/s against the ceiling, in float32
   and in bfloat16;
4. time-to-accuracy: training seconds until validation accuracy first reaches a target,
   for (a) and for the default model with its real schedule.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import time

import keras
import tensorflow as tf
from keras import layers

from mnist_cnn.artifacts import load_split
from mnist_cnn.datasets import NUM_CLASSES, get_spec
from mnist_cnn.input_pipeline import evaluation_dataset, training_dataset
from mnist_cnn.model import build_model, compile_model
from mnist_cnn.params import TrainParams, deep_merge, load_params
from mnist_cnn.runtime import resolve_precision
from mnist_cnn.training import make_deterministic

BATCH_SIZE = 128  # keras.io's
WARMUP_STEPS = 10  # untimed batches before each model's timing
# The keras.io convnet and its training recipe expressed as our params: two conv blocks
# without batch-norm, "valid" convs with bias + ReLU, no dropout after the pools, dropout
# 0.5 before the softmax, Adam at Keras' default rate, plain cross-entropy, and no
# augmentation (the published script has none), so (a) and (b) do the same work.
KERAS_IO_PRESET = {
    "model": {
        "conv_filters": [32, 64],
        "convs_per_block": [1, 1],
        "kernel_size": 3,
        "padding": "valid",
        "batch_norm": False,
        "batch_norm_momentum": 0.99,
        "conv_dropout": 0.0,
        "dense_units": [],
        "dense_dropout": 0.5,
    },
    "optimizer": "adam",
    "learning_rate": 0.001,
    "label_smoothing": 0.0,
    "lr_schedule": {"name": "constant", "warmup_epochs": 0},
    "augment": {"shift_pixels": 0, "horizontal_flip": False},
}


def preset_params(train_params: TrainParams) -> TrainParams:
    """`train_params` with the keras.io preset laid over it."""
    return TrainParams.model_validate(deep_merge(train_params.model_dump(), KERAS_IO_PRESET))


def keras_io_convnet() -> keras.Model:
    """https://keras.io/examples/vision/mnist_convnet/ as published."""
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


def forward_flops(model: keras.Model) -> int:
    """Multiply-adds ×2 of the conv and dense layers for one image (the rest is small)."""
    flops = 0
    for layer in model.layers:
        if isinstance(layer, layers.Conv2D):
            _, height, width, channels_out = layer.output.shape
            kernel_h, kernel_w = layer.kernel_size
            flops += 2 * height * width * channels_out * kernel_h * kernel_w * layer.input.shape[-1]
        elif isinstance(layer, layers.Dense):
            flops += 2 * layer.input.shape[-1] * layer.units
    return flops


def matmul_gflops(dtype: tf.DType, size: int = 4096, repeats: int = 5) -> float:
    a = tf.random.stateless_uniform((size, size), seed=(1, 2), dtype=tf.float32)
    a = tf.cast(a, dtype)
    product = tf.function(lambda x: tf.matmul(x, x))
    product(a).numpy()  # warm-up (and kernel selection)
    started = time.perf_counter()
    for _ in range(repeats):
        product(a).numpy()
    return 2 * size**3 * repeats / (time.perf_counter() - started) / 1e9


def fit(model: keras.Model, data, **fit_args) -> keras.callbacks.History:
    """`model.fit` on either input: a (x, y) NumPy pair in keras.io's batches, or a
    tf.data pipeline that batches and shuffles itself."""
    if isinstance(data, tuple):
        return model.fit(*data, batch_size=BATCH_SIZE, **fit_args)
    return model.fit(data, shuffle=False, **fit_args)


def first_batches(data, steps: int):
    """The first `steps` batches of a NumPy pair or a tf.data pipeline."""
    if isinstance(data, tuple):
        return tuple(array[: steps * BATCH_SIZE] for array in data)
    return data.take(steps)


def seconds_for(model: keras.Model, data, steps: int) -> float:
    """Wall seconds to train `steps` batches of `data` (a tf.data pipeline pays for its
    shuffle buffer and augmentation inside the clock)."""
    started = time.perf_counter()
    fit(model, first_batches(data, steps), epochs=1, verbose=0)
    return time.perf_counter() - started


def images_per_second(runs: dict[str, tuple], steps: int, repeats: int) -> dict[str, float]:
    """Median images/s of each (model, data) in `runs`, timed in turns.

    Turns (a, b, a, b, ...) give every contender the same share of a virtual machine
    whose speed drifts; the median of the repeats ignores a disturbed one.
    """
    for model, data in runs.values():
        seconds_for(model, data, WARMUP_STEPS)  # tracing and kernel selection, off the clock
    seconds: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(repeats):
        for name, (model, data) in runs.items():
            seconds[name].append(seconds_for(model, data, steps))
    return {name: steps * BATCH_SIZE / statistics.median(times) for name, times in seconds.items()}


class StopAtAccuracy(keras.callbacks.Callback):
    """Stop when val_accuracy first reaches `target`; remember the training time."""

    def __init__(self, target: float):
        super().__init__()
        self.target, self.seconds, self.training_seconds = target, None, 0.0

    def on_epoch_begin(self, epoch, logs=None):
        self._started = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.training_seconds += time.perf_counter() - self._started
        if self.seconds is None and logs["val_accuracy"] >= self.target:
            self.seconds, self.epoch = self.training_seconds, epoch + 1
            self.model.stop_training = True


def time_to_accuracy(model, train_data, val_data, target, max_epochs) -> str:
    stopper = StopAtAccuracy(target)
    fit(
        model,
        train_data,
        epochs=max_epochs,
        verbose=0,
        validation_data=val_data,
        callbacks=[stopper],
    )
    if stopper.seconds is None:
        return f"not reached in {max_epochs} epochs ({stopper.training_seconds:.0f} s)"
    return f"{stopper.seconds:.0f} s (epoch {stopper.epoch})"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="mnist")
    parser.add_argument(
        "--steps",
        type=int,
        default=None,
        help="timed training batches (default: one epoch of full batches)",
    )
    parser.add_argument(
        "--repeats", type=int, default=3, help="timed runs of each model; the median is reported"
    )
    parser.add_argument("--target-accuracy", type=float, default=0.99)
    parser.add_argument(
        "--max-epochs", type=int, default=8, help="time-to-accuracy gives up after this many epochs"
    )
    parser.add_argument("--skip-time-to-accuracy", action="store_true")
    args = parser.parse_args(argv)

    params = load_params()
    spec = get_spec(args.dataset)
    default = params.train_for(spec.key)
    preset = preset_params(default)
    policy = resolve_precision(default.precision)
    try:
        x_train, y_train = load_split(spec.key, "train")
        x_val, y_val = load_split(spec.key, "val")
    except FileNotFoundError as error:
        sys.exit(f"{error}\nrun `dvc repro preprocess@{spec.key}` first")
    full_batches = len(x_train) // BATCH_SIZE
    steps = min(args.steps or full_batches, full_batches)
    steps_per_epoch = math.ceil(len(x_train) / BATCH_SIZE)

    def pipeline(train_params):
        return training_dataset(x_train, y_train, BATCH_SIZE, params.seed, train_params.augment)

    def ours(train_params, precision=policy):
        keras.mixed_precision.set_global_policy(precision)
        make_deterministic(params.seed)
        model = build_model(train_params.model, x_train.shape[1:], NUM_CLASSES)
        return compile_model(model, train_params, steps_per_epoch)

    def published():
        keras.mixed_precision.set_global_policy("float32")
        make_deterministic(params.seed)
        return keras_io_convnet()

    print(
        f"[bench] {spec.title}, median of {args.repeats} × {steps} steps of batch {BATCH_SIZE}, "
        f"{os.cpu_count()} CPU(s), TF {tf.__version__}, our precision: {policy}"
    )
    ceilings = {"float32": matmul_gflops(tf.float32), "mixed_bfloat16": matmul_gflops(tf.bfloat16)}
    print(
        f"matmul 4096² ceiling: {ceilings['float32']:.0f} GFLOP/s float32, "
        f"{ceilings['mixed_bfloat16']:.0f} GFLOP/s bfloat16"
    )

    baseline_model, preset_model = published(), ours(preset)
    if baseline_model.count_params() != preset_model.count_params():
        raise RuntimeError("the params preset no longer builds the keras.io convnet")
    speeds = images_per_second(
        {"a": (baseline_model, (x_train, y_train)), "b": (preset_model, pipeline(preset))},
        steps,
        args.repeats,
    )
    baseline, pipelined = speeds["a"], speeds["b"]
    print(f"(a) keras.io convnet, NumPy input, float32:         {baseline:7.0f} images/s")
    print(
        f"(b) same convnet ({preset_model.count_params():,} params), our input pipeline, "
        f"{policy}: {pipelined:7.0f} images/s"
    )
    print(f"ratio (b)/(a): {pipelined / baseline:.2f}x")

    # The default model in both precisions: what `precision: auto` chooses between.
    models = {precision: ours(default, precision) for precision in ("float32", "mixed_bfloat16")}
    speeds = images_per_second(
        {precision: (model, pipeline(default)) for precision, model in models.items()},
        steps,
        args.repeats,
    )
    for precision, model in models.items():
        speed, flops = speeds[precision], forward_flops(model)
        achieved = 3 * flops * speed / 1e9  # forward + 2x backward
        print(
            f"default model ({model.count_params():,} params, "
            f"{flops / 1e6:.1f} MFLOP/image forward), {precision}: "
            f"{speed:.0f} images/s = {achieved:.0f} GFLOP/s, "
            f"{achieved / ceilings[precision]:.0%} of the {precision} matmul ceiling; "
            f"{len(x_train) / speed:.0f} s of compute per epoch"
        )

    if not args.skip_time_to_accuracy:
        val_numpy = (x_val, y_val)
        print(f"time to {args.target_accuracy:.2%} validation accuracy:")
        print(
            "  (a) keras.io convnet: "
            + time_to_accuracy(
                published(), (x_train, y_train), val_numpy, args.target_accuracy, args.max_epochs
            )
        )
        print(
            "  default model:        "
            + time_to_accuracy(
                ours(default),
                pipeline(default),
                evaluation_dataset(x_val, y_val, 1000),
                args.target_accuracy,
                args.max_epochs,
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
