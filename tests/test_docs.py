"""The commands the docs show exist: console scripts and their flags, Makefile targets."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from tests.conftest import PROJECT_ROOT

PAGES = [PROJECT_ROOT / "README.md", *sorted((PROJECT_ROOT / "docs").glob("*.md"))]
COMMANDS = {
    "mnist-cnn-predict": "mnist_cnn.predict",
    "mnist-cnn-compare": "mnist_cnn.compare",
    "mnist-cnn-check-results": "mnist_cnn.check_results",
    "mnist-cnn-bench": "mnist_cnn.bench",
}


def documented_flags() -> dict[str, set[str]]:
    """{command: the --flags written after it on one line of some page}."""
    found: dict[str, set[str]] = {command: set() for command in COMMANDS}
    for page in PAGES:
        for line in page.read_text().splitlines():
            for command in COMMANDS:
                for tail in re.findall(re.escape(command) + r"((?: [^`|#]*)?)", line):
                    found[command] |= set(re.findall(r"(?<![\w-])--[a-z][a-z-]*", tail))
    return found


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_documented_flags_are_in_the_commands_help(command):
    flags = documented_flags()[command]
    help_text = subprocess.run(
        [sys.executable, "-m", COMMANDS[command], "--help"],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        check=True,
        timeout=240,  # bounds a hang; --help imports TensorFlow for some commands
    ).stdout
    assert not {flag for flag in flags if flag not in help_text}, help_text


def test_documented_make_targets_exist():
    makefile = (PROJECT_ROOT / "Makefile").read_text()
    targets = set(re.findall(r"^([a-z][a-z-]*):", makefile, flags=re.MULTILINE))
    documented = set()
    for page in PAGES:
        text = page.read_text()
        documented |= set(re.findall(r"`make ([a-z][a-z-]*)", text))
        documented |= set(re.findall(r"^make ([a-z][a-z-]*)", text, flags=re.MULTILINE))
    assert documented and documented <= targets, documented - targets


def test_console_scripts_are_the_documented_commands():
    import tomllib

    scripts = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert {name: target.split(":")[0] for name, target in scripts.items()} == COMMANDS
