"""Stage 3 — train: fit the CNN on the prepared train split, select on the validation split.

Reads params `seed`, `train` and any per-dataset override in `datasets.<name>.train`.
Writes the model (models/<dataset>.keras), per-epoch curves through DVCLive
(plots/<dataset>/training/), a PNG of them, and a small summary
(metrics/<dataset>_training.json).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # hide TF's C++ info/warning chatter

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402
from dvclive import Live  # noqa: E402
from dvclive.keras import DVCLiveCallback  # noqa: E402

from stages.artifacts import load_split, model_path, plots_dir, write_json  # noqa: E402
from stages.datasets import NUM_CLASSES, get_spec  # noqa: E402
from stages.figures import plot_training_curves  # noqa: E402
from stages.model import build_model, compile_model, save_model  # noqa: E402
from stages.params import load_params, train_params_for  # noqa: E402


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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dataset", help="dataset key, e.g. mnist or fashion_mnist")
    args = parser.parse_args(argv)

    params = load_params()
    spec = get_spec(args.dataset)
    train_params = train_params_for(params, spec.key)
    make_deterministic(params["seed"])

    # Prepare data.
    x_train, y_train = load_split(spec.key, "train")
    x_val, y_val = load_split(spec.key, "val")

    # Build the model.
    model = build_model(train_params["model"], x_train.shape[1:], NUM_CLASSES)
    compile_model(model, train_params["learning_rate"])
    model.summary()

    # Train. DVCLive records every epoch's metrics as TSV for `dvc plots`.
    started = time.perf_counter()
    with Live(str(plots_dir(spec.key) / "training"), dvcyaml=False, save_dvc_exp=False) as live:
        history = model.fit(
            x_train, y_train,
            validation_data=(x_val, y_val),
            epochs=train_params["epochs"],
            batch_size=train_params["batch_size"],
            shuffle=True,
            callbacks=build_callbacks(train_params, BACKUP_DIR / spec.key)
            + [DVCLiveCallback(live=live)],
            # One line per epoch when logged to a file; a live progress bar in a terminal.
            verbose=1 if sys.stdout.isatty() else 2,
        ).history
    seconds = time.perf_counter() - started

    # Save the model (weights restored to the best epoch when early stopping is on).
    save_model(model, model_path(spec.key))

    selected = selected_epoch_index(history, train_params["early_stopping"])
    write_json(f"metrics/{spec.key}_training.json", {
        "epochs_run": len(history["loss"]),
        "selected_epoch": selected + 1,
        "parameters": int(model.count_params()),
        "selected": {name: round(float(values[selected]), 6) for name, values in history.items()},
    })
    plot_training_curves(history, plots_dir(spec.key) / "training_curves.png",
                         f"{spec.title}: training curves")
    print(f"[train] {spec.title}: {len(history['loss'])} epochs in {seconds:.0f} s; "
          f"kept epoch {selected + 1}: val_accuracy {history['val_accuracy'][selected]:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
