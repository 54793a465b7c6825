"""dvc.yaml and the code agree: no silently stale cache, one definition of every path.

DVC re-runs a stage only when a file listed under its `deps` changes. A module the stage
imports but dvc.yaml does not list would give a stale cache hit that nobody sees, so each
stage's `deps` must be exactly the project files its command imports (transitively).
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
import yaml

from mnist_cnn.artifacts import STAGE_OUTPUTS, DatasetPaths
from mnist_cnn.datasets import DATASETS, spec_from_command_line
from mnist_cnn.params import CHECKED_MARKER
from tests.conftest import PROJECT_ROOT

PROJECT_PACKAGES = ("stages", "mnist_cnn")
STAGE_MODULES = {"download", "preprocess", "train", "evaluate"}


def dvc_stages() -> dict[str, dict]:
    """dvc.yaml's stages; a foreach stage is represented by its `do` template."""
    stages = yaml.safe_load((PROJECT_ROOT / "dvc.yaml").read_text())["stages"]
    return {name: stage.get("do", stage) for name, stage in stages.items()}


def module_file(module: str, root: Path = PROJECT_ROOT) -> Path | None:
    """The project file behind a dotted module name (None outside the project)."""
    if module.split(".")[0] not in PROJECT_PACKAGES:
        return None
    path = root.joinpath(*module.split("."))
    return path / "__init__.py" if path.is_dir() else path.with_suffix(".py")


def imported_modules(path: Path) -> set[str]:
    """Every module a file imports, anywhere in it (also inside functions)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.add(node.module)
            # `from package import module` imports a module too.
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def import_closure(module: str, root: Path = PROJECT_ROOT) -> set[str]:
    """Project files `python -m module` executes: the module, what it imports, recursively,
    and the __init__.py of every package on the way."""
    seen: set[str] = set()
    pending = [module]
    while pending:
        name = pending.pop()
        parts = name.split(".")
        for depth in range(1, len(parts) + 1):  # parent packages run their __init__ first
            prefix = ".".join(parts[:depth])
            path = module_file(prefix, root)
            if path is None or not path.is_file():
                continue
            relative = path.relative_to(root).as_posix()
            if relative not in seen:
                seen.add(relative)
                pending.extend(imported_modules(path))
    return seen


def command_module(cmd: str) -> str:
    match = re.fullmatch(r"python -m ([\w.]+)(?: \$\{key\})?", cmd)
    assert match, f"unexpected stage command {cmd!r}"
    return match.group(1)


@pytest.mark.parametrize("stage", sorted(dvc_stages()))
def test_stage_deps_are_exactly_its_import_closure(stage):
    definition = dvc_stages()[stage]
    listed = {dep for dep in definition["deps"] if dep.endswith(".py")}
    closure = import_closure(command_module(definition["cmd"]))
    assert sorted(closure - listed) == [], f"{stage}: imported but not in dvc.yaml deps"
    assert sorted(listed - closure) == [], f"{stage}: in dvc.yaml deps but never imported"


def declared_outputs(definition: dict, key: str) -> set[str]:
    paths = set()
    for section in ("outs", "metrics", "plots"):
        for entry in definition.get(section, []):
            path = entry if isinstance(entry, str) else next(iter(entry))
            paths.add(path.replace("${key}", key))
    return paths


@pytest.mark.parametrize("stage", sorted(STAGE_OUTPUTS))
def test_stage_outputs_in_dvc_yaml_are_the_paths_the_code_writes(stage):
    definition = dvc_stages()[stage]
    for key in ("mnist", "fashion_mnist"):
        paths = DatasetPaths(key)
        in_code = {getattr(paths, name).as_posix() for name in STAGE_OUTPUTS[stage]}
        assert declared_outputs(definition, key) == in_code


def test_check_params_output_is_the_marker_every_stage_depends_on():
    stages = dvc_stages()
    assert declared_outputs(stages["check_params"], "-") == {
        CHECKED_MARKER.as_posix(),
        *(DatasetPaths(key).effective_params.as_posix() for key in DATASETS),
    }
    for stage in STAGE_OUTPUTS:
        assert CHECKED_MARKER.as_posix() in stages[stage]["deps"], stage


def test_train_and_evaluate_declare_their_datasets_effective_sections():
    """Each declares the section it reads from data/params/<ds>.yaml, and nothing of
    params.yaml's shared `train`/`evaluate`/`datasets` (which would re-run a dataset for
    a key it overrides)."""
    stages = dvc_stages()
    for stage, section in (("train", "train"), ("evaluate", "evaluate")):
        params = stages[stage]["params"]
        effective = [entry for entry in params if isinstance(entry, dict)]
        assert effective == [{"data/params/${key}.yaml": [section]}], stage
        for key in ("mnist", "fashion_mnist"):
            path = next(iter(effective[0])).replace("${key}", key)
            assert path == DatasetPaths(key).effective_params.as_posix()
        shared = {entry for entry in params if isinstance(entry, str)}
        assert not shared & {"train", "evaluate", "datasets"}, stage


def test_every_stage_says_what_it_does():
    assert all(definition.get("desc") for definition in dvc_stages().values())


def test_small_results_keep_the_run_cache_working():
    """`cache: false` only under a stage's metrics/plots: a plain uncached `outs:` entry
    switches DVC's run-cache off for the whole stage. The one exception is check_params
    (about a second to run): its effective params files must be in git, where DVC reads
    params of any revision without a cache, and persist, so it can refuse a hand edit."""
    effective = {DatasetPaths(key).effective_params.as_posix() for key in DATASETS}
    for name, definition in dvc_stages().items():
        for entry in definition.get("outs", []):
            if isinstance(entry, dict):
                path, options = next(iter(entry.items()))
                if name == "check_params" and path in effective:
                    assert options == {"cache": False, "persist": True}, entry
                    continue
                assert options.get("cache", True), f"{name}: uncached plain output {entry}"


def test_stages_folder_holds_the_four_stages_and_none_imports_another():
    modules = {path.stem for path in (PROJECT_ROOT / "stages").glob("*.py")} - {"__init__"}
    assert modules == STAGE_MODULES
    for module in modules:
        imports = imported_modules(PROJECT_ROOT / "stages" / f"{module}.py")
        assert not [name for name in imports if name.split(".")[0] == "stages"], module


def test_library_never_imports_a_stage():
    for path in (PROJECT_ROOT / "mnist_cnn").rglob("*.py"):
        assert not [name for name in imported_modules(path) if name.startswith("stages")], path


TOOLS = "mnist_cnn/tools/"


def test_pipeline_modules_never_import_a_tool():
    """mnist_cnn/ is the pipeline (what the stages import), mnist_cnn/tools/ what is
    built around it: no stage reaches a tool, and every pipeline module is reached by a
    stage, so the folder shows which modules the pipeline is."""
    reached = set()
    for stage, definition in dvc_stages().items():
        closure = import_closure(command_module(definition["cmd"]))
        assert not [path for path in closure if path.startswith(TOOLS)], stage
        reached |= closure
    for path in (PROJECT_ROOT / "mnist_cnn").glob("*.py"):
        imports = imported_modules(path)
        assert not [name for name in imports if name.startswith("mnist_cnn.tools")], path
        assert path.relative_to(PROJECT_ROOT).as_posix() in reached, f"{path}: no stage uses it"


def test_closure_follows_every_kind_of_import(tmp_path):
    """The checker itself, on a small tree: direct, `from package import module`,
    function-level and transitive imports count; unused modules and third parties don't."""
    files = {
        "stages/__init__.py": "",
        "stages/fit.py": "import numpy\nfrom mnist_cnn import helpers\n",
        "mnist_cnn/__init__.py": "",
        "mnist_cnn/helpers.py": "def f():\n    from mnist_cnn.lazy import g\n",
        "mnist_cnn/lazy.py": "import mnist_cnn.deep\n",
        "mnist_cnn/deep.py": "",
        "mnist_cnn/unused.py": "",
    }
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    assert import_closure("stages.fit", tmp_path) == set(files) - {"mnist_cnn/unused.py"}


def test_registry_meta_matches_the_code_and_copies_no_result():
    """dvc.yaml's `artifacts:` tells consumers the path and class order: both must be what
    the code uses. Results are not copied into it (they would go stale after any run):
    a version's accuracy is its metrics file at the same revision."""

    registry = yaml.safe_load((PROJECT_ROOT / "dvc.yaml").read_text())["artifacts"]
    for key, spec in DATASETS.items():
        entry = registry[f"{key.replace('_', '-')}-cnn"]
        assert entry["path"] == DatasetPaths(key).model.as_posix()
        assert tuple(entry["meta"]["class_names"]) == spec.class_names
        assert not {"accuracy", "test_accuracy", "loss"} & set(entry["meta"])


def test_stages_take_one_known_dataset_key(capsys):
    assert spec_from_command_line(["fashion_mnist"], "d").key == "fashion_mnist"
    with pytest.raises(SystemExit):
        spec_from_command_line(["cifar10"], "d")
    assert "invalid choice: 'cifar10'" in capsys.readouterr().err


def test_dag_page_is_what_dvc_draws():
    """docs/pipeline.md shows `dvc dag --md` as DVC prints it for this dvc.yaml."""
    import subprocess
    import sys

    drawn = subprocess.run(
        [sys.executable, "-m", "dvc", "dag", "--md"],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    ).stdout
    page = (PROJECT_ROOT / "docs/pipeline.md").read_text()
    block = page.split("<!-- generated: dvc dag --md -->\n")[1].split("<!-- end generated -->")[0]
    assert block == drawn
