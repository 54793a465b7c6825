"""No half-written file ever becomes an output: every output is written under a temporary
name and moved into place (mnist_cnn.artifacts). Here the write is interrupted for real:
by an exception, and by SIGKILL of the writing process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from mnist_cnn.artifacts import atomic_dir, atomic_path
from tests.conftest import PROJECT_ROOT


def test_an_error_mid_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    output = tmp_path / "metrics.json"
    output.write_text("old")
    with pytest.raises(RuntimeError), atomic_path(output) as tmp:
        tmp.write_text("half of the n")
        raise RuntimeError("the stage failed while writing")
    assert output.read_text() == "old"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["metrics.json"]


def test_a_finished_write_replaces_the_file(tmp_path):
    output = tmp_path / "metrics.json"
    output.write_text("old")
    with atomic_path(output) as tmp:
        tmp.write_text("new")
    assert output.read_text() == "new"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["metrics.json"]


def test_an_error_mid_directory_keeps_the_old_directory(tmp_path):
    prepared = tmp_path / "prepared"
    prepared.mkdir()
    (prepared / "train.npy").write_text("old")
    with pytest.raises(RuntimeError), atomic_dir(prepared) as staging:
        (staging / "train.npy").write_text("half")
        raise RuntimeError("interrupted")
    assert [path.name for path in prepared.iterdir()] == ["train.npy"]
    assert (prepared / "train.npy").read_text() == "old"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["prepared"]


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_outputs_get_the_permissions_the_umask_gives_any_new_file(tmp_path, umask):
    previous = os.umask(umask)
    try:
        with atomic_path(tmp_path / "metrics.json") as tmp:
            tmp.write_text("{}")
        with atomic_dir(tmp_path / "prepared") as staging:
            (staging / "train.npy").write_text("x")
    finally:
        os.umask(previous)
    assert (tmp_path / "metrics.json").stat().st_mode & 0o777 == 0o666 & ~umask
    assert (tmp_path / "prepared").stat().st_mode & 0o777 == 0o777 & ~umask


# Writes a file through atomic_path in slow chunks, announcing when it is half-way.
WRITER = """
import sys, time
from mnist_cnn.artifacts import atomic_path
with atomic_path(sys.argv[1]) as tmp, open(tmp, "w") as handle:
    for chunk in range(100):
        handle.write("x" * 1000)
        handle.flush()
        if chunk == 10:
            print("half-way", flush=True)
        time.sleep(0.1)
"""


def test_a_writer_killed_mid_write_leaves_the_old_file_and_an_ignored_temporary(tmp_path):
    output = tmp_path / "model.keras"
    output.write_text("the previous model")
    writer = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(output)],
        cwd=PROJECT_ROOT,
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        assert writer.stdout.readline().strip() == "half-way"
        os.killpg(writer.pid, signal.SIGKILL)
    finally:
        writer.kill()
        writer.wait(timeout=30)
    assert output.read_text() == "the previous model"
    strays = [path for path in tmp_path.iterdir() if path != output]
    assert len(strays) == 1 and strays[0].stat().st_size >= 10_000  # the interrupted write
    # The stray matches the pattern .gitignore keeps out of git (`.*.tmp*`).
    assert strays[0].name.startswith(".model.keras.") and ".tmp" in strays[0].name
    ignored = subprocess.run(
        ["git", "check-ignore", "-q", f"models/{strays[0].name}"], cwd=PROJECT_ROOT, check=False
    )
    assert ignored.returncode == 0
