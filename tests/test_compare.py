"""The experiment comparison, on a payload recorded from `dvc.api.exp_show()`.

tests/data/exp_show.json was recorded on this project after a queued learning-rate sweep
(README, "Experimenting"), its training-summary columns since renamed to DVCLive's file
(dvclive/<ds>/metrics.json: step, selected_epoch, train.*, eval.*);
tests/data/exp_params.yaml is the params.yaml it ran from.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import yaml

from mnist_cnn.tools.compare import (
    COMMITTED_PARAMS,
    carried_from_baseline,
    comparison_table,
    merge_seed_runs,
    named_like,
    plot_comparison,
    read_histories,
    seed_group_table,
    seed_groups,
    seed_runs,
    spread_text,
    trained_with_own_params,
)
from tests.conftest import PROJECT_ROOT, drawn_png

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
    run = baseline["dvclive/mnist/metrics.json:step"]
    kept = baseline["dvclive/mnist/metrics.json:selected_epoch"]
    assert first["mnist epochs (kept)"] == f"{run:.0f} ({kept:.0f})"


@pytest.fixture(scope="module")
def sections() -> list[str]:
    return list(yaml.safe_load((DATA / "exp_params.yaml").read_text()))


def test_picture_is_drawn_from_each_experiments_history(rows, table, sections, tmp_path):
    def read(path: str, rev: str) -> str:
        """DVCLive's TSV of one metric: step, then the metric's column."""
        if "fashion" in path and rev != "main":
            raise FileNotFoundError(path)  # an experiment that did not retrain the dataset
        name = path.rsplit("/", 1)[1].removesuffix(".tsv")
        return f"step\t{name}\n1\t0.9\n2\t0.95\n3\t0.97\n"

    histories = read_histories(rows, read)
    assert len(histories["mnist"]) == len(table)
    assert len(histories["fashion_mnist"]) == 1  # only the baseline retrained it
    curve = next(iter(histories["mnist"].values()))
    assert curve["epoch"].tolist() == [1, 2, 3]
    assert curve["val_accuracy"].tolist() == [0.9, 0.95, 0.97]
    png = tmp_path / "compare.png"
    plot_comparison(seed_runs(rows, sections), histories, png)
    with_curves = drawn_png(png)
    # The curves are part of the picture: without the histories it is another image.
    plot_comparison(seed_runs(rows, sections), {}, tmp_path / "bare.png")
    bare = drawn_png(tmp_path / "bare.png")
    assert with_curves.shape != bare.shape or (with_curves != bare).any()


def seeded(row: dict, seed: int, mnist: float, name: str, **params) -> dict:
    """A recorded experiment row given another seed, MNIST accuracy and params."""
    return {
        **row,
        "rev": f"rev{seed}{name}",
        "Experiment": name,
        "typ": "branch_commit",
        "seed": float(seed),
        "metrics/mnist.json:accuracy": mnist,
        **params,
    }


@pytest.fixture(scope="module")
def seed_sweep(rows) -> list[dict]:
    """The baseline, three seeds of it, and two seeds of another learning rate."""
    baseline = next(row for row in rows if row["rev"] == "main")
    other = {"datasets.mnist.train.learning_rate": 0.003}
    return [
        baseline,
        seeded(baseline, 42, 0.9960, "again"),  # the baseline's seed once more
        seeded(baseline, 1, 0.9950, "s1"),
        seeded(baseline, 2, 0.9970, "s2"),
        seeded(baseline, 1, 0.9900, "r1", **other),
        seeded(baseline, 2, 0.9910, "r2", **other),
    ]


def test_experiments_differing_only_in_seed_form_one_group(seed_sweep, sections):
    runs = seed_runs(seed_sweep, sections)
    mnist = runs[runs["dataset"] == "mnist"]
    # Seed 42 of the committed params counts once, and it is the experiment's run.
    committed = mnist[mnist["group"] == COMMITTED_PARAMS]
    assert sorted(committed["seed"]) == [1, 2, 42]
    assert committed.loc[committed["seed"] == 42, "experiment"].item().startswith("again")
    groups = seed_groups(runs).set_index(["group", "dataset"])
    stats = groups.loc[(COMMITTED_PARAMS, "mnist")]
    assert stats["n"] == 3
    assert stats["test mean"] == pytest.approx(0.9960)
    assert stats["test std"] == pytest.approx(0.0010)  # sample std (n - 1)
    assert (stats["test min"], stats["test max"]) == (0.9950, 0.9970)
    other = groups.loc[("datasets.mnist.train.learning_rate=0.003", "mnist")]
    assert other["n"] == 2 and other["test mean"] == pytest.approx(0.9905)


def test_seed_group_table_reads_as_mean_std_and_range(seed_sweep, sections):
    text = seed_group_table(seed_groups(seed_runs(seed_sweep, sections)))
    row = text[text["params (besides seed)"] == COMMITTED_PARAMS].iloc[0]
    assert row["mnist n"] == 3
    assert row["mnist test accuracy"] == "99.60 ± 0.10 % (99.50–99.70)"


def test_spread_text_counts_seeds_when_asked_and_says_when_there_is_no_spread():
    assert (
        spread_text(0.996, 0.001, 0.995, 0.997, seeds=3) == "99.60 ± 0.10 % (99.50–99.70, 3 seeds)"
    )
    assert spread_text(0.996, float("nan"), 0.996, 0.996, seeds=1) == "99.60 % (1 seed)"


def test_only_finished_experiments_count_in_seed_groups(seed_sweep, sections):
    """A running experiment already has a training summary (live progress) and the
    previous run's test metrics: it is labelled in the table, never counted."""
    running = {**seeded(seed_sweep[0], 7, 0.5, "busy"), "State": "Running"}
    runs = seed_runs([*seed_sweep, running], sections)
    assert 7 not in set(runs["seed"])
    table = comparison_table([*seed_sweep, running], sections)
    assert table["experiment"].str.endswith("[running]").sum() == 1


def test_running_and_unreadable_rows_leave_the_epochs_cell_empty(seed_sweep, sections):
    """While a run trains, DVCLive's summary has `step` but no `selected_epoch` yet; a
    file DVC failed to read shows as "!". Neither breaks the table."""
    running = {**seeded(seed_sweep[0], 7, 0.5, "busy"), "State": "Running"}
    running.pop("dvclive/mnist/metrics.json:selected_epoch")
    broken = {**seeded(seed_sweep[0], 8, 0.5, "broken"), "dvclive/mnist/metrics.json:step": "!"}
    table = comparison_table([*seed_sweep, running, broken], sections)
    epochs = table.set_index("experiment")["mnist epochs (kept)"]
    assert epochs.filter(like="busy").isna().all() and epochs.filter(like="broken").isna().all()
    assert epochs.notna().sum() == len(seed_sweep)


def test_a_study_file_keeps_other_runs_and_replaces_a_runs_earlier_row(seed_sweep, sections):
    runs = seed_runs(seed_sweep, sections)
    mnist = runs[(runs["dataset"] == "mnist") & (runs["group"] == COMMITTED_PARAMS)]
    earlier = mnist[mnist["seed"] != 2].assign(test_accuracy=0.5)  # from another session
    earlier = pd.concat([earlier, earlier[earlier["seed"] == 42].assign(seed=7)])
    merged = merge_seed_runs(earlier, mnist[mnist["seed"] != 1])
    by_seed = merged.set_index("seed")["test_accuracy"]
    assert sorted(by_seed.index) == [1, 2, 7, 42]
    assert by_seed[1] == 0.5  # only in the file: kept
    assert by_seed[7] == 0.5
    assert by_seed[42] == 0.9960  # run again: the new row replaces the earlier one
    assert by_seed[2] == 0.9970


def test_seed_runs_name_the_cpu_from_each_runs_training_summary(seed_sweep, sections):
    """exp show leaves the environment out (a list); the CPU is read per run and dataset."""
    asked = []

    def cpu_of(rev: str, key: str) -> str:
        asked.append((rev, key))
        return f"CPU of {rev}"

    runs = seed_runs(seed_sweep, sections, cpu_of)
    assert runs["cpu"].notna().all()
    assert set(runs["cpu"]) <= {f"CPU of {rev}" for rev, _ in asked}
    assert {key for _, key in asked} == {"mnist", "fashion_mnist"}
    assert seed_runs(seed_sweep, sections)["cpu"].isna().all()


def test_seed_runs_size_each_runs_model(seed_sweep, sections):
    """The model's forward MFLOP per image, asked per run and dataset, sizes its training."""
    runs = seed_runs(seed_sweep, sections, forward_mflop_of=lambda rev, key: len(key) * 1.5)
    assert (runs["forward_mflop"] == runs["dataset"].str.len() * 1.5).all()
    assert seed_runs(seed_sweep, sections)["forward_mflop"].isna().all()


def test_spread_picture_with_groups(seed_sweep, sections, tmp_path):
    """Two groups on each dataset: a shared rate beside the committed params."""
    shared = {"train.learning_rate": 0.003}
    rows = [*seed_sweep[:4], *(seeded(seed_sweep[0], s, 0.99, f"t{s}", **shared) for s in (1, 2))]
    runs = seed_runs(rows, sections)
    assert (runs.groupby("dataset")["group"].nunique() == 2).all()
    png = tmp_path / "spread.png"
    plot_comparison(runs, {}, png)
    drawn_png(png)


def test_params_prefixed_with_their_file_count_once(rows, sections):
    """With each dataset's effective settings in data/params/<ds>.yaml, DVC prefixes
    colliding names with their file: params.yaml's count, the effective files' do not."""

    def prefixed(row: dict) -> dict:
        out = {}
        for name, value in row.items():
            if name.split(".")[0] in ("train", "datasets"):
                out[f"params.yaml:{name}"] = value
                out[f"data/params/mnist.yaml:{name}"] = value
            else:
                out[name] = value
        return out

    table = comparison_table([prefixed(row) for row in rows], sections)
    swept = [name for name in table.columns if "." in name]
    assert swept == ["datasets.mnist.train.epochs", "datasets.mnist.train.learning_rate"]


def test_command_in_a_repository_without_runs_says_what_to_do(tmp_path):
    """A fresh DVC repository (nothing committed, nothing run): one line, exit 1."""
    import subprocess
    import sys

    env = {"PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin", "HOME": str(tmp_path)}
    for command in (["git", "init", "-q"], [sys.executable, "-m", "dvc", "init", "-q"]):
        subprocess.run(command, cwd=tmp_path, env=env, check=True, timeout=120)
    (tmp_path / "params.yaml").write_text("seed: 1\n")
    result = subprocess.run(
        [sys.executable, "-m", "mnist_cnn.tools.compare"],
        cwd=tmp_path,
        env={**env, "PYTHONPATH": str(PROJECT_ROOT)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == (
        "compare: no experiments found (run some with `dvc exp run`)"
    )


def test_a_datasets_group_ignores_the_other_datasets_own_section(seed_sweep, sections):
    """A Fashion-MNIST recipe studied in experiments that set MNIST's section too (or
    not) forms one group for Fashion-MNIST; MNIST's rows still tell the two apart."""
    fashion = {"datasets.fashion_mnist.train.epochs": 18.0}
    both = {**fashion, "datasets.mnist.train.epochs": 14.0}
    rows = [
        seed_sweep[0],
        seeded(seed_sweep[0], 1, 0.99, "fashion-only", **fashion),
        seeded(seed_sweep[0], 2, 0.99, "both", **both),
    ]
    runs = seed_runs(rows, sections).set_index(["dataset", "seed"])["group"]
    assert runs[("fashion_mnist", 1)] == runs[("fashion_mnist", 2)]
    assert runs[("fashion_mnist", 1)] == "datasets.fashion_mnist.train.epochs=18"
    assert runs[("mnist", 1)] == COMMITTED_PARAMS
    assert runs[("mnist", 2)] == "datasets.mnist.train.epochs=14"


def test_a_dataset_not_trained_with_the_experiments_params_gives_no_row(seed_sweep, sections):
    """`dvc exp run evaluate@fashion_mnist -S seed=1` trains Fashion-MNIST only: the
    experiment's MNIST results are the baseline's seed-42 run, not a run of seed 1."""
    rows = [seed_sweep[0], seeded(seed_sweep[0], 1, 0.99, "fashion-run")]

    def trained(rev: str, key: str) -> bool:
        return not rev.startswith("rev1") or key == "fashion_mnist"

    runs = seed_runs(rows, sections, trained=trained)
    assert set(runs.loc[runs["seed"] == 1, "dataset"]) == {"fashion_mnist"}
    assert set(runs.loc[runs["seed"] == 42, "dataset"]) == {"mnist", "fashion_mnist"}


def test_named_like_keeps_the_matching_experiments_and_the_baseline(seed_sweep):
    kept = named_like(seed_sweep, "s*")
    assert [row.get("Experiment") for row in kept if row.get("typ") != "baseline"] == ["s1", "s2"]
    assert any(row.get("typ") == "baseline" for row in kept)
    assert [
        row for row in named_like(seed_sweep, "nothing-*") if row.get("typ") != "baseline"
    ] == []


def test_a_dataset_carried_from_the_baseline_is_not_a_run_of_the_experiment():
    def train_stage(seed: int, model_md5: str) -> dict:
        return {
            "params": {"params.yaml": {"seed": seed}},
            "outs": [{"path": "models/mnist.keras", "md5": model_md5}],
        }

    baseline = {"stages": {"train@mnist": train_stage(42, "aaa"), "train@fashion_mnist": {}}}
    # `dvc exp run evaluate@fashion_mnist` at the baseline's seed: MNIST's stage is the baseline's.
    carried = {"stages": {"train@mnist": train_stage(42, "aaa")}}
    assert carried_from_baseline(carried, baseline, "mnist")
    retrained = {"stages": {"train@mnist": train_stage(42, "bbb")}}  # same params, new weights
    assert not carried_from_baseline(retrained, baseline, "mnist")
    assert not carried_from_baseline(
        {"stages": {"train@mnist": train_stage(1, "aaa")}}, baseline, "mnist"
    )
    assert not carried_from_baseline({}, baseline, "mnist")  # no dvc.lock: nothing carried
    assert not carried_from_baseline(carried, {}, "mnist")


def test_trained_with_own_params_reads_the_runs_lock_against_its_params_files():
    lock = {
        "stages": {
            "train@mnist": {
                "params": {
                    "params.yaml": {"seed": 42},
                    "data/params/mnist.yaml": {"train": {"epochs": 20, "blocks": [1, 2, 1]}},
                }
            }
        }
    }
    files = {
        "params.yaml": {"seed": 42, "other": 1},
        "data/params/mnist.yaml": {"train": {"epochs": 20, "blocks": [1, 2, 1]}},
    }
    assert trained_with_own_params(lock, "mnist", files.__getitem__)
    reseeded = {**files, "params.yaml": {"seed": 1}}
    assert not trained_with_own_params(lock, "mnist", reseeded.__getitem__)
    longer = {**files, "data/params/mnist.yaml": {"train": {"epochs": 30, "blocks": [1, 2, 1]}}}
    assert not trained_with_own_params(lock, "mnist", longer.__getitem__)
    assert not trained_with_own_params(lock, "fashion_mnist", files.__getitem__)  # never ran
    assert not trained_with_own_params({}, "mnist", files.__getitem__)  # no dvc.lock
