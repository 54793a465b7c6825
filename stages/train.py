"""Stage 3 — train: fit the CNN on the prepared train split, select on the validation split.

Reads params `seed`, `train` and any per-dataset override in `datasets.<name>.train`.
Writes the model, one row of metrics per epoch (history.csv, for `dvc plots`), a PNG of
the curves and a small summary (`dvc metrics show`), with the environment the numbers
came from (CPU, library versions, threads, precision). Under a multi-worker strategy every
worker trains, and only the chief writes.
"""

from __future__ import annotations

import math
import sys
import time

from mnist_cnn.artifacts import DatasetPaths, load_split, write_csv, write_json
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
    EpochProgress,
    fit,
    history_table,
    make_deterministic,
    matching_backup_dir,
    run_fingerprint,
    selected_epoch_index,
    summary,
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

    # Progress, the DVC way: after every epoch the history so far goes to the stage's
    # declared plots/metrics files, which `dvc exp show`, `dvc plots show` and VS Code's
    # live plots read while the stage runs. The end of training writes them for good.
    def write_progress(history: dict[str, list[float]]) -> None:
        if distribution.is_chief:
            best = selected_epoch_index(history, train.early_stopping)
            write_csv(paths.history, history_table(history))
            write_json(paths.training_summary, {**summary(history, best), "in_progress": True})

    # Train (resuming only a backup of this very run: same seed, params and data).
    backup_dir = BACKUP_DIR / spec.key
    if train.backup_and_restore:
        fingerprint = run_fingerprint(params.seed, train, *train_split, *val_split)
        backup_dir = matching_backup_dir(backup_dir, fingerprint)
    started = time.perf_counter()
    with distribution.strategy.scope():
        history = fit(
            model,
            train,
            params.seed,
            train_split,
            val_split,
            batch_size,
            backup_dir,
            extra_callbacks=(EpochProgress(write_progress),),
            # One line per epoch when logged to a file; a live progress bar in a terminal.
            verbose=1 if sys.stdout.isatty() else 2,
        )
    seconds = time.perf_counter() - started
    selected = selected_epoch_index(history, train.early_stopping)
    print(
        f"[train] {spec.title}: {len(history['loss'])} epochs in {seconds:.0f} s "
        f"({len(history['loss']) * len(x_train) / seconds:.0f} images/s); "
        f"kept epoch {selected + 1}: val_accuracy {history['val_accuracy'][selected]:.4f}"
    )
    if not distribution.is_chief:
        return 0  # the chief holds the same weights and writes them

    # Save the model (weights restored to the best epoch when early stopping is on).
    save_model(model, paths.model)
    kept = summary(history, selected)
    write_json(
        paths.training_summary,
        {
            "epochs_run": kept["epochs_run"],
            "selected_epoch": kept["selected_epoch"],
            "parameters": int(model.count_params()),
            "precision": policy,
            "replicas": distribution.replicas,
            "selected": kept["selected"],
            # CPU, libraries, threads: what makes another machine's numbers differ.
            "environment": environment(policy, train.threads),
        },
    )
    write_csv(paths.history, history_table(history))
    plot_training_curves(history, paths.training_curves, f"{spec.title}: training curves")
    return 0


if __name__ == "__main__":
    sys.exit(main())
