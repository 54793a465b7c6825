"""Stage 3 — train: fit the CNN on the prepared train split, select on the validation split.

Reads params `seed`, `train` and any per-dataset override in `datasets.<name>.train`.
Writes the model (models/<dataset>.keras), one row of metrics per epoch
(plots/<dataset>/history.csv, for `dvc plots`), a PNG of the curves, and a small
summary (metrics/<dataset>_training.json). Under a multi-worker strategy every worker trains,
and only the chief writes.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # hide TF's C++ info/warning chatter

import keras  # noqa: E402
import pandas as pd  # noqa: E402
import tensorflow as tf  # noqa: E402

from stages.artifacts import atomic_path, load_split, model_path, plots_dir, write_json  # noqa: E402
from stages.datasets import NUM_CLASSES, get_spec  # noqa: E402
from stages.figures import plot_training_curves  # noqa: E402
from stages.input_pipeline import evaluation_dataset, training_dataset  # noqa: E402
from stages.model import build_model, compile_model, save_model  # noqa: E402
from stages.params import load_params, train_params_for  # noqa: E402
from stages.runtime import make_distribution, set_precision  # noqa: E402


# Where BackupAndRestore keeps interrupted training state (git-ignored, not a DVC output,
# so DVC does not delete it when the stage re-runs).
BACKUP_DIR = Path("checkpoints")


def make_deterministic(seed: int) -> None:
    """Seed Python, NumPy and TF, and ask TF for deterministic kernels.

    Same params + same seed + same machine ⇒ same weights and metrics.
    """
    keras.utils.set_random_seed(seed)
    tf.config.experimental.enable_op_determinism()


class LearningRateLogger(keras.callbacks.Callback):
    """Put the learning rate each epoch actually trained with into its logs."""

    def on_epoch_begin(self, epoch, logs=None):
        self._rate = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["learning_rate"] = self._rate


def build_callbacks(train_params: dict, backup_dir: Path) -> list[keras.callbacks.Callback]:
    """The seed's callbacks, each switchable and tuned from params."""
    callbacks: list[keras.callbacks.Callback] = []
    if train_params["backup_and_restore"]:
        # Saves the training state every epoch and resumes from it after a crash; the
        # backup is deleted once training finishes.
        callbacks.append(keras.callbacks.BackupAndRestore(str(backup_dir)))
    reduce = train_params["reduce_lr"]
    if reduce["enabled"]:
        callbacks.append(keras.callbacks.ReduceLROnPlateau(
            monitor=reduce["monitor"], factor=reduce["factor"], patience=reduce["patience"],
            min_lr=reduce["min_lr"], verbose=1,
        ))
    stop = train_params["early_stopping"]
    if stop["enabled"]:
        callbacks.append(keras.callbacks.EarlyStopping(
            monitor=stop["monitor"], patience=stop["patience"], restore_best_weights=True,
            verbose=1,
        ))
    # Runs after ReduceLROnPlateau so the logged rate is the one the epoch used.
    callbacks.append(LearningRateLogger())
    return callbacks


def selected_epoch_index(history: dict[str, list[float]], early_stopping: dict) -> int:
    """Index of the epoch whose weights the saved model holds.

    Keras 3 EarlyStopping(restore_best_weights=True) restores the first epoch with
    the best monitored value at the end of training; without it the last epoch stays.
    """
    if not early_stopping["enabled"]:
        return len(history["loss"]) - 1
    values = history[early_stopping["monitor"]]
    pick = min if "loss" in early_stopping["monitor"] else max
    return values.index(pick(values))


def history_table(history: dict[str, list[float]]) -> pd.DataFrame:
    """One row per epoch (counted from 1), one column per logged metric, rounded.

    Rounding keeps the CSV's diffs readable; reruns are bit-identical either way.
    """
    table = pd.DataFrame(history).round(6)
    table.insert(0, "epoch", range(1, len(table) + 1))
    return table


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dataset", help="dataset key, e.g. mnist or fashion_mnist")
    args = parser.parse_args(argv)

    params = load_params()
    spec = get_spec(args.dataset)
    train_params = train_params_for(params, spec.key)
    # Devices, strategy and precision first: TF fixes them when it starts, Keras when
    # layers are built.
    distribution = make_distribution(train_params["distribution"], train_params["batch_size"],
                                     train_params["learning_rate"])
    policy = set_precision(train_params["precision"])
    make_deterministic(params["seed"])

    # Prepare data: a tf.data pipeline that shuffles, augments and prefetches.
    x_train, y_train = load_split(spec.key, "train")
    x_val, y_val = load_split(spec.key, "val")
    batch_size = distribution.global_batch_size
    train_data = training_dataset(x_train, y_train, batch_size, params["seed"],
                                  train_params["augment"])
    val_data = evaluation_dataset(x_val, y_val, batch_size)
    steps_per_epoch = math.ceil(len(x_train) / batch_size)

    # Build the model (its variables live where the strategy puts them).
    with distribution.strategy.scope():
        model = build_model(train_params["model"], x_train.shape[1:], NUM_CLASSES)
        compile_model(model, train_params, steps_per_epoch, distribution.learning_rate)
    if isinstance(distribution.strategy, tf.distribute.MultiWorkerMirroredStrategy):
        # Keras 3.15's fit() first builds the model from one batch reduced with
        # strategy.reduce(), which MultiWorkerMirroredStrategy cannot do for an
        # (images, labels) pair (keras-team/keras#20585). Without a pinned strategy Keras
        # builds while tracing instead and takes the strategy of the scope fit() runs in.
        model._distribute_strategy = None
    if distribution.is_chief:
        model.summary()
    print(f"[train] precision {policy}, {distribution.replicas} replica(s), global batch "
          f"{batch_size}, peak learning rate {distribution.learning_rate:g}")

    # Train.
    callbacks = build_callbacks(train_params, BACKUP_DIR / spec.key)
    started = time.perf_counter()
    with distribution.strategy.scope():
        history = model.fit(
            train_data,
            validation_data=val_data,
            epochs=train_params["epochs"],
            shuffle=False,  # the dataset shuffles itself, reproducibly
            callbacks=callbacks,
            # One line per epoch when logged to a file; a live progress bar in a terminal.
            verbose=1 if sys.stdout.isatty() else 2,
        ).history
    seconds = time.perf_counter() - started
    selected = selected_epoch_index(history, train_params["early_stopping"])
    print(f"[train] {spec.title}: {len(history['loss'])} epochs in {seconds:.0f} s "
          f"({len(history['loss']) * len(x_train) / seconds:.0f} images/s); "
          f"kept epoch {selected + 1}: val_accuracy {history['val_accuracy'][selected]:.4f}")
    if not distribution.is_chief:
        return 0  # the chief holds the same weights and writes them

    # Save the model (weights restored to the best epoch when early stopping is on).
    save_model(model, model_path(spec.key))
    write_json(f"metrics/{spec.key}_training.json", {
        "epochs_run": len(history["loss"]),
        "selected_epoch": selected + 1,
        "parameters": int(model.count_params()),
        "precision": policy,
        "replicas": distribution.replicas,
        "selected": {name: round(float(values[selected]), 6) for name, values in history.items()},
    })
    with atomic_path(plots_dir(spec.key) / "history.csv") as tmp:
        history_table(history).to_csv(tmp, index=False)
    plot_training_curves(history, plots_dir(spec.key) / "training_curves.png",
                         f"{spec.title}: training curves")
    return 0


if __name__ == "__main__":
    sys.exit(main())
