"""Is my result right? The workspace's results against the committed seed band.

    mnist-cnn-check-results            # after `make repro` (or any run): per dataset
    make check-results                 # the same

The same code, data and params give bit-identical results on one machine; on another CPU
or with other library versions the float arithmetic rounds differently, and results move
about as much as they do from seed to seed. So "right" means: inside the spread of the
seed study committed in metrics/seed_study.csv (the committed params, several seeds,
through the DVC queue: `make seed-study`, docs/results.md). The band is the 95 %
prediction interval for one more run, mean ± t(0.975, n-1) · std · sqrt(1 + 1/n).

It also lists what differs from the committed run's environment (CPU, ISA flags,
library versions, threads, precision: recorded by the train stage), and says when
params.yaml is not the committed one, since the band then does not apply. Exit status:
0 when every result is inside, 1 when one is outside, 2 when there is nothing to check.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import yaml

from mnist_cnn.artifacts import DatasetPaths, environment_from_entries
from mnist_cnn.datasets import DATASETS
from mnist_cnn.tools.compare import COMMITTED_PARAMS

SEED_STUDY = Path("metrics/seed_study.csv")
# Accuracy as each file names it: the test split's and the validation split's (the latter
# scored by the evaluate stage as the test split is, e.g. with the same shifted views).
SPLITS = {"test": "accuracy", "validation": "val_accuracy"}
STUDY_COLUMNS = {"test": "test_accuracy", "validation": "val_accuracy"}
CONFIDENCE = 0.95


@dataclass(frozen=True)
class Band:
    """Where one more seed's result falls with 95 % probability (normal errors)."""

    n: int
    mean: float
    std: float
    low: float
    high: float
    smallest: float
    largest: float

    def holds(self, value: float) -> bool:
        return self.low <= value <= self.high

    def text(self) -> str:
        return (
            f"{100 * self.low:.2f}–{100 * self.high:.2f} % ({self.n} seeds: "
            f"{100 * self.mean:.2f} ± {100 * self.std:.2f} %, "
            f"min–max {100 * self.smallest:.2f}–{100 * self.largest:.2f})"
        )


def prediction_band(values: pd.Series | list[float]) -> Band:
    """The 95 % prediction interval of one more draw from the seeds' results."""
    from scipy import stats

    values = pd.Series(values, dtype=float).dropna()
    if len(values) < 2:
        raise ValueError(f"a band needs results of at least 2 seeds, got {len(values)}")
    n, mean, std = len(values), float(values.mean()), float(values.std())
    half = float(stats.t.ppf(0.5 + CONFIDENCE / 2, n - 1)) * std * math.sqrt(1 + 1 / n)
    low, high = max(mean - half, 0.0), min(mean + half, 1.0)  # accuracies: within [0, 1]
    return Band(n, mean, std, low, high, float(values.min()), float(values.max()))


def study_bands(study: pd.DataFrame) -> dict[str, dict[str, Band]]:
    """{dataset: {split: band}} from the committed params' rows of the seed study."""
    committed = study[study["group"] == COMMITTED_PARAMS]
    return {
        key: {
            split: prediction_band(committed.loc[committed["dataset"] == key, column])
            for split, column in STUDY_COLUMNS.items()
        }
        for key in DATASETS
        if (committed["dataset"] == key).any()
    }


def environment_differences(committed: dict, here: dict) -> list[str]:
    """`key: here (committed: value)` for every environment entry that differs."""
    return [
        f"{key}: {here.get(key, '-')} (committed run: {committed.get(key, '-')})"
        for key in sorted(set(committed) | set(here))
        if committed.get(key) != here.get(key)
    ]


def check(
    bands: dict[str, dict[str, Band]], results: dict[str, dict[str, float]]
) -> tuple[list[str], bool]:
    """Report lines and whether every result lies inside its band.

    `results` is {dataset: {split: accuracy}}; a dataset without a band is reported so.
    """
    lines, inside = [], True
    for key, splits in results.items():
        title = DATASETS[key].title
        for split, value in splits.items():
            band = bands.get(key, {}).get(split)
            if band is None:
                lines.append(f"{title} {split}: {100 * value:.2f} % — no seed band committed")
                inside = False
                continue
            verdict = "inside" if band.holds(value) else "OUTSIDE"
            inside &= band.holds(value)
            lines.append(
                f"{title} {split}: {100 * value:.2f} % — {verdict} the seed band {band.text()}"
            )
    return lines, inside


def committed_text(path: Path, root: Path = Path(), rev: str = "HEAD") -> str | None:
    """The file (relative to the repository's top) as commit `rev` has it; None outside
    git or when that commit lacks it."""
    git = shutil.which("git")
    if git is None:
        return None
    result = subprocess.run(
        [git, "show", f"{rev}:{path.as_posix()}"],
        cwd=root,
        capture_output=True,
        text=True,
        check=False,
    )
    return result.stdout if result.returncode == 0 else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.parse_args(argv)

    study_text = committed_text(SEED_STUDY)
    if study_text is None:
        print(f"check-results: no {SEED_STUDY} in HEAD: nothing to compare with", file=sys.stderr)
        return 2
    bands = study_bands(pd.read_csv(io.StringIO(study_text)))

    results, environments = {}, {}
    for key in DATASETS:
        paths = DatasetPaths(key)
        if not paths.test_metrics.exists():
            continue
        metrics = json.loads(paths.test_metrics.read_text())
        results[key] = {split: metrics[name] for split, name in SPLITS.items() if name in metrics}
        if paths.training_summary.exists():
            here = json.loads(paths.training_summary.read_text()).get("environment", [])
            committed = json.loads(committed_text(paths.training_summary) or "{}")
            environments[key] = environment_differences(
                environment_from_entries(committed.get("environment", [])),
                environment_from_entries(here),
            )
    if not results:
        print("check-results: no results in metrics/: run `make repro` first", file=sys.stderr)
        return 2

    lines, inside = check(bands, results)
    print("\n".join(lines))
    committed_params = committed_text(Path("params.yaml"))
    params_differ = committed_params is not None and yaml.safe_load(
        committed_params
    ) != yaml.safe_load(Path("params.yaml").read_text())
    if params_differ:
        print(
            "note: params.yaml differs from HEAD's: the band is for the committed params "
            "(`git diff params.yaml`); compare experiments with `mnist-cnn-compare`"
        )
    differences = sorted({line for found in environments.values() for line in found})
    if differences:
        print("environment: differs from the committed run's (with the committed params,")
        print("  expect results inside the band, not bit-identical to it):")
        print("\n".join(f"  {line}" for line in differences))
    elif environments and not params_differ:
        print("environment: the same as the committed run's (expect the committed numbers exactly)")
    elif environments:
        print("environment: the same as the committed run's")
    print(
        "verdict: "
        + (
            "every result is inside the seed band"
            if inside
            else "a result is OUTSIDE the seed band (docs/results.md#seed-study says what moves it)"
        )
    )
    return 0 if inside else 1


if __name__ == "__main__":
    sys.exit(main())
