"""Compare experiments: a compact table and a picture, read through DVC's Python API.

    mnist-cnn-compare                    # table: params that differ, test results per dataset
    mnist-cnn-compare --md               # the same as Markdown (or --csv)
    mnist-cnn-compare --by-seed          # only the seed groups: n, mean ± std, min-max
    mnist-cnn-compare --png sweep.png    # also a picture: validation curves, test accuracy
    mnist-cnn-compare --seed-runs F.csv  # also one row per experiment and dataset, into F.csv
    mnist-cnn-compare --experiments 'seed-*'  # only these experiments (and the baseline)

`dvc exp show` lists every param, metric and dependency hash (dozens of columns); this
shows what a comparison needs: the params that differ from the baseline, then per dataset
the test accuracy and cross-entropy and the epochs run (kept). Experiments that differ
only in `seed` form a group, summarised by n, mean ± std and min-max: a recipe beats
another only when the gap between their means exceeds that spread. Not a pipeline stage.
"""

from __future__ import annotations

import argparse
import fnmatch
import functools
import gc
import json
import sys
from collections.abc import Callable
from pathlib import Path

import pandas as pd

from mnist_cnn.artifacts import (
    DatasetPaths,
    atomic_path,
    environment_from_entries,
    read_training_history,
)
from mnist_cnn.datasets import DATASETS

SHOWN_TYPES = ("baseline", "branch_base", "branch_commit")
SEED_PARAM = "seed"
COMMITTED_PARAMS = "committed params"  # the group of runs that differ from HEAD in seed only


def shown(row: dict) -> bool:
    """Commits and experiments; not the workspace row (also typed "baseline")."""
    return row.get("typ") in SHOWN_TYPES and row.get("rev") != "workspace"


def _value(row: dict, path: str, name: str):
    """A metric from an exp-show row: DVC prefixes a name with its file only when two
    files share it (our datasets always do), so both spellings are tried."""
    return row.get(f"{path}:{name}", row.get(name))


def finished(row: dict) -> bool:
    """A commit, or an experiment that succeeded: a running one already shows its
    epochs so far (live progress) beside the previous run's test metrics."""
    return row.get("State") in (None, "Success")


def row_label(row: dict) -> str:
    name, rev = row.get("Experiment"), str(row.get("rev") or "")[:7]
    label = f"{name} ({rev})" if name and row.get("typ") != "baseline" else f"baseline ({rev})"
    return label if finished(row) else f"{label} [{str(row.get('State')).lower()}]"


def param_text(value) -> str:
    """A param as people write it (exp_show gives numbers as floats): 3, 0.0015, -."""
    if value is None or value == "None":  # absent from that experiment's params.yaml
        return "-"
    if isinstance(value, float):
        return f"{value:.0f}" if value.is_integer() else f"{value:g}"
    return str(value)


def param_columns(rows: list[dict], sections: list[str]) -> list[str]:
    """The exp-show columns that are params.yaml's params: dotted names under one of its
    sections (also keys an experiment added with `-S '+a.b=…'`, which params.yaml lacks).

    DVC prefixes a param with its file when another params file has the same name — here
    each dataset's effective settings, data/params/<ds>.yaml — so `params.yaml:train.epochs`
    counts as `train.epochs`; the effective files' own columns are left out.
    """
    names = dict.fromkeys(name for row in rows for name in row)
    return [name for name in names if (bare := param_name(name)) and bare.split(".")[0] in sections]


def param_name(column: str) -> str | None:
    """`train.epochs` for `train.epochs` or `params.yaml:train.epochs`; None for others."""
    bare = column.removeprefix("params.yaml:")
    return None if ":" in bare else bare


def baseline_row(rows: list[dict]) -> dict:
    rows = [row for row in rows if shown(row)]
    return next((row for row in rows if row.get("typ") == "baseline"), rows[0] if rows else {})


def changed_params(rows: list[dict], sections: list[str]) -> list[str]:
    """The params some shown experiment sets to another value than the baseline."""
    baseline = baseline_row(rows)
    rows = [row for row in rows if shown(row)]
    return [
        name
        for name in param_columns(rows, sections)
        if any(row.get(name) != baseline.get(name) for row in rows)
    ]


def comparison_table(rows: list[dict], sections: list[str]) -> pd.DataFrame:
    """One row per experiment: params that differ from the baseline, then results."""
    changed = changed_params(rows, sections)
    rows = [row for row in rows if shown(row)]
    table = []
    for row in rows:
        entry = {"experiment": row_label(row)}
        entry.update({param_name(name): param_text(row.get(name)) for name in changed})
        for key in DATASETS:
            paths = DatasetPaths(key)
            test, training = paths.test_metrics.as_posix(), paths.training_summary.as_posix()
            entry[f"{key} accuracy"] = _value(row, test, "accuracy")
            entry[f"{key} loss"] = _value(row, test, "loss")
            run, kept = _value(row, training, "step"), _value(row, training, "selected_epoch")
            # Numbers only: a running experiment has no kept epoch yet, and DVC marks a
            # file it failed to read with "!".
            entry[f"{key} epochs (kept)"] = (
                f"{run:.0f} ({kept:.0f})"
                if all(isinstance(value, int | float) for value in (run, kept))
                else None
            )
        table.append(entry)
    return pd.DataFrame(table)


def trained_with_own_params(lock: dict, dataset: str, params_file: Callable[[str], dict]) -> bool:
    """Whether a run's dvc.lock records the dataset's train stage with the params that
    run's own params files hold (`params_file(path)`: the file's content in that run).

    It does not when DVC left the stage out of the run (`dvc exp run evaluate@<other>`):
    the results beside it are then an earlier run's."""
    stage = lock.get("stages", {}).get(f"train@{dataset}")
    if stage is None:
        return False
    for path, recorded in stage.get("params", {}).items():
        own = params_file(path)
        for name, value in recorded.items():
            if (
                functools.reduce(lambda node, part: (node or {}).get(part), name.split("."), own)
                != value
            ):
                return False
    return True


def carried_from_baseline(lock: dict, baseline_lock: dict, dataset: str) -> bool:
    """Whether a run's dvc.lock holds the baseline commit's own train stage for the dataset
    (same params, deps and outputs): an experiment that ran the other dataset's stages
    only, with the baseline's seed, carries the baseline's run, which may come from
    another machine and another session, and gives no row of its own."""
    stage = lock.get("stages", {}).get(f"train@{dataset}")
    return stage is not None and stage == baseline_lock.get("stages", {}).get(f"train@{dataset}")


@functools.cache
def forward_mflop(model_params_json: str) -> float:
    """Forward MFLOP per image of the model `train.model` params (as JSON: one build per
    distinct model over a study's runs) describe; TensorFlow is imported on first use."""
    from mnist_cnn.datasets import IMAGE_SHAPE, NUM_CLASSES
    from mnist_cnn.model import build_model
    from mnist_cnn.params import ModelParams
    from mnist_cnn.tools.bench import forward_flops

    model = build_model(
        ModelParams(**json.loads(model_params_json)), (*IMAGE_SHAPE, 1), NUM_CLASSES
    )
    return round(forward_flops(model) / 1e6, 2)


def named_like(rows: list[dict], pattern: str) -> list[dict]:
    """The experiments whose name matches the glob `pattern`, and the baseline commit's
    row, which they are compared with (the workspace row stays for DVC's own use)."""
    return [
        row
        for row in rows
        if not shown(row)
        or row.get("typ") == "baseline"
        or fnmatch.fnmatchcase(str(row.get("Experiment") or ""), pattern)
    ]


def group_label(row: dict, baseline: dict, changed: list[str], dataset: str) -> str:
    """The params (other than the seed) an experiment sets apart from the baseline for
    one dataset: another dataset's own section (`datasets.<other>.…`) does not count, so
    a recipe studied for one dataset forms one group whatever the other one ran."""
    others = tuple(f"datasets.{key}." for key in DATASETS if key != dataset)
    parts = [
        f"{param_name(name)}={param_text(row.get(name))}"
        for name in changed
        if param_name(name) != SEED_PARAM
        and not param_name(name).startswith(others)
        and row.get(name) != baseline.get(name)
    ]
    return ", ".join(parts) or COMMITTED_PARAMS


def seed_runs(
    rows: list[dict],
    sections: list[str],
    cpu_of: Callable[[str, str], str | None] | None = None,
    trained: Callable[[str, str], bool] | None = None,
    forward_mflop_of: Callable[[str, str], float | None] | None = None,
) -> pd.DataFrame:
    """One row per finished experiment and dataset: its group, seed and results.

    A group is a set of params apart from the seed, per dataset (`group_label`). Each
    (group, seed, dataset) counts once, an experiment's run before the baseline commit's
    own (which may come from another machine).
    Only finished runs count: queued, running and failed experiments are left out.
    `cpu_of(rev, dataset)` names the CPU a run trained on (exp show leaves the training
    summary's environment out: it is a list). `trained(rev, dataset)` says whether the
    dataset's model was trained with that run's own params (its train stage's params in
    the run's dvc.lock): an experiment that ran one dataset's stages only (`dvc exp run
    evaluate@<ds> -S seed=…`) carries the other dataset's earlier results, which are no
    run of its params and give no row. `forward_mflop_of(rev, dataset)` sizes the run's
    model (forward MFLOP per image): with `epochs_run`, what its training cost.
    """
    changed, baseline = changed_params(rows, sections), baseline_row(rows)
    records = []
    for row in rows:
        if not (shown(row) and finished(row)):
            continue
        for key in DATASETS:
            paths = DatasetPaths(key)
            test, training = paths.test_metrics.as_posix(), paths.training_summary.as_posix()
            accuracy = _value(row, test, "accuracy")
            if accuracy is None:
                continue
            seed = row.get(SEED_PARAM, row.get(f"params.yaml:{SEED_PARAM}"))
            if trained and not trained(row["rev"], key):
                continue
            records.append(
                {
                    "group": group_label(row, baseline, changed, key),
                    "seed": None if seed is None else int(seed),
                    "dataset": key,
                    "experiment": row_label(row),
                    "test_accuracy": accuracy,
                    "val_accuracy": _value(row, test, "val_accuracy"),
                    "test_loss": _value(row, test, "loss"),
                    "epochs_run": _value(row, training, "step"),
                    "selected_epoch": _value(row, training, "selected_epoch"),
                    "cpu": cpu_of(row["rev"], key) if cpu_of else None,
                    "forward_mflop": forward_mflop_of(row["rev"], key)
                    if forward_mflop_of
                    else None,
                    "baseline": row.get("typ") == "baseline",
                }
            )
    if not records:
        return pd.DataFrame()
    frame = pd.DataFrame(records).sort_values("baseline", kind="stable")
    frame = frame.drop_duplicates(["group", "seed", "dataset"]).drop(columns="baseline")
    return frame.sort_values(["group", "dataset", "seed"], kind="stable").reset_index(drop=True)


def merge_seed_runs(previous: pd.DataFrame, new: pd.DataFrame) -> pd.DataFrame:
    """A study file's rows updated with new runs: a (group, seed, dataset) run now is
    replaced, every other row is kept.

    Experiments live in the repository that ran them (until `dvc exp push`), so a study
    spread over several sessions or machines accumulates in its file, not in `dvc exp show`.
    """
    merged = pd.concat([new, previous], ignore_index=True)
    merged = merged.drop_duplicates(["group", "seed", "dataset"], keep="first")
    return merged.sort_values(["group", "dataset", "seed"], kind="stable").reset_index(drop=True)


def seed_groups(runs: pd.DataFrame) -> pd.DataFrame:
    """Per group and dataset: n and the mean, std (n-1), min and max of test and
    validation accuracy over the seeds."""
    columns = ["test_accuracy", "val_accuracy"]
    stats = runs.groupby(["group", "dataset"], sort=False)[columns].agg(
        ["count", "mean", "std", "min", "max"]
    )
    stats.columns = [f"{name.removesuffix('_accuracy')} {stat}" for name, stat in stats.columns]
    stats = stats.rename(columns={"test count": "n"}).drop(columns="val count")
    return stats.reset_index()


def spread_text(mean: float, std: float, low: float, high: float, seeds: int | None = None) -> str:
    """Accuracies as people read them: 99.61 ± 0.04 % (99.55–99.67), with `seeds`
    99.61 ± 0.04 % (99.55–99.67, 5 seeds)."""
    if pd.isna(std):  # one seed: no spread yet
        return f"{100 * mean:.2f} % (1 seed)"
    count = "" if seeds is None else f", {seeds} seeds"
    return f"{100 * mean:.2f} ± {100 * std:.2f} % ({100 * low:.2f}–{100 * high:.2f}{count})"


def seed_group_table(groups: pd.DataFrame) -> pd.DataFrame:
    """seed_groups() as text: one row per group, per dataset n and test/val spread."""
    table: dict[str, dict[str, object]] = {}
    for _, row in groups.iterrows():
        entry = table.setdefault(row["group"], {"params (besides seed)": row["group"]})
        key = row["dataset"]
        entry[f"{key} n"] = int(row["n"])
        for split in ("test", "val"):
            entry[f"{key} {split} accuracy"] = spread_text(
                row[f"{split} mean"], row[f"{split} std"], row[f"{split} min"], row[f"{split} max"]
            )
    return pd.DataFrame(list(table.values()))


def short_label(group: str) -> str:
    """A group's label for a figure: `datasets.`, `train.` and `model.` dropped."""
    for prefix in ("datasets.", "train.", "model.", "augment."):
        group = group.replace(prefix, "")
    return group


def plot_comparison(
    runs: pd.DataFrame, histories: dict[str, dict[str, pd.DataFrame]], path: Path | str
) -> None:
    """Per dataset: validation accuracy per epoch of every experiment, and each group's
    test accuracy over seeds (one dot per seed, the mean ± std as a bar)."""
    import matplotlib.pyplot as plt

    from mnist_cnn.figures import save_figure

    figure, axes = plt.subplots(
        len(DATASETS), 2, figsize=(12, 4 * len(DATASETS)), layout="constrained", squeeze=False
    )
    for (curves, spread), key in zip(axes, DATASETS, strict=True):
        title = DATASETS[key].title
        for label, frame in histories.get(key, {}).items():
            curves.plot(frame["epoch"], frame["val_accuracy"], marker="o", ms=2, label=label)
        curves.set_title(f"{title}: validation accuracy")
        curves.set_xlabel("epoch")
        curves.grid(alpha=0.3)
        if curves.lines:
            curves.legend(fontsize=7)

        own = runs[runs["dataset"] == key] if not runs.empty else runs
        labels = list(dict.fromkeys(own["group"])) if not own.empty else []
        for index, group in enumerate(labels):
            values = own.loc[own["group"] == group, "test_accuracy"].astype(float)
            spread.scatter(100 * values, [index] * len(values), s=18, alpha=0.7)
            std = values.std() if len(values) > 1 else 0.0
            spread.errorbar(100 * values.mean(), index, xerr=100 * std, fmt="|k", capsize=6)
        spread.set_yticks(range(len(labels)), [short_label(g) for g in labels], fontsize=7)
        spread.set_title(f"{title}: test accuracy per seed, mean ± std")
        spread.set_xlabel("test accuracy (%)")
        spread.grid(alpha=0.3, axis="x")
    save_figure(figure, path)


def read_histories(rows: list[dict], read: Callable[[str, str], str]) -> dict:
    """{dataset: {experiment label: history table}}; `read(path, rev)` gives a file's text."""
    histories: dict[str, dict[str, pd.DataFrame]] = {key: {} for key in DATASETS}
    for row in filter(shown, rows):
        for key in DATASETS:
            try:
                histories[key][row_label(row)] = read_training_history(
                    DatasetPaths(key).training_history,
                    lambda path, rev=row["rev"]: read(path, rev),
                )
            except FileNotFoundError:  # a commit from before DVCLive logged training
                continue
    return histories


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    output = parser.add_mutually_exclusive_group()
    output.add_argument("--md", action="store_true", help="print Markdown")
    output.add_argument("--csv", action="store_true", help="print CSV")
    parser.add_argument(
        "--by-seed",
        action="store_true",
        help="print only the groups of experiments that differ in seed alone",
    )
    parser.add_argument("--png", type=Path, help="also draw the comparison into this PNG")
    parser.add_argument(
        "--seed-runs",
        type=Path,
        help="also write one CSV row per experiment and dataset into this file (rows of "
        "other runs already in it are kept; a run's earlier row is replaced)",
    )
    parser.add_argument("--rev", default=None, help="baseline commit (default: HEAD)")
    parser.add_argument(
        "--experiments",
        metavar="GLOB",
        help="only the experiments named like GLOB (e.g. 'seed-*'); the baseline commit "
        "is shown but gives no --seed-runs row (its run may be from another machine)",
    )
    args = parser.parse_args(argv)

    import dvc.api
    import yaml
    from dvc.exceptions import PathMissingError
    from ruamel.yaml import YAML

    from mnist_cnn.tools.check_results import committed_text  # which imports this module

    def read(path: str, rev: str) -> str:
        try:
            return dvc.api.read(path, rev=rev)
        except PathMissingError as error:
            raise FileNotFoundError(path) from error

    def cpu_of(rev: str, key: str) -> str | None:
        summary = json.loads(read(DatasetPaths(key).training_summary.as_posix(), rev))
        return environment_from_entries(summary.get("environment", [])).get("cpu")

    # YAML 1.2, as DVC reads dvc.lock and params files: PyYAML (YAML 1.1) reads the
    # lock's `1e-05` as a string where the params file's `1.0e-05` is a number.
    yaml12 = YAML(typ="safe", pure=True)

    @functools.cache
    def committed_yaml(path: str, rev: str) -> dict:
        # From git, not dvc.api.read: the files are in git, and DVC opens the repository
        # anew for every read (seconds over a study's experiments).
        return yaml12.load(committed_text(Path(path), rev=rev) or "") or {}

    rows = dvc.api.exp_show(revs=args.rev, force=True)
    if args.experiments:
        rows = named_like(rows, args.experiments)
    baseline_rev = baseline_row(rows).get("rev")

    def trained(rev: str, key: str) -> bool:
        lock = committed_yaml("dvc.lock", rev)
        if rev != baseline_rev and carried_from_baseline(
            lock, committed_yaml("dvc.lock", baseline_rev), key
        ):
            return False
        return trained_with_own_params(lock, key, lambda path: committed_yaml(path, rev))

    def forward_mflop_of(rev: str, key: str) -> float:
        model_params = committed_yaml(f"data/params/{key}.yaml", rev)["train"]["model"]
        return forward_mflop(json.dumps(model_params, sort_keys=True))

    sections = list(yaml.safe_load(Path("params.yaml").read_text()))
    table = comparison_table(rows, sections)
    if table.empty:
        print("compare: no experiments found (run some with `dvc exp run`)", file=sys.stderr)
        return 1
    runs = seed_runs(
        rows,
        sections,
        cpu_of if args.seed_runs else None,
        trained,
        forward_mflop_of if args.seed_runs else None,
    )
    if args.experiments and not runs.empty:
        runs = runs[~runs["experiment"].str.startswith("baseline")].reset_index(drop=True)
    groups = seed_groups(runs) if not runs.empty else pd.DataFrame()
    tables = [] if args.by_seed else [table]
    if args.by_seed or (not args.csv and not groups.empty and (groups["n"] > 1).any()):
        tables.append(groups if args.csv else seed_group_table(groups))
    for shown_table in tables:
        if args.md:
            print(shown_table.to_markdown(index=False, floatfmt=".4f"), end="\n\n")
        elif args.csv:
            print(shown_table.to_csv(index=False), end="")
        else:
            print(shown_table.to_string(index=False, float_format=lambda v: f"{v:.4f}"), end="\n\n")
    if args.seed_runs and runs.empty:
        print(f"compare: no finished runs: {args.seed_runs} left as it is", file=sys.stderr)
    elif args.seed_runs:
        study = runs
        if args.seed_runs.exists():
            study = merge_seed_runs(pd.read_csv(args.seed_runs), runs)
        with atomic_path(args.seed_runs) as tmp:
            study.to_csv(tmp, index=False)
        print(f"compare: wrote {args.seed_runs} ({len(study)} rows)", file=sys.stderr)
    if args.png:
        histories = read_histories(rows, read)
        plot_comparison(runs, histories, args.png)
        print(f"compare: wrote {args.png}", file=sys.stderr)
    gc.collect()  # close DVC's git objects now, not noisily during interpreter shutdown
    return 0


if __name__ == "__main__":
    sys.exit(main())
