"""The generated results tables of README.md and docs/results.md."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from mnist_cnn.tools.check_results import SEED_STUDY, committed_text
from mnist_cnn.tools.compare import COMMITTED_PARAMS
from mnist_cnn.tools.report import END, PAGES, groups_table, marker, render
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
                }
            )
    rows.append({**rows[0], "group": "train.epochs=1", "test_accuracy": 0.5})  # not counted
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


def test_groups_table_has_every_group_and_its_seeds():
    files = fake_files()
    table = groups_table(lambda path: files[Path(path)])
    assert "| committed params | MNIST | 1, 2, 3 | 99.66 ± 0.02 % (99.64–99.68) |" in table
    assert "| epochs=1 | MNIST | 1 | 50.00 % (1 seed) |" in table


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
        assert text is not None, f"{path} is not committed"
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
