"""Time `dvc repro --force` of two commits in turns: old, new, old, new; medians per stage.

    python -m mnist_cnn.tools.turns OLD NEW                  # both datasets, 2 turns each
    python -m mnist_cnn.tools.turns OLD NEW --turns 3 --target train@mnist

A speed claim compares runs on one machine, taken in turns so that drift over the hour
falls on both sides alike. Each commit is checked out into a git worktree of its own
(under a temporary directory) that uses this repository's DVC cache, and every stage up
to the targets is forced to run. A stage's time runs from DVC's "Running stage" line to
the next one (or to the end of the command). Nothing else should run meanwhile: the
machine's CPU is recorded with the times. Writes docs/repro-turns.json (the benchmark
page shows it: `python -m mnist_cnn.tools.report`). Not a pipeline stage.
"""

from __future__ import annotations

import argparse
import datetime
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path

from mnist_cnn.artifacts import write_json

RESULT_FILE = Path("docs/repro-turns.json")
STAGE_LINE = re.compile(r"Running stage '([^']+)'")


def stage_seconds(lines: Iterable[tuple[float, str]], end: float) -> dict[str, float]:
    """{stage: seconds} from DVC's output lines, each with the time it was read; the last
    stage ends at `end`."""
    seconds: dict[str, float] = {}
    current, started = None, 0.0
    for moment, line in lines:
        if match := STAGE_LINE.search(line):
            if current is not None:
                seconds[current] = moment - started
            current, started = match.group(1), moment
    if current is not None:
        seconds[current] = end - started
    return seconds


def medians(turns: list[dict]) -> dict[str, dict[str, float]]:
    """Per side ("old", "new"): the median over its turns of each stage and of the total."""
    result: dict[str, dict[str, float]] = {}
    for side in dict.fromkeys(turn["side"] for turn in turns):
        own = [turn for turn in turns if turn["side"] == side]
        stages = dict.fromkeys(stage for turn in own for stage in turn["stages"])
        result[side] = {
            stage: statistics.median(turn["stages"].get(stage, 0.0) for turn in own)
            for stage in stages
        }
        result[side]["total"] = statistics.median(turn["total"] for turn in own)
    return result


def timed_repro(worktree: Path, targets: list[str], log: Path) -> tuple[dict[str, float], float]:
    """`dvc repro --force` in `worktree`: each stage's seconds and the whole command's."""
    started = time.monotonic()
    lines = []
    with log.open("w") as handle:
        process = subprocess.Popen(
            [sys.executable, "-m", "dvc", "repro", "--force", *targets],
            cwd=worktree,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for line in process.stdout:
            lines.append((time.monotonic(), line))
            handle.write(line)
        returncode = process.wait()
    end = time.monotonic()
    if returncode != 0:
        sys.exit(f"turns: `dvc repro --force` failed in {worktree} (exit {returncode}): see {log}")
    return stage_seconds(lines, end), end - started


def git(*args: str, cwd: Path = Path()) -> str:
    executable = shutil.which("git")
    if executable is None:
        sys.exit("turns: git is not on PATH")
    return subprocess.run(
        [executable, *args], cwd=cwd, check=True, capture_output=True, text=True
    ).stdout.strip()


def machine() -> dict:
    """What the times depend on besides the code: CPU, its kernels' flags, versions."""
    from mnist_cnn.params import ThreadParams
    from mnist_cnn.runtime import environment

    found = environment("float32", ThreadParams(intra_op=0, inter_op=0))
    return {key: found[key] for key in ("cpu", "cpu_flags", "cpus", "tensorflow", "keras")}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("old", help="the commit to compare against (e.g. the last release)")
    parser.add_argument("new", help="the commit with the change")
    parser.add_argument("--turns", type=int, default=2, help="runs of each commit, alternating")
    parser.add_argument(
        "--target", action="append", default=[], help="stage(s) to force (default: all)"
    )
    parser.add_argument("--result", type=Path, default=RESULT_FILE, help="where to write")
    args = parser.parse_args(argv)

    root = Path(git("rev-parse", "--show-toplevel"))
    cache = root / ".dvc" / "cache"
    revs = {side: git("rev-parse", rev) for side, rev in (("old", args.old), ("new", args.new))}
    turns = []
    with tempfile.TemporaryDirectory(prefix="turns-") as scratch:
        worktrees = {}
        for side, rev in revs.items():
            worktrees[side] = Path(scratch) / side
            git("worktree", "add", "--detach", str(worktrees[side]), rev, cwd=root)
            subprocess.run(
                [sys.executable, "-m", "dvc", "cache", "dir", "--local", str(cache)],
                cwd=worktrees[side],
                check=True,
                capture_output=True,
            )
        try:
            for turn in range(1, args.turns + 1):
                for side in ("old", "new"):
                    log = Path(scratch) / f"{side}-{turn}.log"
                    stages, total = timed_repro(worktrees[side], args.target, log)
                    turns.append({"side": side, "turn": turn, "stages": stages, "total": total})
                    print(f"turns: {side} ({revs[side][:7]}) turn {turn}: {total:.0f} s")
        finally:
            for path in worktrees.values():
                git("worktree", "remove", "--force", str(path), cwd=root)
    result = {
        "date": datetime.date.today().isoformat(),
        "machine": machine(),
        "revs": revs,
        "targets": args.target,
        "turns": turns,
        "medians": medians(turns),
    }
    write_json(args.result, result)
    print(f"turns: wrote {args.result}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
