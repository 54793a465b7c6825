"""Benchmark: the keras.io convnet as its users run it, our pipeline, time to accuracy.

Not a pipeline stage (timings are not reproducible outputs); run it after
`dvc repro preprocess` with `make bench`, `mnist-cnn-bench` or `python -m mnist_cnn.tools.bench`.
It measures:

1. the matmul ceiling of this machine (4096² float32 and bfloat16 GFLOP/s);
2. the peer, each contender in a process of its own, in turns: (a) the keras.io
   "Simple MNIST convnet" as published (mnist_cnn/tools/peer.py: NumPy arrays into `fit()`,
   float32, no determinism) against (b) our real train stage (`python -m stages.train`)
   building the same architecture and recipe from a params preset, in our default
   precision with our input pipeline and op determinism; both timed the same way, as
   the wall time of `fit()` over whole epochs, tracing and validation included;
3. the default model's images/s and achieved GFLOP/s against the ceiling, in float32
   and in bfloat16 (one process; the choice `precision: auto` makes);
4. validation accuracy against wall-clock time: the peer's 15 published epochs (its own
   process) beside our default recipe (for `--dataset`), trained with the train stage's own
   code (model, schedule, callbacks, input pipeline); when ours first reaches the
   peer's final accuracy, against the peer's whole run.

It writes what it measured, with the machine, to docs/benchmark.json and the curves of
section 4 to docs/img/accuracy-vs-time.png (docs/benchmark.md links both). Not in
metrics/: `make restore` reads a change there as a finished pipeline run.
"""

from __future__ import annotations

import argparse
import datetime
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
import matplotlib.pyplot as plt  # headless: mnist_cnn/__init__.py sets MPLBACKEND=Agg
import tensorflow as tf
import yaml
from keras import layers

from mnist_cnn.artifacts import load_split, write_json
from mnist_cnn.datasets import NUM_CLASSES, get_spec
from mnist_cnn.figures import save_figure
from mnist_cnn.input_pipeline import training_dataset
from mnist_cnn.model import build_model, compile_model
from mnist_cnn.params import (
    PARAMS_FILE,
    AugmentParams,
    TrainParams,
    deep_merge,
    load_params,
)
from mnist_cnn.runtime import environment, resolve_precision
from mnist_cnn.tools.peer import (
    BATCH_SIZE,  # the keras.io script's; sections 2-3 train at it
    EpochClock,
)
from mnist_cnn.tools.report import seconds_to_reach
from mnist_cnn.training import fit, make_deterministic

WARMUP_STEPS = 10  # untimed batches before each model's timing
RESULT_FILE = Path("docs/benchmark.json")
FIGURE_FILE = Path("docs/img/accuracy-vs-time.png")
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


def run_peer(dataset: str, epochs: int) -> dict:
    """The keras.io script (mnist_cnn/tools/peer.py) in a fresh process: its JSON line (wall
    seconds, images/s, validation accuracy and clock at each epoch's end)."""
    command = [
        sys.executable,
        "-m",
        "mnist_cnn.tools.peer",
        "--dataset",
        dataset,
        "--epochs",
        str(epochs),
    ]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode:
        raise RuntimeError(f"the peer failed:\n{(result.stdout + result.stderr)[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


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


# --- 4. Validation accuracy against wall-clock time ------------------------------------

PEER_EPOCHS = 15  # the keras.io script's


def accuracy_over_time(train: TrainParams, seed: int, data: dict) -> EpochClock:
    """Train like the train stage does (its own `fit`: callbacks from params, input
    pipeline, determinism) and clock each epoch as the peer's script is clocked."""
    x_train = data["train"][0]
    keras.mixed_precision.set_global_policy(resolve_precision(train.precision))
    make_deterministic(seed)
    model = build_model(train.model, x_train.shape[1:], NUM_CLASSES)
    compile_model(model, train, math.ceil(len(x_train) / train.batch_size))
    clock = EpochClock()
    with tempfile.TemporaryDirectory(prefix="bench-backup-") as backup:
        fit(
            model,
            train,
            seed,
            data["train"],
            data["val"],
            train.batch_size,
            Path(backup),
            extra_callbacks=(clock,),
            verbose=0,
        )
    return clock


def plot_accuracy_against_time(curves: dict[str, dict], path: Path, title: str) -> None:
    """One line per contender: validation accuracy at the end of each epoch against the
    wall seconds since its training began; the peer's final accuracy as a dashed line."""
    figure, axis = plt.subplots(figsize=(7, 4.2))
    for label, curve in curves.items():
        accuracy = [100 * value for value in curve["val_accuracy"]]
        axis.plot(curve["epoch_seconds"], accuracy, marker="o", markersize=3, label=label)
    peer_final = 100 * next(iter(curves.values()))["val_accuracy"][-1]
    axis.axhline(
        peer_final, color="grey", linestyle="--", linewidth=0.8, label="keras.io convnet's final"
    )
    # From 3 points under the peer's final accuracy: the first epochs' climb would
    # squeeze the part where the curves meet.
    lowest = min(100 * value for curve in curves.values() for value in curve["val_accuracy"])
    axis.set_ylim(max(lowest, peer_final - 3.0) - 0.1, 100.0)
    axis.set_xlim(left=0)
    axis.set_xlabel("wall-clock seconds of training (validation included)")
    axis.set_ylabel("validation accuracy (%)")
    axis.set_title(title)
    axis.grid(alpha=0.3)
    axis.legend(loc="lower right")
    save_figure(figure, path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="mnist", help="dataset of sections 1-4")
    parser.add_argument(
        "--repeats", type=int, default=3, help="timed runs of each contender; medians reported"
    )
    parser.add_argument(
        "--peer-epochs", type=int, default=2, help="epochs of each peer/stage process"
    )
    parser.add_argument(
        "--result", type=Path, default=RESULT_FILE, help="where to write what was measured"
    )
    parser.add_argument(
        "--figure", type=Path, default=FIGURE_FILE, help="section 4's accuracy-against-time PNG"
    )
    parser.add_argument(
        "--skip-curves", action="store_true", help="sections 1-3 only (minutes, not half an hour)"
    )
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
        speeds["peer"].append(run_peer(spec.key, args.peer_epochs)["images_per_second"])
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

    result = {
        "date": datetime.date.today().isoformat(),
        "dataset": spec.key,
        "machine": {
            key: value
            for key, value in environment(policy, default.threads).items()
            if key in ("cpu", "cpu_flags", "cpus", "tensorflow", "keras", "precision")
        },
        "matmul_gflops": {name: round(value, 1) for name, value in ceilings.items()},
        "peer_vs_stage_images_per_second": {
            "epochs_per_process": args.peer_epochs,
            "peer": speeds["peer"],
            "stage": speeds["stage"],
        },
        "default_model_images_per_second": {k: round(v, 1) for k, v in throughput.items()},
    }

    # 4. Validation accuracy against time: the peer's published run, our default recipe.
    if not args.skip_curves:
        peer_curve = run_peer(spec.key, PEER_EPOCHS)
        ours = accuracy_over_time(default, params.seed, data)
        curves = {
            f"keras.io convnet ({PEER_EPOCHS} epochs)": peer_curve,
            f"our default ({default.epochs} epochs)": {
                "epoch_seconds": ours.seconds,
                "val_accuracy": ours.val_accuracy,
            },
        }
        peer_final = peer_curve["val_accuracy"][-1]
        reached = seconds_to_reach(curves[list(curves)[1]], peer_final)
        result["accuracy_over_time"] = {
            "peer": {key: peer_curve[key] for key in ("epoch_seconds", "val_accuracy")},
            "ours": curves[list(curves)[1]],
        }
        plot_accuracy_against_time(curves, args.figure, f"{spec.title}: accuracy against time")
        print(
            f"validation accuracy: the peer ends at {peer_final:.2%} after "
            f"{peer_curve['epoch_seconds'][-1]:.0f} s; ours reaches it "
            + (f"after {reached:.0f} s" if reached is not None else "never")
            + f" and ends at {ours.val_accuracy[-1]:.2%} after {ours.seconds[-1]:.0f} s"
        )
    write_json(args.result, result)
    print(f"[bench] wrote {args.result}" + ("" if args.skip_curves else f" and {args.figure}"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
