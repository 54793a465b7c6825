"""Integration: the real DVC pipeline, real data, real TensorFlow, on a tiny params override.

The project is copied into a fresh git repository; params.yaml there keeps every default
except a class-balanced subset of the data and one short epoch, so the code path is the
one full runs take. Steps build on each other, so the tests run in file order.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from stages.datasets import DATASETS
from tests.conftest import PROJECT_ROOT

pytestmark = pytest.mark.integration

PROJECT_FILES = ["dvc.yaml", "params.yaml", "stages", ".dvc/config", ".dvcignore", ".gitignore"]
TINY_OVERRIDE = {
    "preprocess": {"max_train_samples": 3000, "max_test_samples": 500},
    "train": {"epochs": 1, "batch_size": 32},
}
TIMEOUT = 900  # seconds for any one command: bounded even if something hangs


def deep_update(base: dict, override: dict) -> None:
    for key, value in override.items():
        if isinstance(value, dict):
            deep_update(base[key], value)
        else:
            base[key] = value


def command_env() -> dict[str, str]:
    env = dict(os.environ)
    # dvc.yaml calls `python`: it must be the interpreter running the tests.
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.update(GIT_AUTHOR_NAME="test", GIT_AUTHOR_EMAIL="test@example.com",
               GIT_COMMITTER_NAME="test", GIT_COMMITTER_EMAIL="test@example.com")
    return env


def run(args: list[str], cwd: Path) -> str:
    """Run a command; fail the test with its output if it exits non-zero."""
    result = subprocess.run(args, cwd=cwd, env=command_env(), capture_output=True, text=True,
                            timeout=TIMEOUT)
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"{' '.join(args)} failed ({result.returncode}):\n{output}"
    return output


def dvc(project: Path, *args: str) -> str:
    return run([sys.executable, "-m", "dvc", *args], project)


def stages_run(output: str) -> set[str]:
    return set(re.findall(r"Running stage '([^']+)'", output))


def read_metrics(project: Path) -> dict[str, dict]:
    return {key: json.loads((project / "metrics" / f"{key}.json").read_text())
            for key in DATASETS}


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("pipeline")
    for name in PROJECT_FILES:
        source, target = PROJECT_ROOT / name, root / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if source.is_dir():
            shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(source, target)
    params = yaml.safe_load((root / "params.yaml").read_text())
    deep_update(params, TINY_OVERRIDE)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run(["git", "init", "-q"], root)
    run(["git", "add", "-A"], root)
    run(["git", "commit", "-qm", "tiny pipeline"], root)
    return root


@pytest.fixture(scope="module")
def first_run(project) -> dict:
    output = dvc(project, "repro")
    run(["git", "add", "-A"], project)
    run(["git", "commit", "-qm", "first run"], project)
    return {"output": output, "metrics": read_metrics(project),
            "lock_outputs": lock_outputs(project)}


def test_repro_builds_every_stage_with_sane_outputs(project, first_run):
    expected = {f"{stage}@{key}" for stage in ("download", "preprocess", "train", "evaluate")
                for key in DATASETS}
    assert stages_run(first_run["output"]) == expected

    for key, spec in DATASETS.items():
        assert len(list((project / "data/raw" / key).glob("*.gz"))) == 4
        prepared = project / "data/prepared" / key
        x_train = np.load(prepared / "train_images.npy", allow_pickle=False)
        y_val = np.load(prepared / "val_labels.npy", allow_pickle=False)
        x_test = np.load(prepared / "test_images.npy", allow_pickle=False)
        assert x_train.shape == (2700, 28, 28, 1) and x_train.dtype == np.float32
        assert 0.0 <= x_train.min() and x_train.max() <= 1.0
        assert y_val.shape == (300, 10) and np.all(y_val.sum(axis=1) == 1)
        assert x_test.shape == (500, 28, 28, 1)
        assert (project / "models" / f"{key}.keras").stat().st_size > 0

        metrics = first_run["metrics"][key]
        assert metrics["test_samples"] == 500
        # One short epoch on 2700 images is far above chance (0.10) on both datasets.
        assert 0.5 < metrics["accuracy"] <= 1.0
        assert np.isfinite(metrics["loss"]) and metrics["loss"] > 0
        assert metrics["macro_f1"] > 0.4
        per_class = json.loads((project / "metrics" / f"{key}_per_class.json").read_text())
        assert list(per_class) == list(spec.class_names)
        assert sum(c["support"] for c in per_class.values()) == 500

        summary = json.loads((project / "metrics" / f"{key}_data.json").read_text())
        assert {s: summary[s]["count"] for s in summary} == {"train": 2700, "val": 300,
                                                               "test": 500}
        training = json.loads((project / "metrics" / f"{key}_training.json").read_text())
        assert training["epochs_run"] == 1

        plots = project / "plots" / key
        assert len((plots / "confusion.csv").read_text().splitlines()) == 501
        for curve in ("train/loss", "eval/loss", "train/accuracy", "eval/accuracy",
                      "train/learning_rate"):
            rows = (plots / "training/plots/metrics" / f"{curve}.tsv").read_text().splitlines()
            assert len(rows) == 2, curve  # header + one epoch
        for png in ("training_curves.png", "confusion_matrix.png"):
            assert (plots / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    shown = json.loads(dvc(project, "metrics", "show", "--json"))
    workspace = shown[""]["data"]
    for key in DATASETS:
        assert workspace[f"metrics/{key}.json"]["data"]["accuracy"] == \
            first_run["metrics"][key]["accuracy"]


def test_second_repro_runs_nothing(project, first_run):
    output = dvc(project, "repro")
    assert stages_run(output) == set()
    assert "Data and pipelines are up to date" in dvc(project, "status")


def lock_outputs(project: Path) -> dict[str, str]:
    """{output path: md5} for every output recorded in dvc.lock."""
    lock = yaml.safe_load((project / "dvc.lock").read_text())
    return {out["path"]: out["md5"] for stage in lock["stages"].values()
            for out in stage.get("outs", [])}


def test_forced_rerun_reproduces_every_output_bit_for_bit(project, first_run):
    before = (project / "dvc.lock").read_text()
    output = dvc(project, "repro", "--force")
    assert len(stages_run(output)) == 8
    assert lock_outputs(project) == first_run["lock_outputs"]
    assert (project / "dvc.lock").read_text() == before
    assert "nothing to commit" in run(["git", "status"], project)


def test_exp_run_with_train_param_reruns_only_train_and_evaluate(project, first_run):
    output = dvc(project, "exp", "run", "-S", "train.learning_rate=0.003")
    assert stages_run(output) == {f"{stage}@{key}" for stage in ("train", "evaluate")
                                  for key in DATASETS}
    diff = json.loads(dvc(project, "metrics", "diff", "--json"))
    for key in DATASETS:
        changes = diff[f"metrics/{key}.json"]
        assert "loss" in changes, changes
        assert changes["loss"]["old"] == first_run["metrics"][key]["loss"]
        assert changes["loss"]["new"] != changes["loss"]["old"]


def test_same_seed_gives_same_metrics(project, first_run):
    run(["git", "checkout", "HEAD", "--", "params.yaml"], project)
    output = dvc(project, "repro", "--force", "--single-item", "train@mnist", "evaluate@mnist")
    assert stages_run(output) == {"train@mnist", "evaluate@mnist"}
    assert read_metrics(project)["mnist"] == first_run["metrics"]["mnist"]


def test_kill_during_training_then_repro_completes(project, first_run):
    """kill -9 of the whole `dvc repro` process group mid-training loses nothing."""
    model = project / "models" / "mnist.keras"
    curve = project / "plots/mnist/training/plots/metrics/train/loss.tsv"
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["train"]["epochs"] = 30  # long enough to be killed mid-training
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))

    started = time.time()
    process = subprocess.Popen(
        [sys.executable, "-m", "dvc", "repro", "train@mnist"], cwd=project, env=command_env(),
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 300
        # Wait for the first finished epoch of the new run (DVCLive writes one row per epoch).
        while time.monotonic() < deadline and process.poll() is None:
            # (DVC deletes the old curves when the stage starts; only a newer file counts.)
            if (curve.exists() and curve.stat().st_mtime > started
                    and len(curve.read_text().splitlines()) >= 2):
                break
            time.sleep(0.2)
        assert process.poll() is None, "training ended before it could be interrupted"
        assert time.monotonic() < deadline, "no epoch finished within 300 s"
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=60)

    # Nothing half-written took the place of an output: the model was never replaced.
    assert not model.exists() or model.stat().st_size > 0
    assert not list((project / "models").glob("*.tmp*"))

    # The next run (same params as the first run) completes and reproduces its results.
    run(["git", "checkout", "HEAD", "--", "params.yaml"], project)
    dvc(project, "repro")
    assert "Data and pipelines are up to date" in dvc(project, "status")
    assert read_metrics(project)["mnist"] == first_run["metrics"]["mnist"]
    assert lock_outputs(project) == first_run["lock_outputs"]
