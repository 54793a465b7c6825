"""Timing two commits' `dvc repro --force` in turns: the parsing, the medians, the table."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from mnist_cnn.tools.report import TURNS, turns_table
from mnist_cnn.tools.turns import RESULT_FILE, medians, stage_seconds
from tests.conftest import stop_processes_under
from tests.pipeline_project import new_tiny_project, run


def test_each_stage_lasts_until_the_next_one_starts():
    lines = [
        (0.0, "Verifying data sources\n"),
        (1.0, "Running stage 'check_params':\n"),
        (2.5, "> python -m mnist_cnn.params\n"),
        (3.0, "Running stage 'train@mnist':\n"),
        (40.0, "Epoch 1/1\n"),
        (50.0, "Updating lock file 'dvc.lock'\n"),
    ]
    assert stage_seconds(lines, end=51.0) == {"check_params": 2.0, "train@mnist": 48.0}
    assert stage_seconds([], end=5.0) == {}


def test_medians_are_per_side_and_stage():
    turns = [
        {"side": "old", "stages": {"a": 10.0, "b": 1.0}, "total": 11.0},
        {"side": "new", "stages": {"a": 4.0, "b": 1.0}, "total": 5.0},
        {"side": "old", "stages": {"a": 12.0, "b": 3.0}, "total": 15.0},
        {"side": "new", "stages": {"a": 6.0}, "total": 6.0},
    ]
    assert medians(turns) == {
        "old": {"a": 11.0, "b": 2.0, "total": 13.0},
        "new": {"a": 5.0, "b": 0.5, "total": 5.5},
    }


def test_the_table_shows_both_sides_per_stage_and_says_when_nothing_was_timed():
    def missing(path: Path) -> str:
        raise FileNotFoundError(path)

    assert "has not written" in turns_table(missing)
    timed = {
        "date": "2026-12-08",
        "machine": {"cpu": "AMD EPYC", "cpu_flags": "avx2 fma", "cpus": 2},
        "revs": {"old": "a" * 40, "new": "b" * 40},
        "turns": [{"side": side} for side in ("old", "new", "old", "new")],
        "medians": {
            "old": {"check_params": 2.0, "train@mnist": 1000.0, "total": 1010.0},
            "new": {"check_params": 2.0, "train@mnist": 500.0, "total": 505.0},
        },
    }
    table = turns_table(lambda path: json.dumps(timed))
    assert "every stage forced, medians of 2 and 2 runs, taken in turns" in table
    assert "| `train@mnist` | 1000 | 500 | 0.50 |" in table
    assert table.rstrip().endswith("| **total** | 1010 | 505 | 0.50 |")
    # A run of some targets says which: its total is not a full run's.
    timed["targets"] = ["evaluate@mnist"]
    assert "the stages up to `evaluate@mnist` forced" in turns_table(lambda path: json.dumps(timed))
    assert TURNS == RESULT_FILE


@pytest.fixture
def unrun_project(tmp_path):
    project = new_tiny_project(tmp_path / "project")
    yield project
    stop_processes_under(project)


@pytest.mark.integration
def test_turns_times_two_commits_of_a_real_project(unrun_project, tmp_path):
    """On the tiny project (not run: only the gate stage is forced), two commits run
    old, new, old, new in worktrees of their own, which are gone afterwards."""
    project = unrun_project
    params = project / "params.yaml"
    params.write_text(params.read_text() + "# a second commit\n")
    run(["git", "commit", "-qam", "second"], project)
    result = tmp_path / "turns.json"
    output = run(
        [
            sys.executable,
            *("-m", "mnist_cnn.tools.turns", "HEAD~1", "HEAD"),
            *("--target", "check_params", "--result", str(result)),
        ],
        project,
    )
    timed = json.loads(result.read_text())
    assert [turn["side"] for turn in timed["turns"]] == ["old", "new", "old", "new"]
    for turn in timed["turns"]:
        assert set(turn["stages"]) == {"check_params"}
        assert 0 < turn["stages"]["check_params"] <= turn["total"]
    assert timed["revs"]["new"] == run(["git", "rev-parse", "HEAD"], project).strip()
    assert timed["machine"]["cpus"] >= 1
    assert f"turns: wrote {result}" in output
    assert run(["git", "worktree", "list"], project).count("\n") == 1  # only the project
