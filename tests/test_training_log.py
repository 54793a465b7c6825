"""DVCLive's files as the train stage writes them, read back as the tools read them."""

from __future__ import annotations

import json

import pytest
from dvclive import Live

from mnist_cnn.artifacts import (
    TRAINING_LOGS,
    environment_entries,
    environment_from_entries,
    live_metric_file,
    read_training_history,
)


@pytest.fixture
def logged(tmp_path, monkeypatch) -> dict[str, list[float]]:
    """Three epochs logged the way DVCLiveCallback logs Keras' logs, steps from 1."""
    monkeypatch.chdir(tmp_path)
    history = {
        "accuracy": [0.5, 0.75, 0.875],
        "loss": [1.5, 0.75, 0.5],
        "val_accuracy": [0.625, 0.8125, 0.8],
        "val_loss": [1.25, 0.625, 0.6],
        "learning_rate": [0.004, 0.002, 0.001],
    }
    with Live("live", dvcyaml=False, save_dvc_exp=False, report=None) as live:
        live.step = 1
        for epoch in range(3):
            for name, values in history.items():
                split = "eval" if name.startswith("val_") else "train"
                live.log_metric(f"{split}/{name.removeprefix('val_')}", values[epoch])
            live.next_step()
    return history


def test_history_reads_back_what_was_logged_epoch_by_epoch(logged, tmp_path):
    table = read_training_history(tmp_path / "live/plots/metrics")
    assert list(table.columns) == ["epoch", *TRAINING_LOGS]
    assert table["epoch"].tolist() == [1, 2, 3]
    for name, values in logged.items():
        assert table[name].tolist() == values
    summary = json.loads((tmp_path / "live/metrics.json").read_text())
    assert summary["step"] == 3 and summary["eval"]["accuracy"] == 0.8


def test_history_without_the_logs_raises_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError):
        read_training_history(tmp_path / "nothing")


def test_keras_names_map_to_dvclive_files():
    assert live_metric_file("val_accuracy") == "eval/accuracy.tsv"
    assert live_metric_file("learning_rate") == "train/learning_rate.tsv"


def test_environment_lines_round_trip_as_text():
    environment = {"cpu": "AMD EPYC: 2 cores", "cpus": 2, "precision": "float32"}
    entries = environment_entries(environment)
    assert entries == ["cpu: AMD EPYC: 2 cores", "cpus: 2", "precision: float32"]
    assert environment_from_entries(entries) == {k: str(v) for k, v in environment.items()}


def test_summary_holds_the_kept_epochs_values_under_dvclives_names(logged):
    """While training runs DVCLive's summary has the latest epoch; at the end the train
    stage puts in the epoch whose weights the saved model holds."""
    from mnist_cnn.training import kept_epoch_summary

    assert kept_epoch_summary(logged, 1) == {
        "train": {"accuracy": 0.75, "loss": 0.75, "learning_rate": 0.002},
        "eval": {"accuracy": 0.8125, "loss": 0.625},
        "selected_epoch": 2,
    }
