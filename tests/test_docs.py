"""The commands the docs show exist: console scripts and their flags, Makefile targets."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest
import yaml

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


def test_the_one_minute_trial_is_a_valid_one_epoch_subset_of_the_committed_params():
    """`make trial`'s overrides pass the params schema (as `check_params` would judge them)
    and give every dataset one epoch on a subset."""
    from mnist_cnn.params import validate_params
    from tests.conftest import committed_params

    makefile = (PROJECT_ROOT / "Makefile").read_text()
    recipe = makefile.split("\nTRIAL_PARAMS :=", 1)[1].split("\ntrial:", 1)[0]
    overrides = re.findall(r"-S (\S+)=(\S+)", recipe)
    assert overrides
    raw = committed_params()
    for key, value in overrides:
        *parents, leaf = key.split(".")
        node = raw
        for parent in parents:
            node = node.setdefault(parent, {})
        node[leaf] = yaml.safe_load(value)
    params = validate_params(raw)
    assert params.preprocess.max_train_samples is not None
    for dataset in params.datasets:
        assert params.train_for(dataset).epochs == 1
