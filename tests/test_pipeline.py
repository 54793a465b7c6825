"""Integration: the real DVC pipeline, real data, real TensorFlow, on a tiny params override.

The project is copied into a fresh git repository; params.yaml there keeps every default
except a class-balanced subset of the data and one short epoch, so the code path is the
one full runs take. The first `dvc repro` is committed once per module; before every
test the workspace is put back to that commit (git and DVC), so each test passes alone
and in any order. After every test no process may still run in the project.
"""

from __future__ import annotations

import contextlib
import functools
import io
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
import pandas as pd
import pytest
import yaml
from PIL import Image

from mnist_cnn.artifacts import TRAINING_LOGS, read_training_history
from mnist_cnn.datasets import DATASETS
from mnist_cnn.params import deep_merge
from tests.conftest import (
    PROJECT_ROOT,
    TINY_OVERRIDE,
    committed_params,
    drawn_png,
    processes_under,
    run_bounded,
    stop_processes_under,
)
from tests.test_predict import png_claiming_size

pytestmark = pytest.mark.integration

PROJECT_FILES = [
    "dvc.yaml",
    "params.yaml",
    "stages",
    "mnist_cnn",
    ".dvc/config",
    ".dvcignore",
    ".gitignore",
]
TIMEOUT = 240  # seconds for any one command: bounded even if something hangs


def restore_recipe() -> str:
    """The commands of `make restore`, which README tells users to run after a failed run."""
    lines = (PROJECT_ROOT / "Makefile").read_text().split("\nrestore:", 1)[1].splitlines()[1:]
    commands = []
    for line in lines:
        if not line.startswith("\t"):
            break
        commands.append(line.strip())
    return " && ".join(commands)


RECOVER = restore_recipe()


def command_env() -> dict[str, str]:
    env = dict(os.environ)
    # dvc.yaml calls `python`: it must be the interpreter running the tests.
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.update(
        GIT_AUTHOR_NAME="test",
        GIT_AUTHOR_EMAIL="test@example.com",
        GIT_COMMITTER_NAME="test",
        GIT_COMMITTER_EMAIL="test@example.com",
        PYTHONUNBUFFERED="1",
    )
    return env


def attempt(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    """Run a command (bounded; its whole process group is killed on a timeout)."""
    return run_bounded(args, cwd, command_env(), TIMEOUT)


def run(args: list[str], cwd: Path) -> str:
    """Run a command; fail the test with its output if it exits non-zero."""
    result = attempt(args, cwd)
    assert result.returncode == 0, (
        f"{' '.join(args)} failed ({result.returncode}):\n{result.stdout[-6000:]}"
    )
    return result.stdout


def dvc(project: Path, *args: str) -> str:
    return run([sys.executable, "-m", "dvc", *args], project)


def stages_run(output: str) -> set[str]:
    return set(re.findall(r"Running stage '([^']+)'", output))


def stages_restored(output: str) -> set[str]:
    return set(re.findall(r"Stage '([^']+)' is cached - skipping run", output))


def read_metrics(project: Path) -> dict[str, dict]:
    return {key: json.loads((project / "metrics" / f"{key}.json").read_text()) for key in DATASETS}


def git_status(project: Path) -> str:
    return run(["git", "status", "--porcelain"], project)


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
    # HEAD's params.yaml, not the workspace's (an experiment may have rewritten it).
    params = deep_merge(committed_params(), TINY_OVERRIDE)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run(["git", "init", "-q"], root)
    run(["git", "add", "-A"], root)
    run(["git", "commit", "-qm", "tiny pipeline"], root)
    yield root
    stop_processes_under(root)


@pytest.fixture(scope="module")
def first_run(project) -> dict:
    output = dvc(project, "repro")
    run(["git", "add", "-A"], project)
    run(["git", "commit", "-qm", "first run"], project)
    return {
        "output": output,
        "metrics": read_metrics(project),
        "lock_outputs": lock_outputs(project),
        "commit": run(["git", "rev-parse", "HEAD"], project).strip(),
    }


def reset_to_first_run(project: Path, first_run: dict) -> None:
    """The workspace exactly as the first run committed it: git files and DVC outputs."""
    run(["git", "reset", "-q", "--hard", first_run["commit"]], project)
    run(["git", "clean", "-qfd"], project)
    dvc(project, "checkout", "--force")


@pytest.fixture(autouse=True)
def committed_workspace(project, first_run):
    """Each test starts from the committed first run and leaves no process behind."""
    reset_to_first_run(project, first_run)
    yield
    leftovers = [" ".join(p.cmdline()) for p in processes_under(project)]
    killed = stop_processes_under(project, grace=15)
    assert not leftovers or not killed, f"processes left running by the test: {killed}"


@pytest.fixture(scope="module")
def rate_experiment(project, first_run) -> dict:
    """One workspace experiment with another learning rate, shared by the tests that read it."""
    reset_to_first_run(project, first_run)
    output = dvc(project, "exp", "run", "-n", "rate-0.003", "-S", "train.learning_rate=0.003")
    diff = json.loads(dvc(project, "metrics", "diff", "--json"))
    return {"name": "rate-0.003", "output": output, "diff": diff}


def test_repro_builds_every_stage_with_sane_outputs(project, first_run):
    expected = {
        f"{stage}@{key}"
        for stage in ("download", "preprocess", "train", "evaluate")
        for key in DATASETS
    } | {"check_params"}
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
        plots = project / "plots" / key
        per_class = pd.read_csv(plots / "per_class.csv")
        assert list(per_class["class"].astype(str)) == list(spec.class_names)
        assert per_class["support"].sum() == 500
        assert list(per_class.columns) == ["class", "precision", "recall", "f1", "support"]

        summary = json.loads((project / "metrics" / f"{key}_data.json").read_text())
        assert summary == {"train_samples": 2700, "val_samples": 300, "test_samples": 500}
        counts = pd.read_csv(plots / "class_counts.csv")
        assert counts[["train", "val", "test"]].sum().tolist() == [2700, 300, 500]
        # DVCLive's summary: the kept epoch (the only one) and the environment, as a list
        # (which keeps it out of `dvc metrics show`).
        training = json.loads((project / "dvclive" / key / "metrics.json").read_text())
        assert training["step"] == 1 and training["selected_epoch"] == 1
        assert 0.5 < training["eval"]["accuracy"] <= 1.0
        assert isinstance(training["environment"], list)

        assert len((plots / "confusion.csv").read_text().splitlines()) == 501
        history = read_training_history(project / "dvclive" / key / "plots/metrics")
        assert list(history.columns) == ["epoch", *TRAINING_LOGS]
        assert history["epoch"].tolist() == [1]
        assert history["val_accuracy"].tolist() == [training["eval"]["accuracy"]]
        for png in ("confusion_matrix.png", "samples.png"):
            drawn_png(plots / png)
        drawn_png(plots / "training_curves.png", min_share=0.0)  # one epoch: a dot per curve

    shown = json.loads(dvc(project, "metrics", "show", "--json"))
    workspace = shown[""]["data"]
    for key in DATASETS:
        assert (
            workspace[f"metrics/{key}.json"]["data"]["accuracy"]
            == first_run["metrics"][key]["accuracy"]
        )
        # The table shows what training kept, not a dozen environment strings.
        training = workspace[f"dvclive/{key}/metrics.json"]["data"]
        assert {"train", "eval", "step", "selected_epoch"} <= set(training)
        assert "environment" not in training
    table = dvc(project, "metrics", "show")
    assert "environment" not in table and "tensorflow" not in table


def test_second_repro_runs_nothing(project, first_run):
    output = dvc(project, "repro")
    assert stages_run(output) == set()
    assert "Data and pipelines are up to date" in dvc(project, "status")


def test_dvc_remote_round_trip(project, first_run, tmp_path):
    """Share through a DVC remote: push here, pull into a fresh clone, nothing to re-run."""
    remote = tmp_path / "dvc-remote"
    dvc(project, "remote", "add", "--default", "shared", str(remote))
    run(["git", "commit", "-qam", "add a DVC remote"], project)
    dvc(project, "push")

    clone = tmp_path / "clone"
    run(["git", "clone", "-q", str(project), str(clone)], tmp_path)
    assert not (clone / "models" / "mnist.keras").exists()
    dvc(clone, "pull")
    assert stages_run(dvc(clone, "repro")) == set()
    assert "Data and pipelines are up to date" in dvc(clone, "status")
    assert (
        json.loads(dvc(clone, "metrics", "show", "--json"))[""]["data"]
        == json.loads(dvc(project, "metrics", "show", "--json"))[""]["data"]
    )
    for key in DATASETS:
        assert (clone / "models" / f"{key}.keras").read_bytes() == (
            project / "models" / f"{key}.keras"
        ).read_bytes()


def predict(project: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "mnist_cnn.tools.predict", *args],
        cwd=project,
        env=command_env(),
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )


def save_test_pngs(project: Path, dataset: str, count: int, directory: Path) -> list[str]:
    """The first `count` prepared test images, written back as 8-bit PNG files."""
    images = np.load(project / "data/prepared" / dataset / "test_images.npy", allow_pickle=False)
    paths = []
    for index in range(count):
        path = directory / f"{dataset}_{index}.png"
        Image.fromarray(np.round(images[index, ..., 0] * 255).astype(np.uint8)).save(path)
        paths.append(str(path))
    return paths


def test_predict_matches_evaluate_and_reports_bad_files(project, first_run, tmp_path):
    """The command's top class for the first 20 test images is evaluate's, for each
    dataset; in Fashion-MNIST's batch, bad files each get their error and do not stop
    the good ones (one process per dataset: each loads TensorFlow and the model)."""
    good = tmp_path / "fashion_mnist_0.png"
    missing, text, cut = tmp_path / "missing.png", tmp_path / "notes.png", tmp_path / "cut.png"
    bomb, blank = tmp_path / "bomb.png", tmp_path / "blank.png"
    bad = [missing, text, cut, bomb, blank]
    for dataset in DATASETS:
        paths = save_test_pngs(project, dataset, 20, tmp_path)
        rows = (project / "plots" / dataset / "confusion.csv").read_text().splitlines()[1:21]
        expected = [row.rsplit(",", 1)[1] for row in rows]
        if dataset == "fashion_mnist":
            text.write_text("not a picture")
            data = good.read_bytes()
            cut.write_bytes(data[: len(data) // 2])
            png_claiming_size(bomb, 40000, 40000)
            Image.fromarray(np.full((28, 28), 255, dtype=np.uint8)).save(blank)
            paths = [*map(str, bad), *paths]  # bad files first: the good ones still come
        result = predict(project, "--dataset", dataset, "--json", *paths)
        answers = json.loads(result.stdout)
        good_answers = answers[-20:]
        assert [a["predictions"][0]["class"] for a in good_answers] == expected
        for answer in good_answers:
            probabilities = [p["probability"] for p in answer["predictions"]]
            assert len(probabilities) == 3 and probabilities == sorted(probabilities, reverse=True)
        assert result.returncode == (1 if dataset == "fashion_mnist" else 0), result.stderr

    errors = [answer.get("error") for answer in answers[: len(bad)]]
    assert answers[0] == {"path": str(missing), "error": "no such file"}
    assert errors[1].startswith("not a PNG, JPEG, GIF, BMP, TIFF or WebP image")
    assert errors[2].startswith("corrupt image")
    assert "too many pixels" in errors[3]
    assert errors[4].startswith("no object found")
    for path in bad:
        assert f"predict: {path}: " in result.stderr
    assert "Traceback" not in result.stderr

    result = predict(project, "--dataset", "mnist", "--model", "nowhere.keras", str(good))
    assert result.returncode == 2
    assert "run `dvc repro train@mnist` first" in result.stderr


def test_predict_handles_a_photo_of_a_digit_on_paper(project, first_run, tmp_path):
    """Digits 'photographed' dark-on-light, larger, off-centre, noisy, saved as JPEG."""
    from mnist_cnn.tools.predict import prepare_image

    paths = save_test_pngs(project, "mnist", 40, tmp_path)
    rng = np.random.default_rng(0)
    photos, correlations = [], []
    for index, path in enumerate(paths):
        ink = 255 - np.asarray(Image.open(path).resize((112, 112), Image.BICUBIC))
        page = np.full((160, 220), 230.0)
        page[30:142, 70:182] = ink * (210 / 255) + 15
        page += rng.normal(0, 5, page.shape)
        photo = tmp_path / f"photo_{index}.jpg"
        Image.fromarray(np.clip(page, 0, 255).astype(np.uint8)).convert("RGB").save(photo)
        photos.append(str(photo))
        original = np.asarray(Image.open(path), dtype=np.float32) / 255
        recovered = prepare_image(photo, "mnist")[..., 0]
        correlations.append(np.corrcoef(original.ravel(), recovered.ravel())[0, 1])
    # Photos come back as (nearly) the original 28 x 28 test images. Not all exactly:
    # MNIST's own boxes are not always 20 px once anti-aliased (over the first 200 test
    # digits: median 0.979, 5th percentile 0.80).
    assert np.median(correlations) > 0.95 and min(correlations) > 0.5, correlations

    # And the command line reads the JPEG photos as the digits they show: the model's
    # answer for a photo is its answer for the original test image.
    result = predict(project, "--dataset", "mnist", "--json", *photos, *paths)
    assert result.returncode == 0, result.stderr
    top = [answer["predictions"][0]["class"] for answer in json.loads(result.stdout)]
    agree = np.mean(np.array(top[: len(photos)]) == np.array(top[len(photos) :]))
    assert agree >= 0.85, f"photo and original predicted alike for only {agree:.0%}"


def lock_outputs(project: Path) -> dict[str, str]:
    """{output path: md5} for every output recorded in dvc.lock."""
    lock = yaml.safe_load((project / "dvc.lock").read_text())
    return {
        out["path"]: out["md5"]
        for stage in lock["stages"].values()
        for out in stage.get("outs", [])
    }


def test_forced_rerun_reproduces_every_output_bit_for_bit(project, first_run):
    """Every stage of one dataset's chain recomputed (the other dataset runs the same
    code): the same bytes for every output, so dvc.lock does not change."""
    before = (project / "dvc.lock").read_text()
    output = dvc(project, "repro", "--force", "evaluate@mnist")
    assert stages_run(output) == {"check_params"} | {
        f"{stage}@mnist" for stage in ("download", "preprocess", "train", "evaluate")
    }
    assert lock_outputs(project) == first_run["lock_outputs"]
    assert (project / "dvc.lock").read_text() == before
    assert "nothing to commit" in run(["git", "status"], project)


OFFLINE_TEMPLATE = PROJECT_ROOT / ".dvc/tmp/plots_offline.html"
# Per dataset in dvc.yaml: top-level loss, accuracy (train vs validation) and normalised
# confusion; the stages' own: DVCLive's five TSVs (train accuracy, loss and learning rate;
# eval accuracy and loss), class counts, per-class F1 and confusion counts.
VEGA_PLOTS = 11


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def test_plots_html_renders_offline_in_chromium(project, first_run, tmp_path):
    browser = chromium()
    if browser is None and os.geteuid() == 0:
        pytest.fail(
            "Chromium is missing, yet `make test` as root installs it: see scripts/setup.sh"
        )
    if browser is None:  # allowed in CI: tests/skip_policy.py
        pytest.skip(
            "Chromium is not installed (Debian package `chromium`; `make test` installs it as root)"
        )
    assert OFFLINE_TEMPLATE.is_file(), "offline template missing: run scripts/setup.sh (needs npm)"
    dvc(project, "plots", "show", "--html-template", str(OFFLINE_TEMPLATE))
    page = project / "dvc_plots" / "index.html"
    html = page.read_text()
    assert "cdn.jsdelivr" not in html  # nothing is fetched from the network

    flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tmp_path / 'profile'}",
        "--virtual-time-budget=20000",
    ]
    dom = subprocess.run(
        [browser, *flags, "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=180
    ).stdout
    # vega-embed draws each chart into a <canvas> inside its container div.
    assert dom.count("<canvas") == VEGA_PLOTS * len(DATASETS), dom[:2000]
    assert "Error" not in re.sub(r"<script.*?</script>", "", dom, flags=re.S)

    shot = tmp_path / "plots.png"
    subprocess.run(
        [browser, *flags, "--window-size=1400,2400", f"--screenshot={shot}", page.as_uri()],
        capture_output=True,
        timeout=180,
    )
    pixels = np.asarray(Image.open(shot).convert("RGB"))
    non_white = np.mean(pixels.min(axis=2) < 240)
    assert non_white > 0.02, f"screenshot is nearly blank ({non_white:.1%} non-white)"


def test_exp_run_with_train_param_reruns_only_train_and_evaluate(rate_experiment, first_run):
    assert stages_run(rate_experiment["output"]) == {
        f"{stage}@{key}" for stage in ("train", "evaluate") for key in DATASETS
    } | {"check_params"}
    for key in DATASETS:
        changes = rate_experiment["diff"][f"metrics/{key}.json"]
        assert "loss" in changes, changes
        assert changes["loss"]["old"] == first_run["metrics"][key]["loss"]
        assert changes["loss"]["new"] != changes["loss"]["old"]


def key_one_dataset_overrides(params: dict) -> tuple[str, str, str]:
    """A positive float `train` key exactly one dataset overrides: (key, it, the other)."""
    overrides = {name: set(flatten(entry["train"])) for name, entry in params["datasets"].items()}
    for key in sorted(set().union(*overrides.values())):
        owners = [name for name, keys in overrides.items() if key in keys]
        shared = functools.reduce(
            lambda node, part: node.get(part, {}), key.split("."), params["train"]
        )
        if len(owners) == 1 and isinstance(shared, float) and shared > 0:
            return key, owners[0], next(name for name in overrides if name != owners[0])
    pytest.fail("no float train key is overridden by exactly one dataset in params.yaml")


def test_shared_key_a_dataset_overrides_reruns_only_the_other_dataset(project, first_run):
    """A shared `train` key one dataset overrides (in params.yaml, e.g. Fashion-MNIST's
    dropout): changing the shared value re-runs the other dataset's train and evaluate
    only, and going back restores them from the run-cache; the overriding dataset's
    stages never run."""
    params = yaml.safe_load((project / "params.yaml").read_text())
    key, overriding, other = key_one_dataset_overrides(params)
    shared = functools.reduce(dict.get, key.split("."), params["train"])

    output = dvc(project, "exp", "run", "-S", f"train.{key}={shared / 2:g}")
    assert stages_run(output) == {"check_params", f"train@{other}", f"evaluate@{other}"}
    assert f"Stage 'train@{overriding}' didn't change" in output

    output = dvc(project, "exp", "run", "-S", f"train.{key}={shared:g}")
    assert {f"train@{other}", f"evaluate@{other}"} <= stages_restored(output)
    assert stages_run(output) == {"check_params"}  # never run-cached; nothing else runs
    assert read_metrics(project) == first_run["metrics"]


def test_exp_push_and_pull_through_remotes(project, rate_experiment, tmp_path):
    """An experiment travels like a branch: git refs to a git remote, data to the DVC remote."""
    name = rate_experiment["name"]
    assert name in dvc(project, "exp", "list", "--name-only").split()
    origin = tmp_path / "origin.git"
    run(["git", "init", "-q", "--bare", str(origin)], tmp_path)
    run(["git", "remote", "add", "origin", str(origin)], project)
    try:
        run(["git", "push", "-q", "origin", "HEAD"], project)
        dvc(project, "remote", "add", "--local", "--default", "shared", str(tmp_path / "dvc"))
        dvc(project, "exp", "push", "origin", name)
    finally:
        run(["git", "remote", "remove", "origin"], project)
        dvc(project, "remote", "remove", "--local", "shared")

    clone = tmp_path / "teammate"
    run(["git", "clone", "-q", str(origin), str(clone)], tmp_path)
    dvc(clone, "remote", "add", "--local", "--default", "shared", str(tmp_path / "dvc"))
    dvc(clone, "exp", "pull", "origin", name)
    assert name in dvc(clone, "exp", "list", "--name-only").split()
    shared = {
        exp["name"]: exp for exp in experiments(json.loads(dvc(clone, "exp", "show", "--json")))
    }
    assert shared[name]["params"]["train"]["learning_rate"] == 0.003
    dvc(clone, "exp", "apply", name)
    dvc(clone, "pull")
    assert (clone / "models" / "mnist.keras").is_file()


def experiments(table: list[dict]) -> list[dict]:
    """Flatten `dvc exp show --json` into [{name, params, metrics}] for every experiment."""
    found = []

    def visit(node):
        data = node.get("data") or {}
        if data.get("params") and node.get("rev") != "workspace":
            found.append(
                {
                    "name": node.get("name") or data.get("rev"),
                    "params": data["params"]["params.yaml"]["data"],
                    "metrics": {
                        path: value.get("data", {})
                        for path, value in (data.get("metrics") or {}).items()
                    },
                }
            )
        for child in node.get("experiments") or []:
            for rev in child.get("revs") or []:
                visit(rev)

    for node in table:
        visit(node)
    return found


def test_queued_sweep_runs_both_points(project, tmp_path):
    """`dvc queue start` forks celery workers: they get no pipe of ours to hold (their
    output goes to a file), we wait on the queue's own state, and none outlives the test.
    The sweep sets MNIST's own rate (`++`: add the key or replace it), so each point
    trains MNIST only and takes Fashion-MNIST's results from the first run."""
    dvc(project, "exp", "run", "--queue", "-S", "++datasets.mnist.train.learning_rate=0.002,0.004")
    log = tmp_path / "queue-start.log"
    try:
        with log.open("w") as handle:
            started = run_bounded(
                [sys.executable, "-m", "dvc", "queue", "start", "-j", "2"],
                project,
                command_env(),
                60,
                stdout=handle,
            )
        assert started.returncode == 0, log.read_text()
        deadline = time.monotonic() + 200
        while True:
            status = dvc(project, "queue", "status")
            if not re.search(r"\b(Queued|Running)\b", status):
                break
            assert time.monotonic() < deadline, f"queue not done after 200 s:\n{status}"
            time.sleep(2)
    finally:
        # Workers idle ~10 s after the queue empties, then exit; `queue stop` asks them
        # to go now. Whatever still runs after that is killed (and fails the test below).
        attempt([sys.executable, "-m", "dvc", "queue", "stop"], project)
        lingering = stop_processes_under(project, grace=30)
    assert "Failed" not in status, dvc(project, "queue", "logs", status.split()[-1])
    assert not lingering, f"queue workers still running 30 s after `dvc queue stop`: {lingering}"

    swept = {
        exp["params"]["datasets"]["mnist"]["train"].get("learning_rate"): exp
        for exp in experiments(json.loads(dvc(project, "exp", "show", "--json")))
    }
    assert {0.002, 0.004} <= set(swept)
    for rate in (0.002, 0.004):
        for key in DATASETS:
            assert 0.0 < swept[rate]["metrics"][f"metrics/{key}.json"]["accuracy"] <= 1.0
    mnist, fashion = "metrics/mnist.json", "metrics/fashion_mnist.json"
    assert swept[0.002]["metrics"][mnist] != swept[0.004]["metrics"][mnist]
    assert swept[0.002]["metrics"][fashion] == swept[0.004]["metrics"][fashion]


def test_bad_param_fails_fast_and_loses_nothing(project, first_run):
    """The commonest mistake: an out-of-range value. DVC must stop before it removes
    any output, with one line that names the key, the value and what is allowed."""
    model = project / "models" / "mnist.keras"
    model_bytes = model.read_bytes()
    result = attempt(
        [sys.executable, "-m", "dvc", "exp", "run", "-S", "train.model.conv_dropout=1.5"], project
    )
    assert result.returncode != 0
    message = (
        "check_params: params.yaml: train.model.conv_dropout = 1.5 is not allowed: "
        "input should be less than 1"
    )
    assert message in result.stdout.splitlines(), result.stdout
    assert "Traceback" not in result.stdout
    assert stages_run(result.stdout) == {"check_params"}  # TensorFlow never started
    # Every result is still there; only the edited params.yaml differs from the commit.
    assert model.read_bytes() == model_bytes
    assert read_metrics(project) == first_run["metrics"]
    assert git_status(project).split() == ["M", "params.yaml"]
    # The documented way back leaves the workspace exactly as committed.
    run(["bash", "-c", RECOVER], project)
    assert git_status(project) == ""
    assert "Data and pipelines are up to date" in dvc(project, "status")


def test_recover_after_a_stage_failed_mid_pipeline(project, first_run):
    """A failure *after* DVC removed a stage's outputs (here: a multi-worker strategy with
    no cluster) costs the workspace its results; README's one command brings them back."""
    result = attempt(
        [
            sys.executable,
            "-m",
            "dvc",
            "exp",
            "run",
            "-S",
            "train.distribution.strategy=multi_worker",
        ],
        project,
    )
    assert result.returncode != 0
    assert "TF_CONFIG" in result.stdout
    # DVC removed the failed stage's model before running it.
    assert not all((project / "models" / f"{key}.keras").exists() for key in DATASETS)

    run(["bash", "-c", RECOVER], project)
    assert git_status(project) == ""
    assert "Data and pipelines are up to date" in dvc(project, "status")
    assert lock_outputs(project) == first_run["lock_outputs"]
    assert read_metrics(project) == first_run["metrics"]


def test_restore_saves_a_finished_run_before_reverting_it(project, first_run, rate_experiment):
    """`make restore` after a run that *succeeded* (here: the rate experiment applied to
    the workspace) keeps it as an experiment instead of silently reverting it."""
    dvc(project, "exp", "apply", rate_experiment["name"])
    applied = read_metrics(project)
    assert applied != first_run["metrics"]
    output = run(["bash", "-c", RECOVER], project)
    assert git_status(project) == ""
    assert read_metrics(project) == first_run["metrics"]
    assert lock_outputs(project) == first_run["lock_outputs"]
    name = re.search(r"saved it as experiment (\S+);", output).group(1)
    dvc(project, "exp", "apply", name)  # and it comes back, results and models
    assert read_metrics(project) == applied
    assert "Data and pipelines are up to date" in dvc(project, "status")


def test_restore_refuses_to_overwrite_an_output_dvc_has_no_copy_of(project, first_run):
    """A model written outside DVC (e.g. by running a stage by hand) is not overwritten."""
    model = project / "models/mnist.keras"
    model.write_bytes(b"a model trained by hand")
    (project / "params.yaml").write_text(
        (project / "params.yaml").read_text().replace("seed: 42", "seed: 7")
    )
    result = attempt(["bash", "-c", RECOVER], project)
    assert result.returncode != 0
    assert "refused" in result.stdout and "models/mnist.keras" in result.stdout
    assert model.read_bytes() == b"a model trained by hand"
    assert "seed: 7" in (project / "params.yaml").read_text()  # nothing was reverted


def test_restore_with_nothing_to_do_says_so_and_changes_nothing(project, first_run):
    """Nothing to restore, even with an untracked file among the results (a note, a
    benchmark's output): no run is saved, the file stays."""
    stashed = run(["git", "stash", "list"], project)
    note = project / "metrics" / "notes.txt"
    note.write_text("not a pipeline result")
    output = run(["bash", "-c", RECOVER], project)
    assert "restore: nothing to do" in output
    assert note.read_text() == "not a pipeline result"
    note.unlink()
    assert git_status(project) == ""
    assert run(["git", "stash", "list"], project) == stashed


def test_restore_discard_drops_a_finished_run_without_saving_it(
    project, first_run, rate_experiment
):
    dvc(project, "exp", "apply", rate_experiment["name"])
    saved_before = dvc(project, "exp", "list", "--name-only").split()
    stashed = run(["git", "stash", "list"], project)
    output = run([sys.executable, "-m", "mnist_cnn.tools.restore", "--discard"], project)
    assert "saved it as experiment" not in output and "stash" not in output
    assert dvc(project, "exp", "list", "--name-only").split() == saved_before
    assert git_status(project) == ""
    assert read_metrics(project) == first_run["metrics"]
    assert run(["git", "stash", "list"], project) == stashed


def test_restore_keeps_an_unrun_params_edit_in_git_stash(project, first_run):
    """An edit of params.yaml that was never run is no failed run to undo: `make restore`
    puts it into git's stash (and says so), and `git stash pop` brings it back."""
    params = project / "params.yaml"
    edited = params.read_text().replace("seed: 42", "seed: 7")
    params.write_text(edited)
    output = run(["bash", "-c", RECOVER], project)
    assert "git stash pop" in output, output
    assert git_status(project) == ""
    run(["git", "stash", "pop"], project)
    assert params.read_text() == edited


def test_hand_edit_of_effective_params_is_refused_not_ignored(project, first_run):
    """data/params/<ds>.yaml is written from params.yaml; `-S` on it (what VS Code offers
    for every params file) stops at check_params with the params.yaml spelling to use."""
    result = attempt(
        [sys.executable, "-m", "dvc", "exp", "run", "-S", "data/params/mnist.yaml:train.epochs=2"],
        project,
    )
    assert result.returncode != 0
    assert "data/params/mnist.yaml was edited" in result.stdout, result.stdout
    assert "-S datasets.mnist.train.epochs=2" in result.stdout
    assert stages_run(result.stdout) == {"check_params"}
    run(["bash", "-c", RECOVER], project)
    assert git_status(project) == ""
    assert read_metrics(project) == first_run["metrics"]


def test_params_of_older_commits_read_in_a_clone_without_cache(project, rate_experiment, tmp_path):
    """The train and evaluate stages' params (data/params/<ds>.yaml) are in git: a fresh
    clone with an empty DVC cache diffs them against an older commit, and `dvc exp show`
    has every params column it has where the cache exists, with no error entry."""
    dvc(project, "exp", "apply", rate_experiment["name"])
    run(["git", "commit", "-qam", "learning rate 0.003"], project)
    clone = tmp_path / "clone"
    run(["git", "clone", "-q", str(project), str(clone)], tmp_path)

    diff = attempt([sys.executable, "-m", "dvc", "params", "diff", "HEAD~1", "--json"], clone)
    assert diff.returncode == 0 and "failed to load" not in diff.stdout, diff.stdout
    changed = json.loads(diff.stdout)
    for key in DATASETS:
        assert (
            changed[f"data/params/{key}.yaml"]["train.learning_rate"]["old"]
            == (committed_params()["train"]["learning_rate"])
        )

    def params_columns(root: Path) -> set[str]:
        """Every params column of the two commits' rows of `dvc exp show --json` (not of
        experiments: other tests add some to the project, the clone has none); fails on
        an error entry."""
        columns: set[str] = set()
        for node in json.loads(dvc(root, "exp", "show", "--json", "-n", "2")):
            assert node.get("error") is None, node["error"]
            for path, entry in ((node.get("data") or {}).get("params") or {}).items():
                assert entry.get("error") is None, (path, entry)
                columns |= {f"{path}:{name}" for name in flatten(entry.get("data", {}))}
        return columns

    assert params_columns(clone) == params_columns(project)


def flatten(node: dict, prefix: str = "") -> list[str]:
    return [
        name
        for key, value in node.items()
        for name in (
            flatten(value, f"{prefix}{key}.") if isinstance(value, dict) else [f"{prefix}{key}"]
        )
    ]


def test_going_back_to_earlier_params_restores_from_the_run_cache(
    project, first_run, rate_experiment
):
    """defaults -> an experiment -> defaults again: train and evaluate come back from DVC's
    run-cache (seconds), not from retraining, with the first run's results. (The rate
    experiment ran earlier: its params now restore from the run-cache too.)"""
    trained = (project / "dvc.lock").read_text()
    output = dvc(project, "exp", "run", "-S", "train.learning_rate=0.003")
    assert stages_run(output) == {"check_params"}, output
    assert read_metrics(project) != first_run["metrics"]
    assert (project / "dvc.lock").read_text() != trained

    run(["git", "checkout", "HEAD", "--", "params.yaml"], project)
    started = time.monotonic()
    output = dvc(project, "repro")
    seconds = time.monotonic() - started
    # check_params is never run-cached (its effective params files are git-tracked
    # outputs, dvc.yaml says why): it runs, writes the same bytes, and nothing after it does.
    assert stages_run(output) == {"check_params"}, output
    assert {
        f"{stage}@{key}" for stage in ("train", "evaluate") for key in DATASETS
    } <= stages_restored(output)
    assert read_metrics(project) == first_run["metrics"]
    assert lock_outputs(project) == first_run["lock_outputs"]
    print(f"restored from the run-cache by `dvc repro` in {seconds:.1f} s")

    # The same through `dvc exp run` with the defaults' value given explicitly.
    dvc(project, "exp", "run", "-S", "train.learning_rate=0.003")
    rate = committed_params()["train"]["learning_rate"]
    output = dvc(project, "exp", "run", "-S", f"train.learning_rate={rate}")
    assert stages_run(output) == {"check_params"}, output
    assert read_metrics(project) == first_run["metrics"]


def workspace_row(table: list[dict]) -> dict:
    row = next(row for row in table if row.get("rev") == "workspace")
    return row.get("data", {})


def start_in_background(args: list[str], project: Path, log: Path) -> subprocess.Popen:
    """Start a DVC command in its own process group (to kill whole), output to `log`."""
    with log.open("w") as handle:
        return subprocess.Popen(
            args,
            cwd=project,
            env=command_env(),
            stdin=subprocess.DEVNULL,
            stdout=handle,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def logged_epochs(summary: Path) -> int:
    """The last epoch DVCLive's summary holds (0 before the first one is written)."""
    try:
        return int(json.loads(summary.read_text()).get("step", 0))
    except (OSError, ValueError):  # not there yet, or being rewritten
        return 0


def run_records(project: Path) -> set[Path]:
    """DVC's records of experiment runs: their info files and temporary workspaces."""
    folders = [project / ".dvc/tmp/exps" / name for name in ("run", "standalone")]
    return {path for folder in folders if folder.is_dir() for path in folder.iterdir()}


def forget_runs_since(project: Path, before: set[Path]) -> None:
    """Remove the records of runs started since `before` (runs this test killed: DVC keeps
    listing a killed run as running, and `dvc exp clean` keeps it), and no other: the
    queue's finished runs must keep theirs."""
    for path in run_records(project) - before:
        shutil.rmtree(path) if path.is_dir() else path.unlink()


def temp_run_files(project: Path, relative: str) -> list[Path]:
    """`relative` in each temporary workspace of `dvc exp run --temp` that has it.

    Looked up by name, not with a recursive glob: DVC and DVCLive delete directories of
    a starting run while a glob would walk them."""
    found = []
    for workspace in run_records(project):
        path = workspace / relative
        if path.is_file():
            found.append(path)
    return found


def test_exp_show_reports_epochs_while_the_stage_trains(project, first_run, tmp_path):
    """Progress the DVC way: while `dvc exp run` trains, `dvc exp show --json` reads the
    epochs finished so far from DVCLive's summary (and the TSVs their rows). The run is
    frozen (SIGSTOP) once two epochs are logged, so it is provably still training while
    `dvc exp show` runs, however fast the machine."""
    log = tmp_path / "exp.log"
    process = start_in_background(
        [sys.executable, "-m", "dvc", "exp", "run", "-S", "datasets.mnist.train.epochs=60"],
        project,
        log,
    )
    summary = project / "dvclive/mnist/metrics.json"
    try:
        deadline = time.monotonic() + 200
        while logged_epochs(summary) < 2 and process.poll() is None:
            assert time.monotonic() < deadline, f"no 2 epochs in 200 s:\n{log.read_text()}"
            time.sleep(0.2)
        assert process.poll() is None, f"training ended before it was observed:\n{log.read_text()}"
        os.killpg(process.pid, signal.SIGSTOP)
        shown = workspace_row(json.loads(dvc(project, "exp", "show", "--json")))
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=60)
    metrics = shown["metrics"][summary.relative_to(project).as_posix()]["data"]
    assert metrics["step"] >= 2 and "selected_epoch" not in metrics, metrics  # not finished
    history = read_training_history(project / "dvclive/mnist/plots/metrics")
    assert len(history) >= 2 and list(history["epoch"][:2]) == [1, 2]


def test_exp_show_reports_epochs_of_a_temp_run_while_it_trains(project, first_run, tmp_path):
    """The same for `dvc exp run --temp` (how queued runs train too): DVCLive writes into
    the temporary workspace, and `dvc exp show` lists the running experiment with them."""
    log = tmp_path / "temp.log"
    records = run_records(project)
    process = start_in_background(
        [
            sys.executable,
            "-m",
            "dvc",
            "exp",
            "run",
            "--temp",
            "-n",
            "live-temp",
            "-S",
            "datasets.mnist.train.epochs=60",
        ],
        project,
        log,
    )
    try:
        deadline = time.monotonic() + 240
        while process.poll() is None:
            summaries = temp_run_files(project, "dvclive/mnist/metrics.json")
            if summaries and logged_epochs(summaries[0]) >= 2:
                break
            assert time.monotonic() < deadline, f"no 2 epochs in 240 s:\n{log.read_text()}"
            time.sleep(0.2)
        assert process.poll() is None, f"the run ended before it was observed:\n{log.read_text()}"
        os.killpg(process.pid, signal.SIGSTOP)
        table = json.loads(dvc(project, "exp", "show", "--json"))
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=60)
        forget_runs_since(project, records)
    running = [
        rev["data"]
        for node in table
        for child in node.get("experiments") or []
        if child.get("name") == "live-temp"
        for rev in child.get("revs") or []
    ]
    assert running, json.dumps(table)[:3000]
    metrics = running[0]["metrics"]["dvclive/mnist/metrics.json"]["data"]
    assert metrics["step"] >= 2 and "selected_epoch" not in metrics, metrics


def test_kill_during_training_then_repro_completes(project, first_run, tmp_path):
    """kill -9 of the whole `dvc repro` process group mid-training loses nothing, and
    `make restore` then brings the committed state back. (A write interrupted half-way:
    tests/test_atomic_writes.py.)"""
    model = project / "models" / "mnist.keras"
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["datasets"]["mnist"]["train"]["epochs"] = 100  # long enough to be killed mid-training
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))

    log = tmp_path / "repro.log"
    process = start_in_background(
        [sys.executable, "-m", "dvc", "repro", "train@mnist"], project, log
    )
    try:
        deadline = time.monotonic() + 150
        # Wait until Keras has started the second epoch (one line per epoch in a log).
        while time.monotonic() < deadline and process.poll() is None:
            if "Epoch 2/100" in log.read_text():
                break
            time.sleep(0.2)
        assert process.poll() is None, "training ended before it could be interrupted"
        assert time.monotonic() < deadline, f"no epoch finished within 150 s:\n{log.read_text()}"
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=60)

    # The killed stage left DVCLive's files of the epochs so far, and no model (DVC
    # removed it before the run): `make restore` drops them and brings every committed
    # result back, models included.
    summary = json.loads((project / "dvclive/mnist/metrics.json").read_text())
    assert summary["step"] >= 1 and "selected_epoch" not in summary
    assert not model.exists()
    result = run(["bash", "-c", RECOVER], project)
    assert "dropping an interrupted training run's progress" in result
    assert git_status(project) == ""
    # The next run (the first run's params) completes: nothing is left to re-run.
    dvc(project, "repro")
    assert "Data and pipelines are up to date" in dvc(project, "status")
    assert read_metrics(project)["mnist"] == first_run["metrics"]["mnist"]
    assert lock_outputs(project) == first_run["lock_outputs"]


def test_model_registry_artifact_get_then_predict(project, first_run, tmp_path):
    """dvc.yaml's `artifacts:` names each model: a consumer fetches it by name from the
    repository (here a local path, with a local DVC remote) and predicts with it."""
    dvc(project, "remote", "add", "--default", "shared", str(tmp_path / "dvc-remote"))
    run(["git", "commit", "-qam", "share through a DVC remote"], project)
    dvc(project, "push")
    # A version is a git tag (GTO's format, name@version): what `artifacts get` resolves.
    for name in ("mnist-cnn", "fashion-mnist-cnn"):
        run(["gto", "register", name, "--version", "v1.0.0"], project)

    consumer = tmp_path / "consumer"
    consumer.mkdir()
    fetched = consumer / "mnist.keras"
    dvc(consumer, "artifacts", "get", str(project), "mnist-cnn", "-o", str(fetched))
    assert fetched.read_bytes() == (project / "models" / "mnist.keras").read_bytes()

    image = save_test_pngs(project, "mnist", 1, tmp_path)
    result = predict(project, "--dataset", "mnist", "--model", str(fetched), "--json", *image)
    assert result.returncode == 0, result.stderr
    expected = (project / "plots/mnist/confusion.csv").read_text().splitlines()[1]
    assert json.loads(result.stdout)[0]["predictions"][0]["class"] == expected.rsplit(",", 1)[1]

    shown = json.loads(
        run(
            [
                sys.executable,
                "-c",
                "import json, dvc.api; print(json.dumps("
                "dvc.api.artifacts_show('fashion-mnist-cnn')))",
            ],
            project,
        )
    )
    assert shown["path"] == "models/fashion_mnist.keras"


def test_compare_command_reads_real_experiments(project, rate_experiment, tmp_path):
    """mnist-cnn-compare against DVC itself: the experiment's changed param and results."""
    png = tmp_path / "compare.png"
    output = run(
        [sys.executable, "-m", "mnist_cnn.tools.compare", "--csv", "--png", str(png)], project
    )
    csv = "\n".join(line for line in output.splitlines() if not line.startswith("compare:"))
    table = pd.read_csv(io.StringIO(csv))
    row = table[table["experiment"].str.startswith(rate_experiment["name"])].iloc[0]
    assert row["train.learning_rate"] == 0.003
    assert row["mnist loss"] == rate_experiment["diff"]["metrics/mnist.json"]["loss"]["new"]
    assert table["experiment"].iloc[0].startswith("baseline")
    drawn_png(png)
