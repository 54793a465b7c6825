"""Integration: the real train stage on a tiny MNIST subset, in every precision and
distribution mode it offers (CPU only: two logical CPUs, two local worker processes)."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from mnist_cnn.artifacts import environment_from_entries
from mnist_cnn.params import deep_merge
from tests.conftest import PROJECT_ROOT, TINY_OVERRIDE, committed_params

pytestmark = pytest.mark.integration

TIMEOUT = 300  # seconds for any one process
# A 1-epoch model on 300 validation images moves by a few points under any change of
# arithmetic: float32 vs bfloat16 here, per-replica batch-norm statistics (16 images per
# replica instead of 32) and summation order under a strategy. 0.08 = 24 images.
DISTRIBUTED_TOLERANCE = 0.08
OUTPUTS = (
    "models/mnist.keras",
    "dvclive/mnist/metrics.json",
    "dvclive/mnist/plots/metrics/eval/accuracy.tsv",
)


def training_summary(workspace: Path) -> dict:
    """DVCLive's summary: the kept epoch's validation accuracy and the environment."""
    summary = json.loads((workspace / "dvclive/mnist/metrics.json").read_text())
    return {
        "val_accuracy": summary["eval"]["accuracy"],
        **environment_from_entries(summary["environment"]),
    }


def run_stage(workspace: Path, *args: str, env: dict | None = None) -> str:
    result = subprocess.run(
        [sys.executable, "-m", *args],
        cwd=workspace,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        env=env,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"{' '.join(args)} failed:\n{output[-4000:]}"
    return output


def set_train_params(workspace: Path, train: dict) -> None:
    base = committed_params()
    params = deep_merge(deep_merge(base, TINY_OVERRIDE), {"train": train})
    (workspace / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("modes")
    for package in ("stages", "mnist_cnn"):
        shutil.copytree(
            PROJECT_ROOT / package, root / package, ignore=shutil.ignore_patterns("__pycache__")
        )
    set_train_params(root, {})
    run_stage(root, "stages.download", "mnist")
    run_stage(root, "stages.preprocess", "mnist")
    return root


def train(workspace: Path, **train_params) -> dict:
    """Train with these params; return the model's hash and what training recorded."""
    set_train_params(workspace, train_params)
    run_stage(workspace, "stages.train", "mnist")
    summary = training_summary(workspace)
    digest = hashlib.sha256((workspace / "models/mnist.keras").read_bytes()).hexdigest()
    return {"model_sha256": digest, **summary}


@pytest.fixture(scope="module")
def single_float32(workspace) -> dict:
    return train(workspace, precision="float32")


@pytest.mark.parametrize("precision", ["float32", "mixed_bfloat16"])
def test_same_seed_same_model_in_every_precision(workspace, single_float32, precision):
    first = single_float32 if precision == "float32" else train(workspace, precision=precision)
    again = train(workspace, precision=precision)
    assert first["precision"] == again["precision"] == precision
    assert again == first  # identical weights (model bytes) and curves
    assert first["val_accuracy"] > 0.5  # and it learned something


def test_mirrored_over_two_logical_cpus_matches_single_device(workspace, single_float32):
    # Same global batch and rate as the single-device run, split over two replicas.
    mirrored = train(
        workspace,
        precision="float32",
        distribution={
            "strategy": "mirrored",
            "devices": ["/cpu:0", "/cpu:1"],
            "batch_size_per_replica": False,
            "scale_learning_rate": False,
        },
    )
    assert mirrored["replicas"] == "2"
    assert mirrored["val_accuracy"] == pytest.approx(
        single_float32["val_accuracy"], abs=DISTRIBUTED_TOLERANCE
    )


def free_ports(count: int) -> list[int]:
    """Ports the OS had free a moment ago (TF's gRPC server binds them on 0.0.0.0 with
    SO_REUSEPORT off, so they cannot be held for it: another process may take one first)."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


# What a worker prints when a port was taken between free_ports() and its gRPC server.
PORT_TAKEN = "Could not start gRPC server"


def run_two_workers(workspace: Path, other: Path) -> tuple[list[subprocess.Popen], list[str]]:
    """Both workers of a two-worker cluster, to the end; started again on fresh ports (up
    to three times) only when a port was taken, the one outcome that is no failure of ours."""
    for _ in range(3):
        cluster = {"worker": [f"127.0.0.1:{port}" for port in free_ports(2)]}
        processes = []
        try:
            for index, cwd in enumerate((workspace, other)):
                task = {"cluster": cluster, "task": {"type": "worker", "index": index}}
                processes.append(
                    subprocess.Popen(
                        [sys.executable, "-m", "stages.train", "mnist"],
                        cwd=cwd,
                        env=dict(os.environ, TF_CONFIG=json.dumps(task)),
                        stdout=subprocess.PIPE,
                        stderr=subprocess.STDOUT,
                        text=True,
                    )
                )
            logs = [process.communicate(timeout=TIMEOUT)[0] for process in processes]
        finally:
            for process in processes:  # reap both, even after a timeout
                process.kill()
                process.wait()
        if not any(PORT_TAKEN in log for log in logs):
            return processes, logs
    return processes, logs


def test_multi_worker_two_processes_only_chief_writes(workspace, single_float32, tmp_path):
    set_train_params(
        workspace,
        {
            "precision": "float32",
            "distribution": {
                "strategy": "multi_worker",
                "batch_size_per_replica": False,
                "scale_learning_rate": False,
            },
        },
    )
    for output in OUTPUTS:  # so that what exists afterwards was written by this run
        path = workspace / output
        shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
    # The second worker works in its own copy of the project, as on another machine.
    other = tmp_path / "worker1"
    shutil.copytree(workspace, other)
    processes, logs = run_two_workers(workspace, other)
    for index, (process, log) in enumerate(zip(processes, logs, strict=True)):
        assert process.returncode == 0, f"worker {index} failed:\n{log[-4000:]}"
        assert "2 replica(s), global batch 32" in log

    # Both workers saw the same (all-reduced) validation accuracy; only worker 0 wrote.
    kept = [re.search(r"val_accuracy ([0-9.]+)", log).group(1) for log in logs]
    assert kept[0] == kept[1]
    assert all((workspace / output).exists() for output in OUTPUTS)
    assert not any((other / output).exists() for output in OUTPUTS)
    summary = training_summary(workspace)
    assert summary["replicas"] == "2"
    assert summary["val_accuracy"] == pytest.approx(
        single_float32["val_accuracy"], abs=DISTRIBUTED_TOLERANCE
    )


def test_saved_model_is_the_epoch_the_summary_reports(workspace):
    """Three epochs, early stopping on val_loss with the best weights restored: the saved
    model scores on the validation split exactly what DVCLive's summary says its kept
    epoch scored, and that epoch has the lowest val_loss of the logged history."""
    import numpy as np

    from mnist_cnn.artifacts import read_training_history
    from mnist_cnn.evaluation import load_trained_model

    stop = {"enabled": True, "monitor": "val_loss", "patience": 10}
    params = deep_merge(
        deep_merge(committed_params(), TINY_OVERRIDE),
        {
            "train": {"early_stopping": stop, "precision": "float32"},
            "datasets": {"mnist": {"train": {"epochs": 3}}},
        },
    )
    (workspace / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run_stage(workspace, "stages.train", "mnist")

    summary = json.loads((workspace / "dvclive/mnist/metrics.json").read_text())
    history = read_training_history(workspace / "dvclive/mnist/plots/metrics")
    assert history["epoch"].tolist() == [1, 2, 3] and summary["step"] == 3
    best = int(history["val_loss"].idxmin())
    assert summary["selected_epoch"] == history["epoch"][best]
    assert summary["eval"]["loss"] == history["val_loss"][best]
    assert summary["eval"]["accuracy"] == history["val_accuracy"][best]

    prepared = workspace / "data/prepared/mnist"
    x_val = np.load(prepared / "val_images.npy")
    y_val = np.load(prepared / "val_labels.npy").argmax(axis=1)
    model = load_trained_model("mnist", workspace / "models/mnist.keras")
    accuracy = float(np.mean(model.predict(x_val, verbose=0).argmax(axis=1) == y_val))
    # Keras accumulates in float32: equal to 1e-6, far below one image in 300 (3e-3).
    assert accuracy == pytest.approx(summary["eval"]["accuracy"], abs=1e-6), (
        f"saved model scores {accuracy}, the summary's epoch {summary['selected_epoch']} "
        f"{summary['eval']['accuracy']} (validation per epoch: {history['val_accuracy'].tolist()})"
    )


def test_reduce_lr_on_plateau_cuts_the_rate_the_epoch_after_a_stall(workspace):
    """The write-up's ReduceLROnPlateau, switched on from params: a rate so small that
    validation loss cannot improve by Keras' min_delta (1e-4; no batch norm, whose
    statistics would still move) stalls every epoch, so with patience 1 the rate is
    halved after epoch 2 and again after epoch 3 — as the logged rates show."""
    from mnist_cnn.artifacts import read_training_history

    rate = 1e-9
    train = {
        "precision": "float32",
        "learning_rate": rate,
        "lr_schedule": {"name": "constant", "warmup_epochs": 0},
        "early_stopping": {"enabled": False},
        "reduce_lr": {
            "enabled": True,
            "monitor": "val_loss",
            "factor": 0.5,
            "patience": 1,
            "min_lr": 0.0,
        },
        "model": {"batch_norm": False},
    }
    params = deep_merge(
        deep_merge(committed_params(), TINY_OVERRIDE),
        {"train": train, "datasets": {"mnist": {"train": {"epochs": 4}}}},
    )
    (workspace / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run_stage(workspace, "stages.train", "mnist")
    logged = read_training_history(workspace / "dvclive/mnist/plots/metrics")["learning_rate"]
    assert logged.tolist() == pytest.approx([rate, rate, rate / 2, rate / 4], rel=1e-6)


def test_training_killed_mid_run_resumes_from_its_backup(workspace, tmp_path):
    """`backup_and_restore: true`: a run killed after its second epoch resumes at the
    third; DVCLive's rows keep the epochs' own numbers, the summary's kept epoch is the
    best (lowest val_loss) of those the resumed run trained (Keras' EarlyStopping state is
    not in the backup), and the backup is gone once training ends."""
    import signal
    import time

    from mnist_cnn.artifacts import read_training_history

    stop = {"enabled": True, "monitor": "val_loss", "patience": 10}
    params = deep_merge(
        deep_merge(committed_params(), TINY_OVERRIDE),
        {
            "train": {"early_stopping": stop, "backup_and_restore": True},
            "datasets": {"mnist": {"train": {"epochs": 4}}},
        },
    )
    (workspace / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    summary = workspace / "dvclive/mnist/metrics.json"
    summary.unlink(missing_ok=True)
    log = tmp_path / "killed.log"
    with log.open("w") as output:
        process = subprocess.Popen(
            [sys.executable, "-m", "stages.train", "mnist"],
            cwd=workspace,
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + TIMEOUT
        # Freeze it as soon as DVCLive has logged epoch 2 (its backup is written before:
        # the params' callbacks run first), then kill it: it cannot reach epoch 3's backup.
        while process.poll() is None:
            try:
                if json.loads(summary.read_text()).get("step", 0) >= 2:
                    break
            except (OSError, ValueError):  # not written yet, or being rewritten
                pass
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)
        assert process.poll() is None, f"training ended before the kill:\n{log.read_text()}"
        process.send_signal(signal.SIGSTOP)
    finally:
        process.kill()
        process.wait(timeout=60)
    backups = list((workspace / "checkpoints/mnist").iterdir())
    assert len(backups) == 1, backups

    output = run_stage(workspace, "stages.train", "mnist")
    assert "Epoch 3/4" in output and "Epoch 1/4" not in output, output[-3000:]
    history = read_training_history(workspace / "dvclive/mnist/plots/metrics")
    assert history["epoch"].tolist() == [3, 4]
    result = json.loads(summary.read_text())
    best = int(history["val_loss"].idxmin())
    assert result["selected_epoch"] == history["epoch"][best]
    assert result["eval"]["accuracy"] == history["val_accuracy"][best]
    assert not any((workspace / "checkpoints/mnist").iterdir())
