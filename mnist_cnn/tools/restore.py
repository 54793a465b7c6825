"""Put params.yaml and every result back as HEAD has them, after a failed run (`make restore`).

    python -m mnist_cnn.tools.restore            # what `make restore` runs
    python -m mnist_cnn.tools.restore --discard  # also drop a finished run without saving it

It never destroys work that exists nowhere else:
  - An output in the workspace that differs from what dvc.lock records (a model written
    outside DVC, say) may have no other copy: it refuses, names each one and says how to
    keep it (`dvc commit`) or set it aside.
  - A *finished* run (`dvc status` clean, yet params.yaml or dvc.lock differ from HEAD) is
    an experiment, not a failure: it is saved first with `dvc exp save`, and the name to
    bring it back with (`dvc exp apply <name>`) is printed.
  - After a *failed* run nothing is lost: every stage that finished has its outputs in
    DVC's cache (and run-cache), and a failed stage's outputs were already removed by DVC.
    An interrupted train stage leaves only DVCLive's files of the epochs so far (and no
    model: DVC removed it before the stage ran): those are dropped, not kept.
  - params.yaml edited but not run (or run and failed): the edit goes to git's stash
    first (`git stash pop` brings it back), with the effective settings under data/params/.
Then `git checkout HEAD -- params.yaml dvc.lock data/params dvclive metrics plots` and
`dvc checkout` (without --force: DVC would ask before overwriting anything it holds no
copy of).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time

from mnist_cnn.artifacts import DatasetPaths
from mnist_cnn.datasets import DATASETS

GIT_TRACKED_RESULTS = ["params.yaml", "dvc.lock", "data/params", "dvclive", "metrics", "plots"]
# What a user edits by hand: kept in git's stash, not dropped, when a restore reverts it.
EDITABLE = ["params.yaml", "data/params"]


class RestoreRefused(Exception):
    """Restoring would lose work; the message says what and how to keep it."""


def modified_outputs(status: dict) -> list[str]:
    """Outputs `dvc status --json` reports as modified: in the workspace, different from
    what dvc.lock records, and so possibly nowhere in DVC's cache."""
    found = []
    for entries in status.values():
        for entry in entries if isinstance(entries, list) else []:
            outs = entry.get("changed outs", {}) if isinstance(entry, dict) else {}
            found.extend(path for path, state in outs.items() if state == "modified")
    return sorted(set(found))


def interrupted_training_files() -> set[str]:
    """DVCLive's files of a train stage that did not finish: DVC removed the stage's model
    before running it and the stage saves it only after training, so no model beside
    DVCLive's directory means the run was interrupted (its epochs so far are all there is)."""
    leftovers = set()
    for key in DATASETS:
        paths = DatasetPaths(key)
        if paths.live_dir.is_dir() and not paths.model.exists():
            leftovers |= {paths.training_summary.as_posix(), paths.training_history.as_posix()}
    return leftovers


def make_git_compare_contents(paths: list[str]) -> None:
    """Give every tracked file under `paths` a fresh mtime, so that git hashes it again
    instead of trusting the size and mtime its index cached.

    A `dvc exp run -S data/params/<ds>.yaml:...` that check_params refuses (DVC 3.67) can
    leave the edited file on disk while git's index holds HEAD's blob with the edited
    file's size and mtime (the edit keeps the length: `epochs: 1` -> `epochs: 2`). Both
    `git status` and `git checkout HEAD -- <path>` then skip the file as unchanged, and
    the edit would survive the restore. Whether it happens depends on which second the
    index was written in, so the check has to be by content every time.
    """
    tracked = run("git", "ls-files", "-z", "--", *paths).stdout.split("\0")
    for path in filter(None, tracked):
        if os.path.isfile(path):
            os.utime(path)


def stash_edits() -> str | None:
    """Put uncommitted edits of params.yaml (and data/params/) into git's stash, which
    also reverts them; the stash entry's message, or None when nothing was edited."""
    edited = run("git", "status", "--porcelain", "--", *EDITABLE).stdout.splitlines()
    if not edited:
        return None
    message = f"make restore {time.strftime('%Y-%m-%d %H:%M:%S')}: params as they were"
    # A stash entry is a commit: give git an author where none is configured.
    env = dict(os.environ)
    if run("git", "config", "user.email", check=False).returncode != 0:
        env |= {
            "GIT_AUTHOR_NAME": "make restore",
            "GIT_AUTHOR_EMAIL": "restore@localhost",
            "GIT_COMMITTER_NAME": "make restore",
            "GIT_COMMITTER_EMAIL": "restore@localhost",
        }
    paths = [line[3:] for line in edited]
    run("git", "stash", "push", "--message", message, "--", *paths, env=env)
    return message


def run(*args: str, check: bool = True, env: dict | None = None) -> subprocess.CompletedProcess:
    tool = shutil.which(args[0]) or args[0]
    return subprocess.run([tool, *args[1:]], capture_output=True, text=True, check=check, env=env)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--discard", action="store_true", help="drop a finished run instead of saving it"
    )
    args = parser.parse_args(argv)
    try:
        restore(discard=args.discard)
    except RestoreRefused as refusal:
        print(f"restore: refused: {refusal}", file=sys.stderr)
        return 1
    except subprocess.CalledProcessError as error:
        print(f"restore: `{' '.join(error.cmd)}` failed:\n{error.stderr}", file=sys.stderr)
        return 1
    return 0


def restore(discard: bool = False) -> None:
    make_git_compare_contents(GIT_TRACKED_RESULTS)
    status = json.loads(run("dvc", "status", "--json").stdout or "{}")
    leftovers = interrupted_training_files()
    # Edits of data/params/ are stashed below, with params.yaml's; leftovers are dropped.
    modified = [
        path
        for path in modified_outputs(status)
        if path not in leftovers and not path.startswith(tuple(EDITABLE))
    ]
    if modified:
        listed = "\n  ".join(modified)
        raise RestoreRefused(
            "these outputs differ from what dvc.lock records, and DVC may hold no other "
            f"copy of them:\n  {listed}\nKeep them with `dvc commit <path>` (then `dvc exp "
            "save -n <name>`), or move them away; then run `make restore` again."
        )
    # Tracked files only: every result a stage writes is tracked, while an untracked file
    # there (a note, a benchmark's output) is no run to save.
    changed = run(
        "git", "status", "--porcelain", "--untracked-files=no", "--", *GIT_TRACKED_RESULTS
    ).stdout.strip()
    if not changed and not status:
        print("restore: nothing to do: params.yaml, results and outputs are as committed")
        return
    if changed and not status and not discard:
        # A complete, consistent run that differs from HEAD: keep it as an experiment.
        name = f"before-restore-{time.strftime('%Y%m%d-%H%M%S')}"
        run("dvc", "exp", "save", "--name", name)
        print(
            f"restore: the workspace held a finished run (not a failed one): saved it as "
            f"experiment {name}; `dvc exp apply {name}` brings it back, `dvc exp remove "
            f"{name}` drops it"
        )
    elif not discard and (stashed := stash_edits()):
        print(
            f"restore: your edit of params.yaml is in git's stash ({stashed!r}): `git stash "
            "pop` brings it back, `git stash list` shows it"
        )
    if leftovers:
        print(
            f"restore: dropping an interrupted training run's progress: {', '.join(sorted(leftovers))}"
        )
    run("git", "checkout", "HEAD", "--", *GIT_TRACKED_RESULTS)
    run("dvc", "checkout")
    print("restore: params, dvc.lock, results and the DVC outputs are as committed")


if __name__ == "__main__":
    sys.exit(main())
