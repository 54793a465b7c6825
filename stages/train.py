"""Stage 3 — train: fit the CNN on the prepared train split, select on the validation split.

Reads params `seed` and the dataset's effective `train` section (data/params/<name>.yaml).
Writes the model and, through DVCLive, one row per epoch per metric (for `dvc plots`) and
a summary (`dvc metrics show`): the kept epoch's values, with the environment the numbers
came from (CPU, library versions, threads, precision); also a PNG of the curves. Under a
multi-worker strategy every worker trains, and only the chief writes.
"""

from __future__ import annotations

import contextlib
import math
import sys
import time

from dvclive import Live
from dvclive.keras import DVCLiveCallback

from mnist_cnn.artifacts import (
    DatasetPaths,
    environment_entries,
    load_split,
    read_training_history,
)
from mnist_cnn.datasets import NUM_CLASSES, spec_from_command_line
from mnist_cnn.figures import plot_training_curves
from mnist_cnn.model import build_model, compile_model, save_model
from mnist_cnn.params import load_params
from mnist_cnn.runtime import (
    environment,
    make_distribution,
    set_precision,
    set_threads,
    unpin_multi_worker_strategy,
)
from mnist_cnn.training import (
    BACKUP_DIR,
    StepIsEpoch,
    fit,
    kept_epoch_summary,
    make_deterministic,
    matching_backup_dir,
    run_fingerprint,
    selected_epoch_index,
)


def main(argv: list[str] | None = None) -> int:
    spec = spec_from_command_line(argv, description=__doc__.splitlines()[0])
    params = load_params()
    train = params.train_for(spec.key)
    paths = DatasetPaths(spec.key)

    # Threads, devices, strategy and precision first: TF fixes them when it starts,
    # Keras when layers are built.
    set_threads(train.threads)
    distribution = make_distribution(train.distribution, train.batch_size, train.learning_rate)
    policy = set_precision(train.precision)
    make_deterministic(params.seed)

    # Prepare data: the prepared splits (fit() below wraps them in tf.data pipelines that
    # shuffle, augment and prefetch).
    train_split, val_split = load_split(spec.key, "train"), load_split(spec.key, "val")
    x_train = train_split[0]
    batch_size = distribution.global_batch_size
    steps_per_epoch = math.ceil(len(x_train) / batch_size)

    # Build the model (its variables live where the strategy puts them).
    with distribution.strategy.scope():
        model = build_model(train.model, x_train.shape[1:], NUM_CLASSES)
        compile_model(model, train, steps_per_epoch, distribution.learning_rate)
    unpin_multi_worker_strategy(model, distribution.strategy)
    if distribution.is_chief:
        model.summary()
    print(
        f"[train] precision {policy}, {distribution.replicas} replica(s), global batch "
        f"{batch_size}, peak learning rate {distribution.learning_rate:g}"
    )

    # Log every epoch with DVCLive, set up for a pipeline stage: dvc.yaml declares its
    # files (metrics.json under `metrics:`, the TSVs under `plots:`), so DVCLive neither
    # edits dvc.yaml nor saves an experiment of its own (`dvc exp run` does), writes no
    # report and samples no system metrics (its rows would differ on every run). Its
    # summary after each epoch is what `dvc exp show` and VS Code show while training runs.
    live = (
        Live(
            str(paths.live_dir),
            dvcyaml=False,
            save_dvc_exp=False,
            report=None,
            monitor_system=False,
        )
        if distribution.is_chief
        else contextlib.nullcontext()
    )
    # Train (resuming only a backup of this very run: same seed, params and data).
    backup_dir = BACKUP_DIR / spec.key
    if train.backup_and_restore:
        fingerprint = run_fingerprint(params.seed, train, *train_split, *val_split)
        backup_dir = matching_backup_dir(backup_dir, fingerprint, train.epochs)
    with live:
        started = time.perf_counter()
        with distribution.strategy.scope():
            trained = fit(
                model,
                train,
                params.seed,
                train_split,
                val_split,
                batch_size,
                backup_dir,
                # After the params' callbacks, so each epoch's learning rate is logged too;
                # DVCLive's step is the epoch's number ("Epoch 1/20" is step 1).
                extra_callbacks=(StepIsEpoch(live), DVCLiveCallback(live=live))
                if distribution.is_chief
                else (),
                # One line per epoch when logged to a file; a live progress bar in a terminal.
                verbose=1 if sys.stdout.isatty() else 2,
            )
        seconds = time.perf_counter() - started
        # After a resume from a backup, Keras' history (and so the choice of the kept
        # epoch) covers the epochs trained since: EarlyStopping's state is not backed up.
        history, first_epoch = trained.history, (trained.epoch or [0])[0]
        selected = selected_epoch_index(history, train.early_stopping)
        print(
            f"[train] {spec.title}: {len(history['loss'])} epochs in {seconds:.0f} s "
            f"({len(history['loss']) * len(x_train) / seconds:.0f} images/s); kept epoch "
            f"{first_epoch + selected + 1}: val_accuracy {history['val_accuracy'][selected]:.4f}"
        )
        if not distribution.is_chief:
            return 0  # the chief holds the same weights and writes them

        # Save the model (weights restored to the best epoch when early stopping is on),
        # then the summary (written when the `with` block ends): what the saved model scored.
        save_model(model, paths.model)
        live.summary.update(kept_epoch_summary(history, selected, first_epoch))
        live.summary["parameters"] = int(model.count_params())
        # CPU, libraries, threads, precision: what makes another machine's numbers differ.
        live.summary["environment"] = environment_entries(
            {**environment(policy, train.threads), "replicas": distribution.replicas}
        )
    plot_training_curves(
        read_training_history(paths.training_history).to_dict("list"),
        paths.training_curves,
        f"{spec.title}: training curves",
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
