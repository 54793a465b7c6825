"""Compare experiments: a compact table and a picture, read through DVC's Python API.

    mnist-cnn-compare                    # table: params that differ, test results per dataset
    mnist-cnn-compare --md               # the same as Markdown (or --csv)
    mnist-cnn-compare --png sweep.png    # also a picture: validation curves and test accuracy

`dvc exp show` lists every param, metric and dependency hash (dozens of columns); this
shows what a comparison needs: the params that differ from the baseline, then per dataset
the test accuracy and cross-entropy and the epochs run (kept). Not a pipeline stage.
"""

from __future__ import annotations

import argparse
import gc
import io
import sys
from collections.abc import Callable
from pathlib import Path

import pandas as pd

from mnist_cnn.artifacts import DatasetPaths
from mnist_cnn.datasets import DATASETS

SHOWN_TYPES = ("baseline", "branch_base", "branch_commit")


def shown(row: dict) -> bool:
    """Commits and experiments; not the workspace row (also typed "baseline")."""
    return row.get("typ") in SHOWN_TYPES and row.get("rev") != "workspace"


def _value(row: dict, path: str, name: str):
    """A metric from an exp-show row: DVC prefixes a name with its file only when two
    files share it (our datasets always do), so both spellings are tried."""
    return row.get(f"{path}:{name}", row.get(name))


def row_label(row: dict) -> str:
    name, rev = row.get("Experiment"), str(row.get("rev") or "")[:7]
    return f"{name} ({rev})" if name and row.get("typ") != "baseline" else f"baseline ({rev})"


def param_text(value) -> str:
    """A param as people write it (exp_show gives numbers as floats): 3, 0.0015, -."""
    if value is None or value == "None":  # absent from that experiment's params.yaml
        return "-"
    if isinstance(value, float):
        return f"{value:.0f}" if value.is_integer() else f"{value:g}"
    return str(value)


def param_columns(rows: list[dict], sections: list[str]) -> list[str]:
    """The exp-show columns that are params: dotted names under a params.yaml section
    (also keys an experiment added with `-S '+a.b=…'`, which params.yaml lacks)."""
    names = dict.fromkeys(name for row in rows for name in row)
    return [name for name in names if name.split(".")[0] in sections and ":" not in name]


def comparison_table(rows: list[dict], sections: list[str]) -> pd.DataFrame:
    """One row per experiment: params that differ from the baseline, then results."""
    rows = [row for row in rows if shown(row)]
    baseline = next((row for row in rows if row.get("typ") == "baseline"), rows[0] if rows else {})
    changed = [
        name
        for name in param_columns(rows, sections)
        if any(row.get(name) != baseline.get(name) for row in rows)
    ]
    table = []
    for row in rows:
        entry = {"experiment": row_label(row)}
        entry.update({name: param_text(row.get(name)) for name in changed})
        for key in DATASETS:
            paths = DatasetPaths(key)
            test, training = paths.test_metrics.as_posix(), paths.training_summary.as_posix()
            entry[f"{key} accuracy"] = _value(row, test, "accuracy")
            entry[f"{key} loss"] = _value(row, test, "loss")
            run, kept = _value(row, training, "epochs_run"), _value(row, training, "selected_epoch")
            entry[f"{key} epochs (kept)"] = (
                f"{run:.0f} ({kept:.0f})" if run is not None and kept is not None else None
            )
        table.append(entry)
    return pd.DataFrame(table)


def plot_comparison(
    table: pd.DataFrame, histories: dict[str, dict[str, pd.DataFrame]], path: Path | str
) -> None:
    """Validation accuracy per epoch of every experiment, per dataset, and test accuracy."""
    import matplotlib.pyplot as plt

    from mnist_cnn.figures import save_figure

    figure, axes = plt.subplots(
        1, len(DATASETS) + 1, figsize=(5.5 * (len(DATASETS) + 1), 4), layout="constrained"
    )
    for axis, key in zip(axes, DATASETS, strict=False):
        for label, frame in histories.get(key, {}).items():
            axis.plot(frame["epoch"], frame["val_accuracy"], marker="o", ms=2, label=label)
        axis.set_title(f"{DATASETS[key].title}: validation accuracy")
        axis.set_xlabel("epoch")
        axis.grid(alpha=0.3)
        axis.legend(fontsize=7)
    accuracy = table.set_index("experiment")[[f"{key} accuracy" for key in DATASETS]]
    accuracy.columns = [DATASETS[key].title for key in DATASETS]
    accuracy.plot.barh(ax=axes[-1])
    low = accuracy.min().min()
    axes[-1].set_xlim(max(0.0, low - (1 - low)), 1.0)  # zoom in on the differences
    axes[-1].set_title("test accuracy")
    axes[-1].set_ylabel("")
    axes[-1].legend(fontsize=7)
    save_figure(figure, path)


def read_histories(rows: list[dict], read: Callable[[str, str], str]) -> dict:
    """{dataset: {experiment label: history table}}; `read(path, rev)` gives a file's text."""
    histories: dict[str, dict[str, pd.DataFrame]] = {key: {} for key in DATASETS}
    for row in filter(shown, rows):
        for key in DATASETS:
            try:
                text = read(DatasetPaths(key).history.as_posix(), row["rev"])
            except FileNotFoundError:  # a commit from before history.csv existed
                continue
            histories[key][row_label(row)] = pd.read_csv(io.StringIO(text))
    return histories


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    output = parser.add_mutually_exclusive_group()
    output.add_argument("--md", action="store_true", help="print Markdown")
    output.add_argument("--csv", action="store_true", help="print CSV")
    parser.add_argument("--png", type=Path, help="also draw the comparison into this PNG")
    parser.add_argument("--rev", default=None, help="baseline commit (default: HEAD)")
    args = parser.parse_args(argv)

    import dvc.api
    import yaml

    rows = dvc.api.exp_show(revs=args.rev, force=True)
    sections = list(yaml.safe_load(Path("params.yaml").read_text()))
    table = comparison_table(rows, sections)
    if table.empty:
        print("compare: no experiments found (run some with `dvc exp run`)", file=sys.stderr)
        return 1
    if args.md:
        print(table.to_markdown(index=False, floatfmt=".4f"))
    elif args.csv:
        print(table.to_csv(index=False), end="")
    else:
        print(table.to_string(index=False, float_format=lambda value: f"{value:.4f}"))
    if args.png:
        from dvc.exceptions import PathMissingError

        def read(path: str, rev: str) -> str:
            try:
                return dvc.api.read(path, rev=rev)
            except PathMissingError as error:
                raise FileNotFoundError(path) from error

        histories = read_histories(rows, read)
        plot_comparison(table, histories, args.png)
        print(f"compare: wrote {args.png}", file=sys.stderr)
    gc.collect()  # close DVC's git objects now, not noisily during interpreter shutdown
    return 0


if __name__ == "__main__":
    sys.exit(main())
