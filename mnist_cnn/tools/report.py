"""The results tables of README.md and docs/, generated from the committed files.

    python -m mnist_cnn.tools.report           # rewrite the generated blocks from metrics/
    python -m mnist_cnn.tools.report --check   # exit 1 if a page differs from what it would write
    python -m mnist_cnn.tools.report seeds     # print one table (the names: TABLES below)

Each table sits between `<!-- generated: python -m mnist_cnn.tools.report NAME -->` and
`<!-- end generated -->`; everything else on the pages is hand-written. The numbers come
from metrics/<ds>.json, dvclive/<ds>/metrics.json, metrics/seed_study.csv and
docs/benchmark.json (`make bench`) and docs/repro-turns.json (`turns`), so a table cannot
drift from the run it describes (tests/test_report.py compares the pages with the
committed files).
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import sys
from collections.abc import Callable
from pathlib import Path

import pandas as pd

from mnist_cnn.artifacts import DatasetPaths
from mnist_cnn.datasets import DATASETS
from mnist_cnn.tools.check_results import SEED_STUDY
from mnist_cnn.tools.compare import COMMITTED_PARAMS, seed_groups, short_label, spread_text

PAGES = {
    "README.md": ["results"],
    "docs/results.md": ["results", "seeds", "groups", "paired"],
    "docs/benchmark.md": ["benchmark", "turns"],
}
Reader = Callable[[Path], str]


def percent(value: float) -> str:
    return f"{100 * value:.2f} %"


# Groups of the seed study that were the default before (each labelled, like every group,
# by what it sets apart from today's params.yaml): the results table shows their spread
# beside today's, so a change of defaults shows what it changed.
PREVIOUS_DEFAULTS: dict[str, str] = {
    "train.model.conv_filters=[32, 64, 128]": "default until 2026-12-07",
}


def committed_seed_runs(read: Reader) -> pd.DataFrame:
    study = pd.read_csv(io.StringIO(read(SEED_STUDY)))
    return study[study["group"] == COMMITTED_PARAMS]


def spreads(group_row: pd.Series, with_seeds: bool = False) -> list[str]:
    """Test and validation spread of one row of compare.seed_groups()."""
    seeds = int(group_row["n"]) if with_seeds else None
    return [
        spread_text(
            *(group_row[f"{split} {stat}"] for stat in ("mean", "std", "min", "max")), seeds
        )
        for split in ("test", "val")
    ]


def results_table(read: Reader) -> str:
    """Per dataset: the committed run, and the seed study's spread of the same params."""
    groups = seed_groups(pd.read_csv(io.StringIO(read(SEED_STUDY)))).set_index(["group", "dataset"])
    lines = [
        "| dataset | test accuracy (committed run) | over seeds: mean ± std (min–max) | "
        "validation accuracy (committed run) | over seeds | epochs (kept) |",
        "|---|---|---|---|---|---|",
    ]
    for key, spec in DATASETS.items():
        paths = DatasetPaths(key)
        test = json.loads(read(paths.test_metrics))
        training = json.loads(read(paths.training_summary))
        if not groups["n"].get((COMMITTED_PARAMS, key), 0):
            raise ValueError(
                f"{SEED_STUDY} has no test_accuracy for this group ({COMMITTED_PARAMS}, "
                f"{spec.title}): record its seeds"
            )
        own = spreads(groups.loc[(COMMITTED_PARAMS, key)], with_seeds=True)
        lines.append(
            f"| {spec.title} | **{percent(test['accuracy'])}** | {own[0]} | "
            f"{percent(test['val_accuracy'])} | {own[1]} | "
            f"{training['step']} ({training['selected_epoch']}) |"
        )
        for group, description in PREVIOUS_DEFAULTS.items():
            # A spread needs two seeds: with fewer, no row.
            if groups["n"].get((group, key), 0) >= 2:
                before = spreads(groups.loc[(group, key)], with_seeds=True)
                lines.append(
                    f"| {spec.title}, {description} ({short_label(group)}) | – | "
                    f"{before[0]} | – | {before[1]} | – |"
                )
    return "\n".join(lines) + "\n"


def seeds_table(read: Reader) -> str:
    """One row per seed of the study: each dataset's test and validation accuracy."""
    runs = committed_seed_runs(read)
    titles = [spec.title for spec in DATASETS.values()]
    lines = [
        "| seed | " + " | ".join(f"{t} test | {t} validation" for t in titles) + " | CPU |",
        "|---" * (2 + 2 * len(titles)) + "|",
    ]
    for seed, rows in runs.groupby("seed", sort=True):
        by_key = rows.set_index("dataset")
        cells = []
        for key in DATASETS:
            row = by_key.loc[key] if key in by_key.index else None
            cells += (
                ["–", "–"]
                if row is None
                else [percent(row["test_accuracy"]), percent(row["val_accuracy"])]
            )
        cpus = ", ".join(sorted(set(rows["cpu"].dropna().astype(str)))) or "–"
        lines.append(f"| {seed} | " + " | ".join(cells) + f" | {cpus} |")
    return "\n".join(lines) + "\n"


def training_cost(study: pd.DataFrame) -> pd.Series:
    """Per group and dataset: training FLOPs as a multiple of the committed params' (the
    model's forward FLOPs per image × the epochs run, averaged over seeds; the image count
    and the 3× of a training step are common to all). Runs without a size count for none:
    a group with no sized run gets NaN."""
    if "forward_mflop" not in study or not (study["group"] == COMMITTED_PARAMS).any():
        return pd.Series(dtype=float)
    cost = (
        (study["forward_mflop"] * study["epochs_run"])
        .groupby([study["group"], study["dataset"]])
        .mean()
    )
    committed = cost.xs(COMMITTED_PARAMS, level="group")
    return cost / committed.reindex(cost.index.get_level_values("dataset")).to_numpy()


def groups_table(read: Reader) -> str:
    """Every group of the study (params apart from the seed) per dataset: n, training
    cost against the committed params', mean ± std: which recipe is fastest at which
    accuracy."""
    study = pd.read_csv(io.StringIO(read(SEED_STUDY)))
    lines = [
        "| params (besides seed) | dataset | seeds | training FLOPs (× committed) "
        "| test accuracy | validation accuracy |",
        "|---|---|---|---|---|---|",
    ]
    seeds = study.groupby(["group", "dataset"])["seed"].agg(
        lambda group: ", ".join(str(seed) for seed in sorted(group))
    )
    cost = training_cost(study)
    for _, row in seed_groups(study).iterrows():
        ratio = cost.get((row["group"], row["dataset"]))
        lines.append(
            f"| {short_label(row['group'])} | {DATASETS[row['dataset']].title} | "
            f"{seeds[row['group'], row['dataset']]} | "
            + ("–" if ratio is None or pd.isna(ratio) else f"{ratio:.2f}")
            + " | "
            + " | ".join(spreads(row))
            + " |"
        )
    return "\n".join(lines) + "\n"


def paired_table(read: Reader) -> str:
    """Each other group against the committed params on the seeds both ran (the same
    seed draws the same validation split): per seed the difference in points (group minus
    committed), and its mean ± std — how a recipe change is judged."""
    study = pd.read_csv(io.StringIO(read(SEED_STUDY)))
    committed = study[study["group"] == COMMITTED_PARAMS].set_index(["dataset", "seed"])
    lines = [
        "| params (besides seed) | dataset | seeds | validation: group − committed (points) "
        "| test: group − committed |",
        "|---|---|---|---|---|",
    ]
    others = study[study["group"] != COMMITTED_PARAMS]
    for (group, key), rows in others.groupby(["group", "dataset"], sort=True):
        rows = rows[[(key, seed) in committed.index for seed in rows["seed"]]]
        if rows.empty:
            continue
        rows = rows.sort_values("seed")
        cells = []
        for column in ("val_accuracy", "test_accuracy"):
            base = [committed.loc[(key, seed), column] for seed in rows["seed"]]
            points = [100 * (own - other) for own, other in zip(rows[column], base, strict=True)]
            spread = f" ± {statistics.stdev(points):.2f}" if len(points) > 1 else ""
            listed = ", ".join(f"{value:+.2f}" for value in points)
            cells.append(f"{listed} → **{statistics.mean(points):+.2f}**{spread}")
        seeds = ", ".join(str(seed) for seed in rows["seed"])
        lines.append(
            f"| {short_label(group)} | {DATASETS[key].title} | {seeds} | "
            + " | ".join(cells)
            + " |"
        )
    return "\n".join(lines) + "\n"


def value_range(values: list[float]) -> str:
    """'lowest–highest', whole numbers: the runs behind a median."""
    return f"{min(values):.0f}–{max(values):.0f}"


def seconds_to_reach(curve: dict, accuracy: float) -> float | None:
    """Wall seconds at the end of the first epoch whose validation accuracy reaches
    `accuracy` (None: never)."""
    for seconds, reached in zip(curve["epoch_seconds"], curve["val_accuracy"], strict=True):
        if reached >= accuracy:
            return seconds
    return None


BENCHMARK = Path("docs/benchmark.json")  # what `make bench` writes (tools/bench.py)


def benchmark_table(read: Reader) -> str:
    """What the last `make bench` measured, with its machine; a note until it has run."""
    try:
        bench = json.loads(read(BENCHMARK))
    except FileNotFoundError:
        return "`make bench` has not written `docs/benchmark.json` yet.\n"
    machine = bench["machine"]
    ceiling = bench["matmul_gflops"]
    turns = bench["peer_vs_stage_images_per_second"]
    peer, stage = (statistics.median(turns[name]) for name in ("peer", "stage"))
    speed = bench["default_model_images_per_second"]
    rows = [
        ("run", f"{bench['date']}, {DATASETS[bench['dataset']].title}"),
        (
            "machine",
            f"{machine['cpu']} ({machine['cpu_flags']}), {machine['cpus']} CPUs, "
            f"TensorFlow {machine['tensorflow']}, Keras {machine['keras']}, "
            f"{machine['precision']}",
        ),
        (
            "matmul ceiling (4096², GFLOP/s)",
            f"{ceiling['float32']:.0f} float32, {ceiling['mixed_bfloat16']:.0f} bfloat16",
        ),
        (
            f"images/s of `fit()`, {turns['epochs_per_process']} epochs per process, "
            f"{len(turns['peer'])} processes each in turns (median)",
            f"keras.io convnet {peer:.0f} ({value_range(turns['peer'])}), our train stage on the "
            f"same convnet {stage:.0f} ({value_range(turns['stage'])}): {stage / peer:.2f}×",
        ),
        (
            "default model, images/s of training steps",
            ", ".join(f"{name} {value:.0f}" for name, value in speed.items()),
        ),
    ]
    if over_time := bench.get("accuracy_over_time"):
        peer_run, ours = over_time["peer"], over_time["ours"]
        final = peer_run["val_accuracy"][-1]
        # Both sides measured alike: the end of the first epoch at or above the peer's final.
        firsts = [seconds_to_reach(curve, final) for curve in (peer_run, ours)]
        peer_first, ours_first = (
            "never" if seconds is None else f"after {seconds:.0f} s" for seconds in firsts
        )
        rows.append(
            (
                f"validation accuracy against time (one run each; first at or above "
                f"{percent(final)}, the keras.io convnet's final)",
                f"keras.io convnet: first {peer_first}, ends after "
                f"{peer_run['epoch_seconds'][-1]:.0f} s ({len(peer_run['epoch_seconds'])} epochs); "
                f"ours: first {ours_first}, ends at {percent(ours['val_accuracy'][-1])} after "
                f"{ours['epoch_seconds'][-1]:.0f} s ({len(ours['epoch_seconds'])} epochs)",
            )
        )
    lines = ["| measured | |", "|---|---|", *(f"| {name} | {value} |" for name, value in rows)]
    return "\n".join(lines) + "\n"


TURNS = Path("docs/repro-turns.json")  # what tools/turns.py writes


def turns_table(read: Reader) -> str:
    """`dvc repro --force` of two commits timed in turns: medians per stage, the ratio."""
    try:
        timed = json.loads(read(TURNS))
    except FileNotFoundError:
        return "`python -m mnist_cnn.tools.turns` has not written `docs/repro-turns.json` yet.\n"
    old, new = timed["medians"]["old"], timed["medians"]["new"]
    revs = {side: rev[:7] for side, rev in timed["revs"].items()}
    counts = {side: sum(turn["side"] == side for turn in timed["turns"]) for side in revs}
    machine = timed["machine"]
    targets = ", ".join(f"`{target}`" for target in timed.get("targets", []))
    forced = f"the stages up to {targets}" if targets else "every stage"
    lines = [
        f"{timed['date']}, {machine['cpu']} ({machine['cpu_flags']}), {machine['cpus']} CPUs; "
        f"{forced} forced, medians of {counts['old']} and {counts['new']} runs, taken in turns:",
        "",
        f"| stage | old `{revs['old']}` (s) | new `{revs['new']}` (s) | new / old |",
        "|---|---|---|---|",
    ]
    stages = [stage for stage in dict.fromkeys([*old, *new]) if stage != "total"]
    for stage in [*stages, "total"]:
        before, after = old.get(stage), new.get(stage)
        ratio = f"{after / before:.2f}" if before and after is not None else "–"
        cells = [f"{value:.0f}" if value is not None else "–" for value in (before, after)]
        name = f"**{stage}**" if stage == "total" else f"`{stage}`"
        lines.append(f"| {name} | {cells[0]} | {cells[1]} | {ratio} |")
    return "\n".join(lines) + "\n"


TABLES = {
    "results": results_table,
    "seeds": seeds_table,
    "groups": groups_table,
    "paired": paired_table,
    "benchmark": benchmark_table,
    "turns": turns_table,
}


def marker(name: str) -> str:
    return f"<!-- generated: python -m mnist_cnn.tools.report {name} -->\n"


END = "<!-- end generated -->"


def render(page: str, names: list[str], read: Reader) -> str:
    """`page` with each named block replaced by the table generated from `read`."""
    for name in names:
        head, found, rest = page.partition(marker(name))
        if not found:
            raise ValueError(f"no `{marker(name).strip()}` block")
        _, _, tail = rest.partition(END)
        page = head + marker(name) + TABLES[name](read) + END + tail
    return page


def workspace_reader(root: Path = Path()) -> Reader:
    return lambda path: (root / path).read_text()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only report pages that differ")
    parser.add_argument(
        "tables", nargs="*", help=f"print these tables ({', '.join(TABLES)}), rewrite nothing"
    )
    args = parser.parse_args(argv)
    if unknown := [name for name in args.tables if name not in TABLES]:
        parser.error(f"no table {', '.join(unknown)}: choose from {', '.join(TABLES)}")
    read, stale = workspace_reader(), []
    if args.tables:
        print("\n".join(TABLES[name](read) for name in args.tables), end="")
        return 0
    for page_name, names in PAGES.items():
        path = Path(page_name)
        text = path.read_text()
        rendered = render(text, names, read)
        if rendered != text:
            stale.append(page_name)
            if not args.check:
                path.write_text(rendered)
    verb = "differ from metrics/" if args.check else "rewritten"
    print(f"report: {', '.join(stale) or 'no page'} {verb}")
    return 1 if args.check and stale else 0


if __name__ == "__main__":
    sys.exit(main())
