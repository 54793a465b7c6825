"""The tiny project the pipeline tests drive: a fixture and the commands they run in it.

The project is copied into a fresh git repository; params.yaml there keeps every default
except a class-balanced subset of the data and one short epoch, so the code path is the
one full runs take. Its first `dvc repro` is run and committed once per pytest session:
under pytest-xdist the first worker to need it builds it while the others wait on a file
lock. Each test module then works in its own copy (git repository and DVC cache), so the
modules can run in parallel workers; before every test the copy is put back to that
commit (git and DVC), so each test passes alone and in any order. After every test no
process may still run in the project.

Registered as a pytest plugin in tests/conftest.py; a module uses it with
`pytest.mark.usefixtures("committed_workspace")`.
"""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from filelock import FileLock

from mnist_cnn.datasets import DATASETS
from mnist_cnn.params import deep_merge
from tests.conftest import (
    PROJECT_ROOT,
    TINY_OVERRIDE,
    committed_params,
    processes_under,
    run_bounded,
    stop_processes_under,
)

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


def make_git_compare_contents(project: Path) -> None:
    """Fresh mtimes for every tracked file, so git hashes them: a failed `dvc exp run` can
    leave an edit whose size and mtime git's index caches for HEAD's blob, and then
    `git status` and `git reset --hard` both skip it (see mnist_cnn/tools/restore.py)."""
    for path in run(["git", "ls-files", "-z"], project).split("\0"):
        if path and (project / path).is_file():
            os.utime(project / path)


def git_status(project: Path) -> str:
    """`git status --porcelain`, by content."""
    make_git_compare_contents(project)
    return run(["git", "status", "--porcelain"], project)


def lock_outputs(project: Path) -> dict[str, str]:
    """{output path: md5} for every output recorded in dvc.lock."""
    lock = yaml.safe_load((project / "dvc.lock").read_text())
    return {
        out["path"]: out["md5"]
        for stage in lock["stages"].values()
        for out in stage.get("outs", [])
    }


def new_tiny_project(root: Path) -> Path:
    """Create the tiny project in `root`: the pipeline's files, tiny params, one commit."""
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
    return root


def build_tiny_project(root: Path) -> dict:
    """Create the tiny project in `root`, run and commit its first `dvc repro`; return what
    the tests compare against (the run's output, metrics, output hashes and commit)."""
    try:
        new_tiny_project(root)
        output = dvc(root, "repro")
        run(["git", "add", "-A"], root)
        run(["git", "commit", "-qm", "first run"], root)
    finally:
        stop_processes_under(root)
    return {
        "output": output,
        "metrics": read_metrics(root),
        "lock_outputs": lock_outputs(root),
        "commit": run(["git", "rev-parse", "HEAD"], root).strip(),
    }


@pytest.fixture(scope="session")
def built_project(request, tmp_path_factory) -> tuple[Path, dict]:
    """The tiny project after its first run, built once per session: (folder, first-run
    facts). Read-only: tests work in a module's copy (the `project` fixture)."""
    if not hasattr(request.config, "workerinput"):  # not an xdist worker: nobody to share with
        root = tmp_path_factory.mktemp("tiny-project")
        return root, build_tiny_project(root)
    # pytest-xdist's workers share the parent of their temporary folders (one per session).
    shared = tmp_path_factory.getbasetemp().parent
    root, facts, failed = (shared / name for name in ("tiny-project", "built.json", "failed.txt"))
    with FileLock(shared / "tiny-project.lock"):
        if failed.exists():  # no second try: the other workers' tests fail at once
            pytest.fail(
                f"building the tiny project failed in another worker:\n{failed.read_text()}"
            )
        if not facts.exists():
            root.mkdir()
            try:
                built = build_tiny_project(root)
            except BaseException as error:  # also pytest's own failures and timeouts
                failed.write_text(f"{type(error).__name__}: {error}"[-6000:])
                raise
            # Its presence means the build finished: written whole, then renamed.
            partial = facts.with_suffix(".partial")
            partial.write_text(json.dumps(built))
            partial.replace(facts)
    return root, json.loads(facts.read_text())


@pytest.fixture(scope="module")
def project(built_project, tmp_path_factory) -> Path:
    """This module's own copy of the built project, without .dvc/tmp (DVC's locks and
    run records, which belong to the folder they were made in)."""
    root = tmp_path_factory.mktemp("pipeline")
    shutil.copytree(
        built_project[0],
        root,
        symlinks=True,
        dirs_exist_ok=True,
        ignore=lambda folder, names: ["tmp"] if Path(folder).name == ".dvc" else [],
    )
    yield root
    stop_processes_under(root)


@pytest.fixture(scope="module")
def first_run(built_project) -> dict:
    return copy.deepcopy(built_project[1])  # a module's own: tests may not change the shared one


def reset_to_first_run(project: Path, first_run: dict) -> None:
    """The workspace exactly as the first run committed it: git files and DVC outputs."""
    make_git_compare_contents(project)
    run(["git", "reset", "-q", "--hard", first_run["commit"]], project)
    run(["git", "clean", "-qfd"], project)
    dvc(project, "checkout", "--force")


@pytest.fixture
def committed_workspace(project, first_run):
    """Each test starts from the committed first run and leaves no process behind."""
    reset_to_first_run(project, first_run)
    yield
    # Whether any was left, not their command lines: one may exit (a zombie until its
    # parent reaps it) between the listing and a later question to it.
    left_running = bool(processes_under(project))
    killed = stop_processes_under(project, grace=15)
    assert not (left_running and killed), f"processes left running by the test: {killed}"


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


def workspace_row(table: list[dict]) -> dict:
    row = next(row for row in table if row.get("rev") == "workspace")
    return row.get("data", {})
