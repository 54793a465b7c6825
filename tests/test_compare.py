"""The experiment comparison, on a payload recorded from `dvc.api.exp_show()`.

tests/data/exp_show.json was recorded on this project after a queued learning-rate sweep
(README, "Experimenting"); tests/data/exp_params.yaml is the params.yaml it ran from.
"""

from __future__ import annotations

import json

import pandas as pd
import pytest
import yaml

from mnist_cnn.compare import comparison_table, plot_comparison, read_histories
from tests.conftest import PROJECT_ROOT

DATA = PROJECT_ROOT / "tests" / "data"


@pytest.fixture(scope="module")
def rows() -> list[dict]:
    return json.loads((DATA / "exp_show.json").read_text())


@pytest.fixture(scope="module")
def table(rows) -> pd.DataFrame:
    sections = list(yaml.safe_load((DATA / "exp_params.yaml").read_text()))
    return comparison_table(rows, sections)


def test_only_params_that_differ_from_the_baseline_are_columns(rows, table):
    swept = [name for name in table.columns if "." in name]
    # Keys the sweep added with `-S '+…'`: in no params.yaml of the baseline, yet shown.
    assert swept == ["datasets.mnist.train.epochs", "datasets.mnist.train.learning_rate"]
    assert len(table.columns) == 1 + len(swept) + 3 * 2  # name, params, 3 per dataset
    # One row per experiment plus the baseline commit; the workspace row is left out.
    assert len(table) == len([row for row in rows if row["rev"] != "workspace"]) == 5
    assert table["experiment"].iloc[0] == "baseline (main)"
    assert table["datasets.mnist.train.learning_rate"].tolist() == [
        "-",
        "0.0015",
        "0.004",
        "0.003",
        "0.001",
    ]


def test_results_come_from_the_right_files(rows, table):
    baseline = next(row for row in rows if row["rev"] == "main")
    first = table.iloc[0]
    assert first["mnist accuracy"] == baseline["metrics/mnist.json:accuracy"]
    assert first["fashion_mnist loss"] == baseline["metrics/fashion_mnist.json:loss"]
    run = baseline["metrics/mnist_training.json:epochs_run"]
    kept = baseline["metrics/mnist_training.json:selected_epoch"]
    assert first["mnist epochs (kept)"] == f"{run:.0f} ({kept:.0f})"


def test_picture_is_drawn_from_each_experiments_history(rows, table, tmp_path):
    history = pd.DataFrame({"epoch": [1, 2, 3], "val_accuracy": [0.9, 0.95, 0.97]})

    def read(path: str, rev: str) -> str:
        if "fashion" in path and rev != "main":
            raise FileNotFoundError(path)  # an experiment that did not retrain the dataset
        return history.to_csv(index=False)

    histories = read_histories(rows, read)
    assert len(histories["mnist"]) == len(table)
    png = tmp_path / "compare.png"
    plot_comparison(table, histories, png)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
