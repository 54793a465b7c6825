"""CI fails on a skipped test unless tests/skip_policy.py allows it, with its reason."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import PROJECT_ROOT
from tests.skip_policy import ALLOWED_SKIPS, unexpected_skips


def run_pytest(directory: Path, ci: bool, *options: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    env["PYTHONPATH"] = str(PROJECT_ROOT)
    if ci:
        env["CI"] = "true"
    (directory / "pytest.ini").write_text("[pytest]\n")
    return subprocess.run(
        [
            sys.executable,
            *("-m", "pytest", "-q", "-p", "tests.skip_policy", "-p", "no:cacheprovider"),
            *options,
        ],
        cwd=directory,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


# As `make test` runs the suite: in pytest-xdist workers, whole modules per worker.
PARALLEL = ("-n", "2", "--dist", "loadfile")


@pytest.mark.parametrize("options", [(), PARALLEL], ids=["one-process", "parallel"])
def test_an_unlisted_skip_fails_ci_and_only_ci(tmp_path, options):
    (tmp_path / "test_sample.py").write_text(
        "import pytest\n\n"
        "def test_runs():\n    pass\n\n"
        "def test_quietly_gone():\n    pytest.skip('no reason given')\n"
    )
    in_ci = run_pytest(tmp_path, True, *options)
    assert in_ci.returncode == 1, in_ci.stdout
    assert "test_sample.py::test_quietly_gone" in in_ci.stdout
    assert run_pytest(tmp_path, False, *options).returncode == 0


def test_a_listed_skip_passes_ci(tmp_path):
    name = next(iter(ALLOWED_SKIPS))
    (tmp_path / "test_sample.py").write_text(
        f"import pytest\n\ndef {name}():\n    pytest.skip('listed')\n"
    )
    result = run_pytest(tmp_path, ci=True)
    assert result.returncode == 0, result.stdout


def test_parameters_do_not_matter_and_every_reason_is_given():
    name = next(iter(ALLOWED_SKIPS))
    assert unexpected_skips([f"tests/x.py::{name}[a-1]", "tests/x.py::other[a]"]) == [
        "tests/x.py::other[a]"
    ]
    assert all(reason.strip() for reason in ALLOWED_SKIPS.values())
