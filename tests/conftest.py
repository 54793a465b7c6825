"""Shared test helpers."""

from __future__ import annotations

import contextlib
import copy
import gzip
import hashlib
import os
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
import yaml
from pydantic import BaseModel

from mnist_cnn.datasets import DATASETS

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

PROJECT_ROOT = Path(__file__).resolve().parent.parent

# Params laid over params.yaml by the integration tests: a class-balanced subset, one short
# epoch and a small model, through the same code path as a full run.
TINY_OVERRIDE = {
    "preprocess": {"max_train_samples": 3000, "max_test_samples": 500},
    "train": {
        "epochs": 1,
        "batch_size": 32,
        "lr_schedule": {"warmup_epochs": 0},
        "model": {"conv_filters": [16, 32], "convs_per_block": [1, 1], "dense_units": [64]},
    },
    # The per-dataset sections of params.yaml override `train`: tiny them too.
    "datasets": {
        key: {"train": {"epochs": 1, "model": {"convs_per_block": [1, 1]}}} for key in DATASETS
    },
}


def committed_text(path: str) -> str:
    """A project file as HEAD has it (the working file outside a git checkout).

    Tests about the project's defaults read params.yaml this way: `dvc exp run -S` (and
    `make repro` elsewhere) rewrites files in the workspace, and the suite must pass after
    it. (So an uncommitted edit of params.yaml is seen by the tests once committed.)
    """
    from mnist_cnn.tools.check_results import committed_text as text_at_head

    committed = text_at_head(Path(path), PROJECT_ROOT)
    return committed if committed is not None else (PROJECT_ROOT / path).read_text()


def committed_params() -> dict:
    """The committed params.yaml as plain YAML data."""
    return yaml.safe_load(committed_text("params.yaml"))


def with_value(params: dict, dotted: str, value) -> dict:
    """A copy of params data with the key at a dotted path (which must exist) set."""
    changed = copy.deepcopy(params)
    *parents, leaf = dotted.split(".")
    node = changed
    for key in parents:
        node = node[key]
    node[leaf] = value
    return changed


def changed(section: BaseModel, **changes) -> BaseModel:
    """A params section with some values replaced, validated like params.yaml."""
    return type(section).model_validate({**section.model_dump(), **changes})


def idx_bytes(array: np.ndarray) -> bytes:
    """Encode a uint8 array in the IDX format (what MNIST ships)."""
    array = np.asarray(array, dtype=np.uint8)
    header = bytes([0, 0, 0x08, array.ndim]) + np.array(array.shape, dtype=">u4").tobytes()
    return header + array.tobytes()


def write_gz(path: Path, payload: bytes, level: int = 9) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(payload, compresslevel=level, mtime=0))
    return path


def sha256(payload: bytes) -> str:
    return hashlib.sha256(payload).hexdigest()


def drawn_png(path: Path, min_share: float = 0.02) -> np.ndarray:
    """The pixels of a PNG that holds a drawing: it decodes, and at least `min_share` of
    its pixels are not near-white (a figure whose data failed to draw is axes on white:
    about 1 % for two empty panels with titles)."""
    from PIL import Image

    pixels = np.asarray(Image.open(path).convert("RGB")).astype(int)
    share = float(np.mean(pixels.min(axis=2) < 200))
    assert share >= min_share, f"{path}: only {share:.2%} of the pixels are drawn"
    return pixels


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


@contextlib.contextmanager
def restored_tf_global_state():
    """Undo on exit what training code sets for the whole process: TF's op determinism,
    Python's and NumPy's random state, and the global seeds of Keras and TF; the tests
    after one that trains then run under the same state as without it."""
    import random

    import tensorflow as tf
    from keras.src.backend.common import global_state  # Keras has no public getter
    from tensorflow.python.framework import config as tf_config  # nor TF a public disable

    determinism = tf_config.is_op_determinism_enabled()
    python_state, numpy_state = random.getstate(), np.random.get_state()
    keras_seed = global_state.get_global_attribute("global_random_seed")
    try:
        yield
    finally:
        if not determinism:
            tf_config.disable_op_determinism()
        random.setstate(python_state)
        np.random.set_state(numpy_state)
        global_state.set_global_attribute("global_random_seed", keras_seed)
        tf.random.set_seed(keras_seed)  # None clears it


@pytest.fixture
def tf_global_state():
    """For a test that seeds or makes TF deterministic (see restored_tf_global_state)."""
    with restored_tf_global_state():
        yield


def run_bounded(
    args: list[str],
    cwd: Path,
    env: dict[str, str],
    timeout: float,
    stdout=subprocess.PIPE,
    stderr=subprocess.STDOUT,
) -> subprocess.CompletedProcess:
    """subprocess.run in its own process group, killed whole if anything goes wrong.

    DVC starts the stage commands as children; killing only the direct child on a
    timeout (what subprocess.run does) would leave them running. stderr joins stdout
    unless `stderr=subprocess.PIPE` keeps it apart (for output a test parses).
    """
    process = subprocess.Popen(
        args,
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=stdout,
        stderr=stderr,
        text=True,
        start_new_session=True,
    )
    try:
        output, errors = process.communicate(timeout=timeout)
    except BaseException:  # a timeout, pytest-timeout's signal, Ctrl-C
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        raise
    return subprocess.CompletedProcess(args, process.returncode, output or "", errors or "")


def processes_under(root: Path) -> list[psutil.Process]:
    """Live processes working in `root` or naming it on their command line (not us)."""
    root_text = str(root)
    found = []
    for process in psutil.process_iter(["pid", "cwd", "cmdline", "status"]):
        info = process.info
        if info["pid"] == os.getpid() or info["status"] == psutil.STATUS_ZOMBIE:
            continue
        cwd, cmdline = info["cwd"] or "", info["cmdline"] or []
        if cwd.startswith(root_text) or any(root_text in arg for arg in cmdline):
            found.append(process)
    return found


def stop_processes_under(root: Path, grace: float = 30.0) -> list[str]:
    """Wait up to `grace` s for processes in `root` to end, then kill the rest.

    Returns the command lines of those that had to be killed.
    """
    deadline = time.monotonic() + grace
    while processes_under(root) and time.monotonic() < deadline:
        time.sleep(0.5)
    killed = []
    for process in processes_under(root):
        try:
            killed.append(" ".join(process.cmdline()))
            process.kill()
        except psutil.NoSuchProcess:
            continue
    psutil.wait_procs(processes_under(root), timeout=10)
    return killed


# Skips CI accepts (and the hooks that fail a CI run on any other): tests/skip_policy.py.
from tests.skip_policy import pytest_runtest_logreport, pytest_sessionfinish  # noqa: E402, F401

# The tiny project that tests/test_pipeline.py and tests/test_experiments.py drive (built
# once per session; each module works in its own copy, so the two can run in parallel).
pytest_plugins = ["tests.pipeline_project"]


# The order modules start in under `make test` (pytest-xdist hands out whole modules, in
# collection order, to whichever worker is free). The longest module first: it builds the
# session's tiny project (tests/pipeline_project.py) while the other worker runs the
# training-mode tests, which need no project; then the other module that uses the project,
# by then built; then the rest, integration before unit tests, the short ones last to fill
# the gaps. Tuned for two workers (a third would wait for the build with the second
# pipeline module). Per-module times: `pytest --durations=0`.
FIRST_MODULES = ("test_experiments.py", "test_training_modes.py", "test_pipeline.py")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Sort the tests into FIRST_MODULES' order (a stable sort: within a module the order
    stays)."""

    def rank(item: pytest.Item) -> int:
        if item.path.name in FIRST_MODULES:
            return FIRST_MODULES.index(item.path.name)
        return len(FIRST_MODULES) + (0 if item.get_closest_marker("integration") else 1)

    items.sort(key=rank)
