"""Benchmark: the keras.io convnet as its users run it, our pipeline, time to accuracy.

Not a pipeline stage (timings are not reproducible outputs); run it after
`dvc repro preprocess` with `make bench`, `mnist-cnn-bench` or `python -m mnist_cnn.bench`.
It measures:

1. the matmul ceiling of this machine (4096² float32 and bfloat16 GFLOP/s);
2. the peer, each contender in a process of its own, in turns: (a) the keras.io
   "Simple MNIST convnet" as published (mnist_cnn/peer.py: NumPy arrays into `fit()`,
   float32, no determinism) against (b) our real train stage (`python -m stages.train`)
   building the same architecture and recipe from a params preset, in our default
   precision with our input pipeline and op determinism; both timed the same way, as
   the wall time of `fit()` over whole epochs, tracing and validation included;
3. the default model's images/s and achieved GFLOP/s against the ceiling, in float32
   and in bfloat16 (one process; the choice `precision: auto` makes);
4. time to accuracy: wall seconds (and epochs) until validation accuracy first reaches
   a target, for the previous default recipe and the current one, trained in turns
   with the train stage's own code (model, schedule, callbacks, input pipeline).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import keras
import tensorflow as tf
import yaml
from keras import layers

from mnist_cnn.artifacts import load_split
from mnist_cnn.datasets import NUM_CLASSES, get_spec
from mnist_cnn.input_pipeline import training_dataset
from mnist_cnn.model import build_model, compile_model
from mnist_cnn.params import (
    PARAMS_FILE,
    AugmentParams,
    Params,
    TrainParams,
    deep_merge,
    load_params,
)
from mnist_cnn.peer import BATCH_SIZE  # the keras.io script's; sections 2-3 train at it
from mnist_cnn.runtime import resolve_precision
from mnist_cnn.training import fit, make_deterministic

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
    "augment": AugmentParams.all_off(),
}


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


def seconds_for(model: keras.Model, data: tf.data.Dataset, steps: int) -> float:
    """Wall seconds to train `steps` batches of a tf.data pipeline (its shuffle buffer
    and augmentation inside the clock)."""
    started = time.perf_counter()
    model.fit(data.take(steps), epochs=1, shuffle=False, verbose=0)
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


# --- 2. The peer, each contender in its own process ---------------------------------

# Our train stage prints "... N epochs in S s (X images/s); ..." (stages/train.py).
STAGE_SPEED = re.compile(r"epochs in [\d.]+ s \((\d+) images/s\)")


def run_peer(dataset: str, epochs: int) -> float:
    """Images/s of the keras.io script (mnist_cnn/peer.py) in a fresh process."""
    command = [
        sys.executable,
        "-m",
        "mnist_cnn.peer",
        "--dataset",
        dataset,
        "--epochs",
        str(epochs),
    ]
    result = subprocess.run(command, capture_output=True, text=True, check=True)
    return float(json.loads(result.stdout.strip().splitlines()[-1])["images_per_second"])


def preset_params_file(raw_params: dict, dataset: str, epochs: int) -> dict:
    """params.yaml for the train stage with the keras.io preset for `dataset`."""
    train = deep_merge(raw_params["train"], {**KERAS_IO_PRESET, "epochs": epochs})
    train["early_stopping"] = {**train["early_stopping"], "enabled": False}
    return {**raw_params, "train": train, "datasets": {dataset: {"train": {}, "evaluate": {}}}}


def run_stage(dataset: str, raw_params: dict, epochs: int, project: Path) -> float:
    """Images/s of our real train stage with the keras.io preset, in a fresh process and
    a scratch directory (the prepared data linked in, nothing of the project written)."""
    with tempfile.TemporaryDirectory(prefix="bench-stage-") as scratch:
        Path(scratch, "data").symlink_to(project.resolve() / "data")
        params = preset_params_file(raw_params, dataset, epochs)
        Path(scratch, "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        result = subprocess.run(
            [sys.executable, "-m", "stages.train", dataset],
            cwd=scratch,
            env={**os.environ, "PYTHONPATH": str(project.resolve())},
            capture_output=True,
            text=True,
        )
        found = STAGE_SPEED.search(result.stdout)
        if result.returncode or not found:
            raise RuntimeError(
                f"the train stage failed:\n{(result.stdout + result.stderr)[-3000:]}"
            )
        return float(found.group(1))


# --- 4. Time to accuracy: previous default against current default ----------------

# The default recipe before the time-to-accuracy work (issue "Time to accuracy"), as
# changes laid over today's params.yaml. Its only augmentations were the ±2 px shifts (and
# flips for clothes): any added since is off without being named here.
PREVIOUS_DEFAULT = {
    "train": {
        "epochs": 15,
        "learning_rate": 0.002,
        "augment": {**AugmentParams.all_off(), "shift_pixels": 2},
    },
    "datasets": {
        "mnist": {"train": {}, "evaluate": {}},
        "fashion_mnist": {
            "train": {
                "augment": {"horizontal_flip": True},
                "epochs": 50,
                "model": {"convs_per_block": [1, 2, 2], "conv_dropout": 0.1},
            },
            "evaluate": {"test_time_shift_pixels": 0},
        },
    },
}
# Validation accuracies to time, per dataset. The issue asked for 99.5 % and 94.0 %; on this
# validation split neither MNIST recipe reached 99.5 % (the committed run peaked at
# 99.42 %), so MNIST is also timed to 99.3 %, which both reach.
TARGETS = {"mnist": (0.993, 0.995), "fashion_mnist": (0.94,)}


class TimeToTargets(keras.callbacks.Callback):
    """Record the wall time (and epoch) at which val_accuracy first reaches each target;
    stop training once it reached them all."""

    def __init__(self, targets: tuple[float, ...]):
        super().__init__()
        self.targets, self.seconds, self.epochs_run = targets, 0.0, 0
        self.reached: dict[float, tuple[float, int]] = {}

    def on_epoch_begin(self, epoch, logs=None):
        self._started = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.seconds += time.perf_counter() - self._started
        self.epochs_run = epoch + 1
        for target in self.targets:
            if target not in self.reached and logs["val_accuracy"] >= target:
                self.reached[target] = (self.seconds, epoch + 1)
        if len(self.reached) == len(self.targets):
            self.model.stop_training = True

    def describe(self) -> str:
        parts = []
        for target in self.targets:
            if target in self.reached:
                seconds, epoch = self.reached[target]
                parts.append(f"{target:.1%} in {seconds:.0f} s (epoch {epoch})")
            else:
                parts.append(f"{target:.1%} not reached")
        return f"{'; '.join(parts)}; {self.epochs_run} epochs in {self.seconds:.0f} s"


def time_to_accuracy(
    train: TrainParams, seed: int, data: dict, targets: tuple[float, ...]
) -> TimeToTargets:
    """Train like the train stage does (its own `fit`) and time the validation targets."""
    x_train = data["train"][0]
    keras.mixed_precision.set_global_policy(resolve_precision(train.precision))
    make_deterministic(seed)
    model = build_model(train.model, x_train.shape[1:], NUM_CLASSES)
    compile_model(model, train, math.ceil(len(x_train) / train.batch_size))
    timer = TimeToTargets(targets)
    with tempfile.TemporaryDirectory(prefix="bench-backup-") as backup:
        fit(
            model,
            train,
            seed,
            data["train"],
            data["val"],
            train.batch_size,
            Path(backup),
            extra_callbacks=(timer,),
            verbose=0,
        )
    return timer


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="mnist", help="dataset of sections 1-3")
    parser.add_argument(
        "--repeats", type=int, default=3, help="timed runs of each contender; medians reported"
    )
    parser.add_argument(
        "--peer-epochs", type=int, default=2, help="epochs of each peer/stage process"
    )
    parser.add_argument(
        "--time-to-accuracy",
        nargs="*",
        default=["mnist"],
        metavar="DATASET",
        help="datasets for section 4 (default: mnist; Fashion-MNIST takes ~30 min)",
    )
    parser.add_argument("--turns", type=int, default=1, help="previous/current turns per dataset")
    args = parser.parse_args(argv)

    raw_params = yaml.safe_load(PARAMS_FILE.read_text())
    params = load_params()
    spec = get_spec(args.dataset)
    default = params.train_for(spec.key)
    policy = resolve_precision(default.precision)
    try:
        data = {split: load_split(spec.key, split) for split in ("train", "val")}
    except FileNotFoundError as error:
        sys.exit(f"{error}\nrun `dvc repro preprocess@{spec.key}` first")
    x_train, y_train = data["train"]
    steps = len(x_train) // BATCH_SIZE
    print(
        f"[bench] {spec.title}, {os.cpu_count()} CPU(s), TF {tf.__version__}, "
        f"our precision: {policy}"
    )

    # 1. The machine.
    ceilings = {"float32": matmul_gflops(tf.float32), "mixed_bfloat16": matmul_gflops(tf.bfloat16)}
    print(
        f"matmul 4096² ceiling: {ceilings['float32']:.0f} GFLOP/s float32, "
        f"{ceilings['mixed_bfloat16']:.0f} GFLOP/s bfloat16"
    )

    # 2. The peer as its users run it, against our train stage; each in its own process.
    speeds: dict[str, list[float]] = {"peer": [], "stage": []}
    for _ in range(args.repeats):
        speeds["peer"].append(run_peer(spec.key, args.peer_epochs))
        speeds["stage"].append(run_stage(spec.key, raw_params, args.peer_epochs, Path.cwd()))
    peer, stage = (statistics.median(speeds[name]) for name in ("peer", "stage"))
    print(
        f"{args.peer_epochs} epochs per process, {args.repeats} processes each, in turns; "
        f"images/s of fit() incl. tracing and validation (median, all):"
    )
    print(f"(a) keras.io script as published, float32:        {peer:7.0f}  {speeds['peer']}")
    print(f"(b) our train stage, same convnet, {policy}: {stage:7.0f}  {speeds['stage']}")
    print(f"ratio (b)/(a): {stage / peer:.2f}x")

    # 3. The default model in both precisions: what `precision: auto` chooses between.
    steps_per_epoch = math.ceil(len(x_train) / BATCH_SIZE)
    models = {}
    for precision in ("float32", "mixed_bfloat16"):
        keras.mixed_precision.set_global_policy(precision)
        make_deterministic(params.seed)
        model = build_model(default.model, x_train.shape[1:], NUM_CLASSES)
        models[precision] = compile_model(model, default, steps_per_epoch)
    # Raw training steps on the stage's own input pipeline, not `training.fit`: this
    # section times steps against the matmul ceiling, without epochs or validation.
    pipeline = training_dataset(x_train, y_train, BATCH_SIZE, params.seed, default.augment)
    throughput = images_per_second(
        {precision: (model, pipeline) for precision, model in models.items()},
        steps,
        args.repeats,
    )
    for precision, model in models.items():
        speed, flops = throughput[precision], forward_flops(model)
        achieved = 3 * flops * speed / 1e9  # forward + 2x backward
        print(
            f"default model ({model.count_params():,} params, "
            f"{flops / 1e6:.1f} MFLOP/image forward), {precision}: "
            f"{speed:.0f} images/s = {achieved:.0f} GFLOP/s, "
            f"{achieved / ceilings[precision]:.0%} of the {precision} matmul ceiling"
        )

    # 4. Time to accuracy, previous and current default recipe in turns.
    previous = validate_overlay(raw_params, PREVIOUS_DEFAULT)
    for key in args.time_to_accuracy:
        split = {name: load_split(key, name) for name in ("train", "val")}
        print(f"time to validation accuracy, {get_spec(key).title}:")
        for turn in range(1, args.turns + 1):
            for name, recipe in (("previous", previous), ("current", params)):
                timer = time_to_accuracy(recipe.train_for(key), params.seed, split, TARGETS[key])
                print(f"  turn {turn}, {name} default: {timer.describe()}", flush=True)
    return 0


def validate_overlay(raw_params: dict, overlay: dict):
    """Params of `raw_params` with `overlay` laid over it (datasets replaced whole)."""
    merged = deep_merge(raw_params, {"train": overlay["train"]})
    merged["datasets"] = overlay["datasets"]
    return Params.model_validate(merged)


if __name__ == "__main__":
    sys.exit(main())
