"""The commands the docs show exist: console scripts and their flags, Makefile targets."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import PROJECT_ROOT, committed_params, with_value

PAGES = [PROJECT_ROOT / "README.md", *sorted((PROJECT_ROOT / "docs").glob("*.md"))]
# The dated history, out of the pages a user reads to use the project; linked like them.
CHANGELOG = PROJECT_ROOT / "CHANGELOG.md"
# README and docs/ read in one sitting: repetition and history go (CHANGELOG.md), not this.
LINE_BUDGET = 1000
COMMANDS = {
    "mnist-cnn-predict": "mnist_cnn.tools.predict",
    "mnist-cnn-compare": "mnist_cnn.tools.compare",
    "mnist-cnn-check-results": "mnist_cnn.tools.check_results",
    "mnist-cnn-bench": "mnist_cnn.tools.bench",
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


# The commands some page shows with flags (the others are documented bare).
FLAGGED = sorted(command for command, flags in documented_flags().items() if flags)


def test_flag_check_covers_the_commands_with_options():
    assert {"mnist-cnn-predict", "mnist-cnn-compare"} <= set(FLAGGED)


@pytest.mark.parametrize("command", FLAGGED)
def test_documented_flags_are_in_the_commands_help(command):
    flags = documented_flags()[command]
    assert flags
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

    makefile = (PROJECT_ROOT / "Makefile").read_text()
    recipe = makefile.split("\nTRIAL_PARAMS :=", 1)[1].split("\ntrial:", 1)[0]
    overrides = re.findall(r"-S (\S+)=(\S+)", recipe)
    assert overrides
    raw = committed_params()
    for key, value in overrides:
        raw = with_value(raw, key, yaml.safe_load(value))
    params = validate_params(raw)
    assert params.preprocess.max_train_samples is not None
    for dataset in params.datasets:
        assert params.train_for(dataset).epochs == 1


def heading_anchors(page: Path) -> set[str]:
    """GitHub's anchors for a page's headings: lower case, punctuation dropped, spaces
    to hyphens."""
    anchors = set()
    for line in page.read_text().splitlines():
        if match := re.match(r"#{1,6} (.+)", line):
            text = re.sub(r"[^\w\- ]", "", match.group(1).lower())
            anchors.add(text.replace(" ", "-"))
    return anchors


def test_readme_and_docs_stay_within_their_line_budget():
    lines = {page.name: len(page.read_text().splitlines()) for page in PAGES}
    assert sum(lines.values()) < LINE_BUDGET, lines


def test_links_between_pages_and_their_anchors_resolve():
    broken = []
    for page in [*PAGES, CHANGELOG]:
        for target in re.findall(r"\]\(([^)\s]+)\)", page.read_text()):
            if re.match(r"[a-z]+:", target):  # https:, mailto:
                continue
            path, _, anchor = target.partition("#")
            linked = (page.parent / path).resolve() if path else page
            if not linked.exists():
                broken.append(f"{page.name}: {target} (no such file)")
            elif anchor and anchor not in heading_anchors(linked):
                broken.append(f"{page.name}: {target} (no such heading)")
    assert not broken


def test_tests_the_docs_name_exist():
    defined = set()
    for module in (PROJECT_ROOT / "tests").glob("test_*.py"):
        defined |= set(re.findall(r"^def (test_\w+)", module.read_text(), flags=re.MULTILINE))
    named = set()
    for page in [*PAGES, CHANGELOG]:
        named |= set(re.findall(r"`(test_\w+)`", page.read_text()))
    assert named and not named - defined, named - defined


def documented_dvc_commands() -> list[tuple[str, list[str]]]:
    """Every `dvc …` command line in the pages' bash/console blocks, as arguments."""
    found = []
    for page in PAGES:
        blocks = re.findall(r"```(?:bash|console)\n(.*?)```", page.read_text(), flags=re.S)
        for line in "\n".join(blocks).replace("\\\n", " ").splitlines():
            line = re.split(r"\s#", line.removeprefix("$ "))[0]
            words: list[str] = []
            for word in [*shlex.split(line), "&&"]:
                if word in ("&&", "||", "|", ";"):
                    if words[:1] == ["dvc"]:
                        found.append((page.name, words[1:]))
                    words = []
                else:
                    words.append(word)
    return found


def test_documented_dvc_commands_parse_with_the_locked_dvc():
    """Each `dvc` command the docs show (subcommand, flags, their values) is accepted by
    the parser of the DVC version in the lock; an option a release renamed fails here."""
    from dvc.cli import parse_args

    commands = documented_dvc_commands()
    rejected = []
    for page, arguments in commands:
        try:
            parse_args(arguments)
        except (SystemExit, Exception):  # argparse exits; DVC raises DvcParserError
            rejected.append(f"{page}: dvc {shlex.join(arguments)}")
    assert len(commands) > 20 and not rejected


# A measured accuracy, time or speed has one home (metrics/, the seed study, the
# benchmark's result, shown in docs through generated blocks); comments and params.yaml
# say why and link. These patterns catch such figures in the pipeline's comments.
NUMBER = r"(?<![\w.])\d+(?:\.\d+)?(?:\s?[-–]\s?\d+(?:\.\d+)?)?"
MEASUREMENT = re.compile(
    NUMBER + r"\s?%"  # a percentage
    # a duration ("s" and "h" after a space: "the 1s and 0s" is no time)
    r"|" + NUMBER + r"(?:\s(?:s|h)\b|\s?(?:µs|ms|secs?|seconds?|mins?|minutes?|hrs?|hours?)\b)"
    r"|" + NUMBER + r"\s?[×x](?!\s?\d)(?=\s|$)"  # a ratio ("1.7× faster"), not a size (28 x 28)
    r"|" + NUMBER + r"\s?(?:images|img|steps|samples)/s"  # a speed
    r"|" + NUMBER + r"\s?[GT]FLOP"
)
# Numbers in comments that are constants, not measurements: (file, text it contains).
NOT_MEASUREMENTS = [
    ("mnist_cnn/sources.py", "0.5, 1, 2, ... 8 s"),  # the retry back-off the code sets
]


def comments(path: Path) -> list[tuple[int, str]]:
    """(line, text) of every comment and docstring line of a Python or YAML file."""
    import ast
    import io
    import tokenize

    source = path.read_text()
    if path.suffix in (".yaml", ".yml"):
        return [
            (n, line[line.index("#") :])
            for n, line in enumerate(source.splitlines(), 1)
            if "#" in line
        ]
    found = [
        (token.start[0], token.string)
        for token in tokenize.generate_tokens(io.StringIO(source).readline)
        if token.type == tokenize.COMMENT
    ]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            docstring = ast.get_docstring(node, clean=False)
            if docstring:
                first = node.body[0].lineno
                found += [(first + i, line) for i, line in enumerate(docstring.splitlines())]
    return found


def pipeline_files() -> list[Path]:
    tools = PROJECT_ROOT / "mnist_cnn" / "tools"
    modules = [p for p in (PROJECT_ROOT / "mnist_cnn").rglob("*.py") if tools not in p.parents]
    stages = sorted((PROJECT_ROOT / "stages").glob("*.py"))
    return [*sorted(modules), *stages, PROJECT_ROOT / "params.yaml", PROJECT_ROOT / "dvc.yaml"]


def test_pipeline_comments_quote_no_measured_figures():
    quoted = []
    for path in pipeline_files():
        relative = path.relative_to(PROJECT_ROOT).as_posix()
        for line, text in comments(path):
            if MEASUREMENT.search(text) and not any(
                relative == name and allowed in text for name, allowed in NOT_MEASUREMENTS
            ):
                quoted.append(f"{relative}:{line}: {text.strip()}")
    assert not quoted, "measured figures belong in docs (generated), not here:\n" + "\n".join(
        quoted
    )


@pytest.mark.parametrize(
    "text",
    [
        "# 99.60 % in 20 epochs",
        "stalled for 10-20 s",
        "trains 1.7× faster",
        "a 2.5x slowdown",
        "1448 images/s",
        "853 img/s",
        "took 3 h",
        "500 µs",
        "12 TFLOP",
    ],
)
def test_measured_figures_are_recognised(text):
    assert MEASUREMENT.search(text)


@pytest.mark.parametrize(
    "text",
    [
        "shaped N x 28 x 28 x 1",
        "2×2 max-pool",
        "ships 10 classes",
        "float32s",
        "the 1s and 0s",
        "f'{x:.2%}'",
        "prints images/s",
    ],
)
def test_sizes_are_not_taken_for_measurements(text):
    assert not MEASUREMENT.search(text)


@pytest.mark.committed_results
def test_predicts_example_output_was_recorded_with_the_committed_models():
    """docs/predict.md shows real output; it names the models (md5 prefixes) it came from,
    which must be the committed ones: a new committed run fails this until the example
    is recorded again (`mnist-cnn-predict` on the files in examples/)."""
    from mnist_cnn.tools.check_results import committed_text

    page = committed_text(Path("docs/predict.md"), PROJECT_ROOT)
    named = dict(re.findall(r"(Fashion-MNIST|MNIST)\s+`([0-9a-f]{7})…`", page))
    lock = yaml.safe_load(committed_text(Path("dvc.lock"), PROJECT_ROOT))
    models = {
        out["path"]: out["md5"][:7]
        for stage in lock["stages"].values()
        for out in stage.get("outs", [])
        if out["path"].startswith("models/")
    }
    assert named == {
        "MNIST": models["models/mnist.keras"],
        "Fashion-MNIST": models["models/fashion_mnist.keras"],
    }
