"""Training helpers: determinism, the callbacks from params, fitting, what training kept.

Used by the train stage (stages/train.py) and the benchmark.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from mnist_cnn.artifacts import live_metric_file
from mnist_cnn.input_pipeline import evaluation_dataset, training_dataset
from mnist_cnn.params import EarlyStoppingParams, TrainParams

# Where BackupAndRestore keeps interrupted training state (git-ignored, not a DVC output,
# so DVC does not delete it when the stage re-runs): checkpoints/<dataset>/<fingerprint>/.
BACKUP_DIR = Path("checkpoints")


def run_fingerprint(seed: int, train: TrainParams, *arrays: np.ndarray) -> str:
    """A hash of what a training run depends on: seed, effective train params and data.

    A backup made by another run (other params, other prepared data) must not be resumed:
    the model would continue from the old run's weights while dvc.lock credits the new
    params.
    """
    digest = hashlib.sha256()
    digest.update(json.dumps([seed, train.model_dump(mode="json")], sort_keys=True).encode())
    for array in arrays:
        digest.update(str((array.dtype, array.shape)).encode())
        digest.update(np.ascontiguousarray(array).data)
    return digest.hexdigest()[:16]


def matching_backup_dir(root: Path, fingerprint: str, epochs: int) -> Path:
    """root/<fingerprint>, after deleting the backups of every other run under root, and
    this run's own if it holds all `epochs` (the run was killed after its last epoch's
    backup, before Keras deleted it: resuming would train nothing and keep nothing)."""
    if root.is_dir():
        for stale in sorted(root.iterdir()):
            if stale.name != fingerprint:
                print(f"[train] discarding {stale}: a backup of other params or data")
                if stale.is_dir():
                    shutil.rmtree(stale)
                else:
                    stale.unlink()
    backup = root / fingerprint
    metadata = backup / "training_metadata.json"  # where BackupAndRestore keeps its epoch
    if metadata.is_file() and json.loads(metadata.read_text()).get("epoch", 0) >= epochs:
        print(f"[train] discarding {backup}: it holds a finished run; training again")
        shutil.rmtree(backup)
    return backup


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


class BatchNormReestimation(keras.callbacks.Callback):
    """Before each validation, set batch-norm's moving statistics to their mean over
    `batches` batches of training images run through the model in training mode, so they
    describe the weights being validated: the averaged ones, swapped in by SwapEMAWeights
    just before. Weights do not change (no gradient step).

    Keras averages trainable weights only (SwapEMAWeights leaves the statistics, which
    training keeps for the raw weights), hence this callback. An exact mean, not a moving
    average: batch k is weighted in with factor 1/(k+1) (each layer's `momentum` for the
    call), so the result does not depend on the statistics before. Dropout is off for
    these calls, as it is when the model is used: the statistics are those of inference,
    the same on every pass, and no random draw of training is used up. The images are the
    first of the training split, unaugmented (as validation and test images are).
    """

    def __init__(self, images: np.ndarray, batch_size: int, batches: int):
        super().__init__()
        self.batches = [
            tf.constant(images[start : start + batch_size])
            for start in range(0, min(len(images), batches * batch_size), batch_size)
        ]

    def on_test_begin(self, logs=None):
        norms = [
            layer
            for layer in self.model.layers
            if isinstance(layer, keras.layers.BatchNormalization)
        ]
        if not norms:
            return  # nothing to re-estimate
        dropouts = [layer for layer in self.model.layers if isinstance(layer, keras.layers.Dropout)]
        momenta, rates = [layer.momentum for layer in norms], [layer.rate for layer in dropouts]
        try:
            for layer in dropouts:
                layer.rate = 0.0
            for index, batch in enumerate(self.batches):
                for layer in norms:
                    layer.momentum = index / (index + 1)  # new = old + (batch - old) / (k+1)
                self.model(batch, training=True)
        finally:
            for layer, momentum in zip(norms, momenta, strict=True):
                layer.momentum = momentum
            for layer, rate in zip(dropouts, rates, strict=True):
                layer.rate = rate


def build_callbacks(
    train: TrainParams, backup_dir: Path, train_images: np.ndarray | None = None
) -> list[keras.callbacks.Callback]:
    """The write-up's callbacks, each switchable and tuned from params (`train_images`: for
    weight averaging's batch-norm re-estimation)."""
    callbacks: list[keras.callbacks.Callback] = []
    if train.backup_and_restore:
        # Saves the training state every epoch and resumes from it after a crash; the
        # backup is deleted once training finishes. First: it saves the raw weights,
        # before weight averaging swaps the average in.
        callbacks.append(keras.callbacks.BackupAndRestore(str(backup_dir)))
    averaging = train.weight_averaging
    if averaging.enabled:
        if train_images is None:
            raise ValueError("weight averaging needs training images for batch-norm statistics")
        # Validation, EarlyStopping's choice and the saved model see the average: it is
        # in the model from each validation to the next epoch's start (swap_on_epoch),
        # so these two come before EarlyStopping.
        callbacks.append(keras.callbacks.SwapEMAWeights(swap_on_epoch=True))
        callbacks.append(
            BatchNormReestimation(train_images, train.batch_size, averaging.batch_norm_batches)
        )
    reduce = train.reduce_lr
    if reduce.enabled:
        callbacks.append(
            keras.callbacks.ReduceLROnPlateau(
                monitor=reduce.monitor,
                factor=reduce.factor,
                patience=reduce.patience,
                min_lr=reduce.min_lr,
                verbose=1,
            )
        )
    stop = train.early_stopping
    if stop.enabled:
        callbacks.append(
            keras.callbacks.EarlyStopping(
                monitor=stop.monitor,
                patience=stop.patience,
                restore_best_weights=True,
                verbose=1,
            )
        )
    # Runs after ReduceLROnPlateau so the logged rate is the one the epoch used.
    callbacks.append(LearningRateLogger())
    return callbacks


def fit(
    model: keras.Model,
    train: TrainParams,
    seed: int,
    train_split: tuple[np.ndarray, np.ndarray],
    val_split: tuple[np.ndarray, np.ndarray],
    batch_size: int,
    backup_dir: Path,
    extra_callbacks: tuple[keras.callbacks.Callback, ...] = (),
    verbose: int | str = 2,
) -> keras.callbacks.History:
    """Train a compiled model the way the train stage does; return Keras' History
    (`.history`: the logged values, `.epoch`: the epochs this call trained, from 0 —
    after a resume from a backup, not from the first).

    Each split is (images, one-hot labels). The training pipeline shuffles and augments
    reproducibly from `seed`; validation runs after every epoch; the callbacks come from
    params (`extra_callbacks` run after them).
    """
    (x_train, y_train), (x_val, y_val) = train_split, val_split
    return model.fit(
        training_dataset(x_train, y_train, batch_size, seed, train.augment),
        validation_data=evaluation_dataset(x_val, y_val, batch_size),
        epochs=train.epochs,
        shuffle=False,  # the dataset shuffles itself, reproducibly
        callbacks=[*build_callbacks(train, backup_dir, x_train), *extra_callbacks],
        verbose=verbose,
    )


def selected_epoch_index(
    history: dict[str, list[float]], early_stopping: EarlyStoppingParams
) -> int:
    """Index of the epoch whose weights the saved model holds.

    Keras 3 EarlyStopping(restore_best_weights=True) restores the first epoch with
    the best monitored value at the end of training; without it the last epoch stays.
    """
    if not early_stopping.enabled:
        return len(history["loss"]) - 1
    values = history[early_stopping.monitor]
    pick = min if "loss" in early_stopping.monitor else max
    return values.index(pick(values))


def kept_epoch_summary(
    history: dict[str, list[float]], selected: int, first_epoch: int = 0
) -> dict:
    """What the saved model scored, for DVCLive's metrics.json: the kept epoch's logged
    values under DVCLive's names (`train/…`, `eval/…`) and its number (from 1).
    `first_epoch` is the index of history's first entry (a resumed run starts later).

    While training runs, DVCLive's summary holds the latest epoch's values; at the end the
    saved model holds the kept epoch's weights, so the summary says what that model scored.
    """
    values: dict = {"train": {}, "eval": {}}
    for name, logged in history.items():
        split, metric = live_metric_file(name).removesuffix(".tsv").split("/")
        values[split][metric] = float(logged[selected])
    return {**values, "selected_epoch": first_epoch + selected + 1}


class StepIsEpoch(keras.callbacks.Callback):
    """Keep a logger's step (DVCLive's `Live.step`) equal to the epoch's number from 1,
    as Keras prints it, also when training resumes from a backup at a later epoch."""

    def __init__(self, logger):
        super().__init__()
        self.logger = logger

    def on_epoch_begin(self, epoch, logs=None):
        self.logger.step = epoch + 1
