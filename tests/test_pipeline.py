"""Integration: the real DVC pipeline, real data, real TensorFlow, on a tiny params override.

What a user does with the pipeline in a workspace: `dvc repro`, its outputs and the
forced rerun, sharing through a remote and the model registry, predicting with the
models, the plots page, and failing runs that lose nothing (`make restore`). The tiny
project and its per-test reset: tests/pipeline_project.py.
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
import pandas as pd
import pytest
import yaml
from PIL import Image

from mnist_cnn.artifacts import TRAINING_LOGS, read_training_history
from mnist_cnn.datasets import DATASETS
from tests.conftest import (
    PROJECT_ROOT,
    drawn_png,
)
from tests.pipeline_project import (
    RECOVER,
    TIMEOUT,
    attempt,
    command_env,
    dvc,
    git_status,
    lock_outputs,
    read_metrics,
    run,
    stages_run,
    start_in_background,
)
from tests.test_predict import png_claiming_size

# The first test also waits for the session's tiny project to be built and run (beside
# another worker's training under `make test`): more than pyproject.toml's 300 s allows.
pytestmark = [
    pytest.mark.integration,
    pytest.mark.usefixtures("committed_workspace"),
    pytest.mark.timeout(600),
]


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
        assert process.poll() is None, f"training ended before it was killed:\n{log.read_text()}"
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
