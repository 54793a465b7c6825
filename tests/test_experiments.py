"""Integration: DVC experiments on the real pipeline, real data, real TensorFlow (tiny).

`dvc exp run -S` re-runs only what a param reaches, the run-cache brings earlier params
back without training, queued sweeps, experiments shared through remotes, live progress
while a run trains, and the tools that read experiments (compare, restore). The tiny
project and its per-test reset: tests/pipeline_project.py.
"""

from __future__ import annotations

import contextlib
import functools
import io
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from mnist_cnn.artifacts import read_training_history
from mnist_cnn.datasets import DATASETS, IMAGE_SHAPE, NUM_CLASSES
from mnist_cnn.model import build_model
from mnist_cnn.params import ModelParams
from mnist_cnn.tools.bench import forward_flops
from tests.conftest import (
    committed_params,
    drawn_png,
    run_bounded,
    stop_processes_under,
)
from tests.pipeline_project import (
    RECOVER,
    TIMEOUT,
    attempt,
    command_env,
    dvc,
    forget_runs_since,
    git_status,
    lock_outputs,
    logged_epochs,
    read_metrics,
    reset_to_first_run,
    run,
    run_records,
    stages_restored,
    stages_run,
    start_in_background,
    workspace_row,
)

# The first test also waits for the session's tiny project to be built and run (beside
# another worker's training under `make test`): more than pyproject.toml's 300 s allows.
pytestmark = [
    pytest.mark.integration,
    pytest.mark.usefixtures("committed_workspace"),
    pytest.mark.timeout(600),
]


@pytest.fixture(scope="module")
def rate_experiment(project, first_run) -> dict:
    """One workspace experiment with another learning rate, shared by the tests that read it."""
    reset_to_first_run(project, first_run)
    output = dvc(project, "exp", "run", "-n", "rate-0.003", "-S", "train.learning_rate=0.003")
    diff = json.loads(dvc(project, "metrics", "diff", "--json"))
    return {"name": "rate-0.003", "output": output, "diff": diff}


def test_exp_run_with_train_param_reruns_only_train_and_evaluate(rate_experiment, first_run):
    assert stages_run(rate_experiment["output"]) == {
        f"{stage}@{key}" for stage in ("train", "evaluate") for key in DATASETS
    } | {"check_params"}
    for key in DATASETS:
        changes = rate_experiment["diff"][f"metrics/{key}.json"]
        assert "loss" in changes, changes
        assert changes["loss"]["old"] == first_run["metrics"][key]["loss"]
        assert changes["loss"]["new"] != changes["loss"]["old"]


def flatten(node: dict, prefix: str = "") -> list[str]:
    return [
        name
        for key, value in node.items()
        for name in (
            flatten(value, f"{prefix}{key}.") if isinstance(value, dict) else [f"{prefix}{key}"]
        )
    ]


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


def test_compare_command_reads_real_experiments(project, rate_experiment, tmp_path):
    """mnist-cnn-compare against DVC itself: the experiment's changed param and results."""
    png, study = tmp_path / "compare.png", tmp_path / "study.csv"
    # The CSV alone: stderr carries the tool's notes and TensorFlow's start-up lines
    # (oneDNN's notice, on CPUs where TF turns it on, holds a comma).
    result = run_bounded(
        [
            sys.executable,
            *("-m", "mnist_cnn.tools.compare", "--csv"),
            *("--png", str(png), "--seed-runs", str(study)),
        ],
        project,
        command_env(),
        TIMEOUT,
        stderr=subprocess.PIPE,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    table = pd.read_csv(io.StringIO(result.stdout))
    row = table[table["experiment"].str.startswith(rate_experiment["name"])].iloc[0]
    assert row["train.learning_rate"] == 0.003
    assert row["mnist loss"] == rate_experiment["diff"]["metrics/mnist.json"]["loss"]["new"]
    assert table["experiment"].iloc[0].startswith("baseline")
    drawn_png(png)
    # The study file: each dataset's run of the experiment, read from its own dvc.lock
    # (the seed it trained with) and training summary (the CPU).
    runs = pd.read_csv(study)
    rate = runs[runs["group"] == "train.learning_rate=0.003"]
    assert sorted(rate["dataset"]) == sorted(DATASETS) and set(rate["seed"]) == {42}
    assert rate["cpu"].notna().all()
    # The model's size, from the run's own data/params/<ds>.yaml: the training cost.
    for key, mflop in zip(rate["dataset"], rate["forward_mflop"], strict=True):
        model_params = ModelParams(
            **yaml.safe_load(project.joinpath(f"data/params/{key}.yaml").read_text())["train"][
                "model"
            ]
        )
        model = build_model(model_params, (*IMAGE_SHAPE, 1), NUM_CLASSES)
        assert mflop == round(forward_flops(model) / 1e6, 2) > 0
