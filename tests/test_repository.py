"""The conventions a repository like this is expected to keep: a GitHub Actions workflow
that runs the same check as CI (linted, since it cannot run here), the editor's DVC
extension, and experiments named by the Makefile targets that make them."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from tests.conftest import PROJECT_ROOT

WORKFLOW = PROJECT_ROOT / ".github/workflows/ci.yml"


def check_workflow(path: Path) -> subprocess.CompletedProcess:
    tool = Path(sys.executable).parent / "check-jsonschema"
    return subprocess.run(
        [str(tool), "--builtin-schema", "vendor.github-workflows", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_github_workflow_runs_the_ci_script_and_is_valid(tmp_path):
    workflow = yaml.safe_load(WORKFLOW.read_text())
    steps = [step for job in workflow["jobs"].values() for step in job["steps"]]
    assert any(step.get("run") == "bash .ci/run" for step in steps)
    assert check_workflow(WORKFLOW).returncode == 0
    # The check can fail: a step with neither `run` nor `uses` is not a workflow.
    broken = tmp_path / "ci.yml"
    shutil.copy(WORKFLOW, broken)
    broken.write_text(broken.read_text().replace("run: bash .ci/run", "ran: bash .ci/run"))
    assert check_workflow(broken).returncode != 0


def test_editor_recommends_the_dvc_extension():
    recommended = json.loads((PROJECT_ROOT / ".vscode/extensions.json").read_text())
    assert "Iterative.dvc" in recommended["recommendations"]


def make_commands(target: str, *variables: str) -> str:
    make = shutil.which("make")
    assert make, "make is needed"
    return subprocess.run(
        [make, "-n", "-C", str(PROJECT_ROOT), target, *variables],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout


def test_seed_study_and_trial_name_their_experiments():
    study = make_commands("seed-study", "SEEDS=7,8", "VENV=/nonexistent")
    assert "dvc exp run --queue -n seed-$seed -S seed=$seed" in study
    assert "for seed in 7 8;" in study
    trial = make_commands("trial", "VENV=/nonexistent")
    assert "dvc exp remove trial" in trial and "dvc exp run --temp -n trial" in trial
