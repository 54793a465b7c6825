"""Put params.yaml and every result back as HEAD has them, after a failed run (`make restore`).

    python -m mnist_cnn.restore            # what `make restore` runs
    python -m mnist_cnn.restore --discard  # also drop a finished run without saving it

It never destroys work that exists nowhere else:
  - An output in the workspace that differs from what dvc.lock records (a model written
    outside DVC, say) may have no other copy: it refuses, names each one and says how to
    keep it (`dvc commit`) or set it aside.
  - A *finished* run (`dvc status` clean, yet params.yaml or dvc.lock differ from HEAD) is
    an experiment, not a failure: it is saved first with `dvc exp save`, and the name to
    bring it back with (`dvc exp apply <name>`) is printed.
  - After a *failed* run nothing is lost: every stage that finished has its outputs in
    DVC's cache (and run-cache), and a failed stage's outputs were already removed by DVC.
    An interrupted train stage leaves only its progress files (the training summary with
    `"in_progress": true` and the history so far): those are dropped, not kept.
Then `git checkout HEAD -- params.yaml dvc.lock metrics plots` and `dvc checkout`
(without --force: DVC would ask before overwriting anything it holds no copy of).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time

from mnist_cnn.artifacts import DatasetPaths
from mnist_cnn.datasets import DATASETS

GIT_TRACKED_RESULTS = ["params.yaml", "dvc.lock", "metrics", "plots"]


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
    """The progress files an interrupted train stage left: its summary still says
    `"in_progress": true`, and the history beside it holds the epochs it finished."""
    leftovers = set()
    for key in DATASETS:
        paths = DatasetPaths(key)
        try:
            summary = json.loads(paths.training_summary.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(summary, dict) and summary.get("in_progress") is True:
            leftovers |= {paths.training_summary.as_posix(), paths.history.as_posix()}
    return leftovers


def run(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    tool = shutil.which(args[0]) or args[0]
    return subprocess.run([tool, *args[1:]], capture_output=True, text=True, check=check)


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
    status = json.loads(run("dvc", "status", "--json").stdout or "{}")
    leftovers = interrupted_training_files()
    modified = [path for path in modified_outputs(status) if path not in leftovers]
    if modified:
        listed = "\n  ".join(modified)
        raise RestoreRefused(
            "these outputs differ from what dvc.lock records, and DVC may hold no other "
            f"copy of them:\n  {listed}\nKeep them with `dvc commit <path>` (then `dvc exp "
            "save -n <name>`), or move them away; then run `make restore` again."
        )
    changed = run("git", "status", "--porcelain", "--", *GIT_TRACKED_RESULTS).stdout.strip()
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
    if leftovers:
        print(
            f"restore: dropping an interrupted training run's progress: {', '.join(sorted(leftovers))}"
        )
    run("git", "checkout", "HEAD", "--", *GIT_TRACKED_RESULTS)
    run("dvc", "checkout")
    print("restore: params.yaml, dvc.lock, metrics/, plots/ and the DVC outputs are as committed")


if __name__ == "__main__":
    sys.exit(main())
