"""requirements.lock: hash-pinned, and installable on every platform README names.

The lock is universal (environment markers): one file for Python 3.11-3.13 on Linux
x86-64, Linux aarch64 and macOS arm64. Only Linux x86-64 runs the test suite here; the
other platforms are resolved (uv finds a file for every pin), not run.
"""

from __future__ import annotations

import re
import subprocess
import tomllib

import pytest

from tests.conftest import PROJECT_ROOT

LOCK = PROJECT_ROOT / "requirements.lock"
CUDA_LOCK = PROJECT_ROOT / "requirements-cuda.lock"
PLATFORMS = ["x86_64-unknown-linux-gnu", "aarch64-unknown-linux-gnu", "aarch64-apple-darwin"]
PYTHONS = ["3.11", "3.12", "3.13"]
PIN = re.compile(r"^([A-Za-z0-9_.-]+)==(\S+)")


def pins(lock=LOCK) -> dict[str, list[str]]:
    """{name==version (and marker): its hash lines}, from the lock's text."""
    entries: dict[str, list[str]] = {}
    current = None
    for line in lock.read_text().splitlines():
        if PIN.match(line):
            current = line.rstrip(" \\")
            entries[current] = []
        elif current and line.strip().startswith("--hash=sha256:"):
            entries[current].append(line.strip())
    return entries


@pytest.mark.parametrize("lock", [LOCK, CUDA_LOCK], ids=["cpu", "cuda"])
def test_every_pin_has_a_hash(lock):
    entries = pins(lock)
    assert len(entries) > 100
    assert not [pin for pin, hashes in entries.items() if not hashes]


def test_cuda_lock_pins_what_the_main_lock_pins():
    """The CUDA lock adds TensorFlow's CUDA build and its NVIDIA wheels, nothing else moves."""

    def versions(lock):
        return {PIN.match(pin).group(1): PIN.match(pin).group(2) for pin in pins(lock)}

    main, cuda = versions(LOCK), versions(CUDA_LOCK)
    assert cuda["tensorflow"] == main["tensorflow-cpu"]
    assert all(cuda[name] == main[name] for name in cuda.keys() & main.keys())
    assert {name for name in cuda.keys() - main.keys() if not name.startswith("nvidia-")} == set()


def test_supported_pythons_match_the_lock_and_ci():
    project = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())["project"]
    assert project["requires-python"] == ">=3.11,<3.14"
    ci = (PROJECT_ROOT / ".ci/run").read_text()
    assert "for version in " + " ".join(PYTHONS) in ci


def test_arm_gets_tensorflow_and_x86_gets_the_cpu_build():
    names = {PIN.match(pin).group(1): pin for pin in pins()}
    assert "platform_machine == 'x86_64'" in names["tensorflow-cpu"]
    assert "platform_machine != 'x86_64'" in names["tensorflow"]


@pytest.mark.integration
@pytest.mark.parametrize("python", PYTHONS)
@pytest.mark.parametrize("platform", PLATFORMS)
def test_lock_resolves_for_each_platform_and_python(platform, python, tmp_path):
    """uv (the venv's own) resolves every pin for the platform against PyPI, as an
    install would, without installing: a pin with no file for it fails here."""
    result = subprocess.run(
        [
            "uv", "pip", "install", "--dry-run", "--require-hashes", "-r", str(LOCK),
            "--python-platform", platform, "--python-version", python,
            "--target", str(tmp_path / "target"),
        ],
        capture_output=True,
        text=True,
        timeout=240,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    installed = {line.split()[1].split("==")[0] for line in result.stderr.splitlines()
                 if line.startswith(" + ")}  # fmt: skip
    assert ("tensorflow-cpu" if platform.startswith("x86_64") else "tensorflow") in installed
    assert {"keras", "dvc", "pandas"} <= installed


def test_documented_installs_are_hash_checked():
    """Every `pip install` the docs, the Makefile and setup show checks hashes (or installs
    the project itself, or only resolves); `make lock` uses the venv's own hashed uv."""
    sources = [PROJECT_ROOT / "README.md", PROJECT_ROOT / "Makefile"]
    sources += sorted((PROJECT_ROOT / "docs").glob("*.md"))
    sources += sorted((PROJECT_ROOT / "scripts").glob("*.sh"))
    unhashed = [
        f"{path.name}: {line.strip()}"
        for path in sources
        for line in path.read_text().replace("\\\n", " ").splitlines()  # continued lines
        if "pip install" in line
        and not any(ok in line for ok in ("--require-hashes", "--editable", "--dry-run"))
    ]
    assert unhashed == []
    lock_recipe = (PROJECT_ROOT / "Makefile").read_text().split("\nlock:", 1)[1].split("\n\n")[0]
    assert "/tmp" not in lock_recipe and "pip install" not in lock_recipe
