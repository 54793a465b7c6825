"""The generated results tables of README.md and docs/results.md."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pandas as pd
import pytest

from mnist_cnn.tools.check_results import SEED_STUDY, committed_text
from mnist_cnn.tools.compare import COMMITTED_PARAMS
from mnist_cnn.tools.report import (
    BENCHMARK,
    END,
    PAGES,
    PREVIOUS_DEFAULTS,
    benchmark_table,
    groups_table,
    marker,
    paired_table,
    render,
    results_table,
    seconds_to_reach,
)
from tests.conftest import PROJECT_ROOT


def fake_files() -> dict[Path, str]:
    files = {}
    rows = []
    for key, base in (("mnist", 0.9966), ("fashion_mnist", 0.9450)):
        files[Path(f"metrics/{key}.json")] = json.dumps(
            {"accuracy": base, "val_accuracy": base - 0.001}
        )
        files[Path(f"dvclive/{key}/metrics.json")] = json.dumps({"step": 20, "selected_epoch": 18})
        for seed, shift in ((1, -0.0002), (2, 0.0), (3, 0.0002)):
            rows.append(
                {
                    "group": COMMITTED_PARAMS,
                    "seed": seed,
                    "dataset": key,
                    "test_accuracy": base + shift,
                    "val_accuracy": base - 0.001 + shift,
                    "cpu": "AMD EPYC",
                    "epochs_run": 20 + seed,
                    "forward_mflop": 30.0,
                }
            )
    # Not counted in the committed run's band; half the FLOPs per image, 1 epoch.
    rows.append(
        {
            **rows[0],
            "group": "train.epochs=1",
            "test_accuracy": 0.5,
            "epochs_run": 1,
            "forward_mflop": 15.0,
        }
    )
    files[SEED_STUDY] = pd.DataFrame(rows).to_csv(index=False)
    return files


def test_blocks_are_replaced_and_the_rest_kept():
    files = fake_files()
    page = f"intro\n{marker('results')}old table\n{END}\noutro\n{marker('seeds')}{END}\n"
    rendered = render(page, ["results", "seeds"], lambda path: files[Path(path)])
    assert rendered.startswith("intro\n") and "\noutro\n" in rendered
    assert "old table" not in rendered
    assert "| MNIST | **99.66 %** | 99.66 ± 0.02 % (99.64–99.68, 3 seeds) |" in rendered
    assert "| 20 (18) |" in rendered
    assert "| 2 | 99.66 % | 99.56 % | 94.50 % | 94.40 % | AMD EPYC |" in rendered
    assert render(rendered, ["results", "seeds"], lambda path: files[Path(path)]) == rendered


def test_results_table_shows_a_previous_default_beside_the_committed_params(monkeypatch):
    files = fake_files()
    study = pd.read_csv(io.StringIO(files[SEED_STUDY]))
    before = study[study["group"] == COMMITTED_PARAMS].assign(
        group="train.epochs=30", test_accuracy=lambda rows: rows["test_accuracy"] - 0.01
    )
    files[SEED_STUDY] = pd.concat([study, before]).to_csv(index=False)
    read = lambda path: files[Path(path)]  # noqa: E731
    assert "default until" not in results_table(read)  # only the groups named as such
    monkeypatch.setitem(PREVIOUS_DEFAULTS, "train.epochs=30", "default until 2026-01-01")
    table = results_table(read).splitlines()
    mnist = next(i for i, line in enumerate(table) if line.startswith("| MNIST | **99.66 %**"))
    assert table[mnist + 1].startswith(
        "| MNIST, default until 2026-01-01 (epochs=30) | – | 98.66 ± 0.02 % (98.64–98.68, 3 seeds) |"
    )
    # One seed gives no spread: no row (rather than a band the report cannot compute).
    one_seed = pd.concat([study, before[before["seed"] == 1]])
    files[SEED_STUDY] = one_seed.to_csv(index=False)
    assert "default until" not in results_table(read)
    # The committed params with no seeds recorded: an error that says so, not "nan %".
    files[SEED_STUDY] = study[study["group"] != COMMITTED_PARAMS].to_csv(index=False)
    with pytest.raises(ValueError, match="has no test_accuracy for this group"):
        results_table(read)


def test_groups_table_has_every_group_and_its_seeds():
    files = fake_files()
    table = groups_table(lambda path: files[Path(path)])
    assert "| committed params | MNIST | 1, 2, 3 | 1.00 | 99.66 ± 0.02 % (99.64–99.68) |" in table
    # Training cost: 15 MFLOP x 1 epoch against 30 MFLOP x 22 epochs on average.
    assert f"| epochs=1 | MNIST | 1 | {15 / (30 * 22):.2f} | 50.00 % (1 seed) |" in table


def test_groups_table_without_model_sizes_shows_no_cost():
    files = fake_files()
    study = pd.read_csv(io.StringIO(files[SEED_STUDY])).drop(columns="forward_mflop")
    files[SEED_STUDY] = study.to_csv(index=False)
    table = groups_table(lambda path: files[Path(path)])
    assert "| committed params | MNIST | 1, 2, 3 | – | 99.66 ± 0.02 % (99.64–99.68) |" in table


def test_missing_block_is_an_error():
    with pytest.raises(ValueError, match="no `<!-- generated"):
        render("no markers here", ["results"], lambda path: "")


@pytest.mark.committed_results
@pytest.mark.parametrize("page", sorted(PAGES))
def test_committed_pages_show_the_committed_results(page):
    """README.md and docs/results.md as committed equal their tables generated from the
    committed metrics/ (regenerate with `python -m mnist_cnn.tools.report`)."""

    def read(path: Path) -> str:
        text = committed_text(Path(path), PROJECT_ROOT)
        if text is None:  # the benchmark's table says so until `make bench` has run
            raise FileNotFoundError(f"{path} is not committed")
        return text

    committed_page = read(Path(page))
    assert render(committed_page, PAGES[page], read) == committed_page


def test_check_names_a_stale_page_and_changes_nothing(tmp_path, monkeypatch, capsys):
    """`--check` exits 1 and names the pages whose tables differ from metrics/; without it
    the pages are rewritten, after which `--check` passes."""
    from mnist_cnn.tools.report import main

    monkeypatch.chdir(tmp_path)
    for path, text in fake_files().items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    for page, names in PAGES.items():
        Path(page).parent.mkdir(parents=True, exist_ok=True)
        Path(page).write_text("".join(f"{marker(name)}stale\n{END}\n" for name in names))
    before = {page: Path(page).read_text() for page in PAGES}

    assert main(["--check"]) == 1
    assert capsys.readouterr().out.strip() == (f"report: {', '.join(PAGES)} differ from metrics/")
    assert {page: Path(page).read_text() for page in PAGES} == before
    assert main([]) == 0
    assert main(["--check"]) == 0
    assert "report: no page differ" in capsys.readouterr().out


def bench_result(curves: bool) -> dict:
    """docs/benchmark.json as tools/bench.py writes it."""
    result = {
        "date": "2026-12-08",
        "dataset": "mnist",
        "machine": {
            "cpu": "AMD EPYC",
            "cpu_flags": "avx2 fma",
            "cpus": 2,
            "tensorflow": "2.21.0",
            "keras": "3.15.1",
            "precision": "float32",
        },
        "matmul_gflops": {"float32": 150.4, "mixed_bfloat16": 60.2},
        "peer_vs_stage_images_per_second": {
            "epochs_per_process": 2,
            "peer": [1000.0, 1200.0, 1100.0],
            "stage": [900.0, 1000.0, 1500.0],
        },
        "default_model_images_per_second": {"float32": 758.4, "mixed_bfloat16": 301.0},
    }
    if curves:
        result["accuracy_over_time"] = {
            "peer": {"epoch_seconds": [10.0, 140.6], "val_accuracy": [0.98, 0.9915]},
            "ours": {"epoch_seconds": [40.0, 80.0, 760.0], "val_accuracy": [0.98, 0.992, 0.996]},
        }
    return result


def test_benchmark_table_shows_what_bench_wrote_and_says_when_it_has_not_run():
    def read(path: Path) -> str:
        raise FileNotFoundError(path)

    assert "has not written" in benchmark_table(read)
    table = benchmark_table(lambda path: json.dumps(bench_result(curves=False)))
    assert (
        "| machine | AMD EPYC (avx2 fma), 2 CPUs, TensorFlow 2.21.0, Keras 3.15.1, float32 |"
        in table
    )
    assert (
        "keras.io convnet 1100 (1000–1200), our train stage on the same convnet 1000 "
        "(900–1500): 0.91×" in table
    )
    assert "| 150 float32, 60 bfloat16 |" in table and "float32 758, mixed_bfloat16 301" in table
    assert "against time" not in table
    table = benchmark_table(lambda path: json.dumps(bench_result(curves=True)))
    assert "first at or above 99.15 %, the keras.io convnet's final" in table
    assert (
        "keras.io convnet: first after 141 s, ends after 141 s (2 epochs); "
        "ours: first after 80 s, ends at 99.60 % after 760 s (3 epochs)" in table
    )


def test_seconds_to_reach_is_the_end_of_the_first_epoch_at_or_above():
    curve = {"epoch_seconds": [10.0, 20.0, 30.0], "val_accuracy": [0.97, 0.99, 0.985]}
    assert seconds_to_reach(curve, 0.985) == 20.0
    assert seconds_to_reach(curve, 0.97) == 10.0
    assert seconds_to_reach(curve, 0.991) is None


def test_the_benchmark_table_reads_the_file_bench_writes():
    from mnist_cnn.tools.bench import RESULT_FILE

    assert BENCHMARK == RESULT_FILE


def test_paired_table_differences_on_the_seeds_both_groups_ran():
    files = fake_files()
    study = pd.read_csv(io.StringIO(files[SEED_STUDY]))
    other = study[study["group"] == COMMITTED_PARAMS].copy()
    other = other[other["seed"] != 3].assign(
        group="train.epochs=5", val_accuracy=other["val_accuracy"] - 0.001
    )
    other.loc[other["seed"] == 2, "test_accuracy"] += 0.002
    other = pd.concat([other, other.iloc[:1].assign(seed=9)])  # no committed seed 9
    files[SEED_STUDY] = pd.concat([study, other]).to_csv(index=False)
    table = paired_table(lambda path: files[Path(path)])
    row = next(line for line in table.splitlines() if "| epochs=5 | MNIST |" in line)
    assert "| 1, 2 |" in row  # seed 9 has no partner; seed 3 was not run
    assert "-0.10, -0.10 → **-0.10** ± 0.00" in row
    assert "+0.00, +0.20 → **+0.10** ± 0.14" in row
