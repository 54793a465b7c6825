"""Where stage outputs live, and how they are written so none is ever half-written.

Every output is first written under a temporary name next to its final path and
then moved into place with os.replace, which is atomic on one file system. A
crash mid-write leaves at most a stray temporary, never a truncated output.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

# Written by the check_params stage: one file per dataset (DatasetPaths.effective_params),
# tracked by git (DVC reads params files without its cache only when git has them).
EFFECTIVE_PARAMS_DIR = Path("data/params")


@dataclass(frozen=True)
class DatasetPaths:
    """Every file and directory the pipeline writes for one dataset, defined once.

    dvc.yaml declares the same paths (with ${key}); tests/test_layout.py checks that the
    two agree, stage by stage (STAGE_OUTPUTS).
    """

    key: str

    def _plots(self, name: str) -> Path:
        return Path("plots") / self.key / name

    # check_params: the dataset's train and evaluate settings after its overrides, which
    # its train and evaluate stages declare as their params (see dvc.yaml)
    @property
    def effective_params(self) -> Path:
        return EFFECTIVE_PARAMS_DIR / f"{self.key}.yaml"

    # download
    @property
    def raw(self) -> Path:
        return Path("data/raw") / self.key

    # preprocess
    @property
    def prepared(self) -> Path:
        return Path("data/prepared") / self.key

    @property
    def data_summary(self) -> Path:
        return Path("metrics") / f"{self.key}_data.json"

    @property
    def class_counts(self) -> Path:
        return self._plots("class_counts.csv")

    @property
    def samples(self) -> Path:
        return self._plots("samples.png")

    # train: the model, and DVCLive's directory (its metrics.json, and one TSV per logged
    # metric under plots/metrics/{train,eval}/, a row per epoch)
    @property
    def model(self) -> Path:
        return Path("models") / f"{self.key}.keras"

    @property
    def live_dir(self) -> Path:
        return Path("dvclive") / self.key

    @property
    def training_summary(self) -> Path:
        return self.live_dir / "metrics.json"

    @property
    def training_history(self) -> Path:
        return self.live_dir / "plots" / "metrics"

    @property
    def training_curves(self) -> Path:
        return self._plots("training_curves.png")

    # evaluate
    @property
    def test_metrics(self) -> Path:
        return Path("metrics") / f"{self.key}.json"

    @property
    def per_class(self) -> Path:
        return self._plots("per_class.csv")

    @property
    def confusion(self) -> Path:
        return self._plots("confusion.csv")

    @property
    def confusion_matrix(self) -> Path:
        return self._plots("confusion_matrix.png")

    @property
    def misclassified(self) -> Path:
        return self._plots("misclassified.png")


# What each per-dataset stage of dvc.yaml writes (names of DatasetPaths properties).
STAGE_OUTPUTS = {
    "download": ("raw",),
    "preprocess": ("prepared", "data_summary", "class_counts", "samples"),
    "train": ("model", "training_summary", "training_history", "training_curves"),
    "evaluate": ("test_metrics", "per_class", "confusion", "confusion_matrix", "misclassified"),
}


def _umask() -> int:
    """The process's umask (os.umask is the only way to read it: set, then restore)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(final: Path | str) -> Iterator[Path]:
    """Yield a temporary path; on success it replaces `final`, on error it is removed."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(
        prefix=f".{final.name}.", suffix=".tmp" + final.suffix, dir=final.parent
    )
    os.close(handle)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        # mkstemp creates the file private (0600); an output gets what open() would give it.
        tmp_path.chmod(0o666 & ~_umask())
        os.replace(tmp_path, final)
    finally:
        tmp_path.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_dir(final: Path | str) -> Iterator[Path]:
    """Yield an empty staging directory that replaces directory `final` on success."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".partial", dir=final.parent))
    try:
        yield staging
        staging.chmod(0o777 & ~_umask())  # mkdtemp's 0700, as for atomic_path's file
        if final.exists():
            shutil.rmtree(final)
        os.replace(staging, final)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def write_json(path: Path | str, data: dict) -> None:
    """Write JSON atomically, with a stable layout so git diffs stay readable."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2) + "\n")


def save_split(directory: Path, split: str, images: np.ndarray, labels: np.ndarray) -> None:
    # Plain .npy (not .npz): the format has no timestamps, so equal arrays give equal bytes.
    np.save(directory / f"{split}_images.npy", images, allow_pickle=False)
    np.save(directory / f"{split}_labels.npy", labels, allow_pickle=False)


def load_split(dataset: str, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Load prepared (images, one-hot labels) for one split; never unpickles."""
    directory = DatasetPaths(dataset).prepared
    images_file = directory / f"{split}_images.npy"
    labels_file = directory / f"{split}_labels.npy"
    for path in (images_file, labels_file):
        if not path.is_file():
            raise FileNotFoundError(
                f"{path} is missing: run `dvc repro preprocess@{dataset}` first"
            )
    images = np.load(images_file, allow_pickle=False)
    labels = np.load(labels_file, allow_pickle=False)
    if len(images) != len(labels):
        raise ValueError(f"{directory}: {split} has {len(images)} images but {len(labels)} labels")
    return images, labels


# What Keras logs each epoch, by the name DVCLive files it under (`val_x` is eval/x.tsv,
# anything else train/x.tsv: dvclive.utils.standardize_metric_name).
TRAINING_LOGS = ("accuracy", "loss", "val_accuracy", "val_loss", "learning_rate")


def live_metric_file(log_name: str) -> str:
    """DVCLive's TSV for a Keras log name, relative to its plots/metrics directory."""
    if log_name.startswith("val_"):
        return f"eval/{log_name.removeprefix('val_')}.tsv"
    return f"train/{log_name}.tsv"


def read_training_history(
    directory: Path | str, read_text: Callable[[str], str] | None = None
) -> pd.DataFrame:
    """The training run's per-epoch table from DVCLive's TSVs under `directory`: a column
    `epoch` (DVCLive's step) and one per Keras log name (`accuracy`, `val_loss`, ...).

    `read_text(path)` reads a file (default: from the workspace; compare reads other
    revisions through DVC). Raises FileNotFoundError when there are no TSVs.
    """
    read_text = read_text or (lambda path: Path(path).read_text())
    table = None
    for name in TRAINING_LOGS:
        path = (Path(directory) / live_metric_file(name)).as_posix()
        try:
            text = read_text(path)
        except FileNotFoundError:
            if name == "learning_rate":  # logged only where the rate is known
                continue
            raise
        column = pd.read_csv(io.StringIO(text), sep="\t").set_index("step").iloc[:, 0]
        column.name = name
        table = column.to_frame() if table is None else table.join(column, how="outer")
    return table.rename_axis("epoch").reset_index()  # the train stage logs epoch n as step n


def environment_entries(environment: dict) -> list[str]:
    """The environment as `name: value` lines, the form the training summary stores.

    A list, not an object: `dvc metrics show`/`diff` and `dvc exp show` tabulate numbers and
    strings but skip lists, so a dozen library versions and CPU flags stay recorded (and
    compared by `make check-results`) without filling the metrics table.
    """
    return [f"{name}: {value}" for name, value in environment.items()]


def environment_from_entries(entries: list[str]) -> dict[str, str]:
    """{name: value} (values as text) from `environment_entries`' lines."""
    return dict(entry.split(": ", 1) for entry in entries)


def write_csv(path: Path | str, table: pd.DataFrame, index: bool = False) -> None:
    """Write a table as CSV atomically (for `dvc plots`)."""
    with atomic_path(path) as tmp:
        table.to_csv(tmp, index=index)
