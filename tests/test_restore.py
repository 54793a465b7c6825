"""`make restore`'s pieces that need git only (the whole tool against a pipeline:
tests/test_pipeline.py)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from mnist_cnn.tools.restore import make_git_compare_contents

OLD_MTIME_NS = 1_000_000_000 * 10**9  # long before the index is written: not "racily clean"


def git(repo: Path, *args: str) -> str:
    return subprocess.run(
        ["git", *args], cwd=repo, capture_output=True, text=True, check=True
    ).stdout


def test_an_edit_git_caches_as_unchanged_is_seen_and_restored(tmp_path, monkeypatch):
    """What a refused `dvc exp run -S data/params/...` can leave: an edit of the same
    length whose size and mtime git's index already holds for HEAD's blob. `git status`
    calls it clean; after make_git_compare_contents it does not, and checkout restores."""
    git(tmp_path, "init", "-q")
    git(tmp_path, "config", "core.trustctime", "false")  # the in-place write below changes ctime
    effective = tmp_path / "data" / "params" / "mnist.yaml"
    effective.parent.mkdir(parents=True)
    effective.write_text("train:\n  epochs: 1\n")
    os.utime(effective, ns=(OLD_MTIME_NS, OLD_MTIME_NS))
    git(tmp_path, "add", ".")
    git(tmp_path, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "params")

    with effective.open("r+") as handle:  # same inode, same size, same mtime: a stale stat
        handle.write("train:\n  epochs: 2\n")
    os.utime(effective, ns=(OLD_MTIME_NS, OLD_MTIME_NS))
    assert git(tmp_path, "status", "--porcelain") == ""  # the blind spot, reproduced

    monkeypatch.chdir(tmp_path)
    make_git_compare_contents(["data/params"])
    assert git(tmp_path, "status", "--porcelain") == " M data/params/mnist.yaml\n"
    git(tmp_path, "checkout", "HEAD", "--", "data/params")
    assert effective.read_text() == "train:\n  epochs: 1\n"
