"""params.yaml as one typed schema (pydantic), checked before any stage does work.

Every stage reads its settings through attributes of `Params` (`params.train_for("mnist")
.model.conv_filters`), never through string keys. A typo'd key, a wrong type or an
out-of-range value fails with one line per problem: the dotted key, the value given,
what is allowed, and for unknown keys the closest allowed name.

Run as a module (`python -m mnist_cnn.params`) it is the pipeline's first stage,
`check_params`: every other stage depends on its marker file, so DVC stops at a bad
params.yaml before it removes any stage's outputs. The marker's bytes are the same for
every valid params.yaml, so a valid change invalidates nothing by itself. It also writes
each dataset's *effective* `train` and `evaluate` sections (the shared ones with the
dataset's overrides laid over them) to data/params/<dataset>.yaml: the train and
evaluate stages declare those as their params, so DVC re-runs a dataset's stages exactly
when the settings they use change — not when a shared key that the dataset overrides does.
"""

from __future__ import annotations

import copy
import difflib
import hashlib
import json
import sys
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from mnist_cnn.datasets import DATASETS

PARAMS_FILE = Path("params.yaml")
# Output of the check_params stage (see the module docstring); fixed content.
CHECKED_MARKER = Path("data/params.ok")
CHECKED_TEXT = "params.yaml matches the schema in mnist_cnn/params.py\n"
LOCK_FILE = Path("dvc.lock")  # DVC records what each stage wrote (check_params reads it)

Monitor = Literal["val_loss", "val_accuracy"]
Fraction = Annotated[float, Field(ge=0, lt=1)]  # a dropout or smoothing rate: [0, 1)
PositiveInt = Annotated[int, Field(ge=1)]
# The sections a dataset may override for itself, under `datasets.<name>`.
OVERRIDABLE = ("train", "evaluate")


class ParamsError(ValueError):
    """params.yaml does not match the schema; the message lists every problem."""


class Section(BaseModel):
    """Strict: no unknown keys, no "10" for 10, no true for 1; immutable once loaded."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


SectionT = TypeVar("SectionT", bound=Section)


def section_type(annotation: Any) -> type[Section] | None:
    """The section model a field holds, or None for a leaf value."""
    return annotation if isinstance(annotation, type) and issubclass(annotation, Section) else None


class DownloadParams(Section):
    local_dir: str = Field(
        description="directory with the four `.gz` files, tried first "
        "(the `DATA_SOURCE_DIR` environment variable also works)"
    )
    timeout_seconds: float = Field(gt=0, description="connect/read timeout of each HTTP request")
    retries: int = Field(
        ge=0, le=10, description="extra attempts per mirror on network errors and HTTP 5xx"
    )


class PreprocessParams(Section):
    val_fraction: float = Field(
        gt=0, lt=1, description="stratified share of the training file held out for validation"
    )
    max_train_samples: int | None = Field(
        ge=100, description="null = all 60 000; a number keeps a class-balanced subset"
    )
    max_test_samples: int | None = Field(
        ge=10, description="null = all 10 000 (subsets are for quick checks)"
    )
    samples_per_class: int = Field(
        ge=1, le=20, description="training inputs per class in `plots/<ds>/samples.png`"
    )


class ScheduleParams(Section):
    name: Literal["constant", "cosine"] = Field(
        description="`constant`, or `cosine`: linear warm-up, then cosine decay to 0"
    )
    warmup_epochs: int = Field(ge=0, description="epochs of linear warm-up (cosine only)")


class ErasingParams(Section):
    probability: Fraction = Field(
        description="share of training images that get one random rectangle set to black "
        "(random erasing; 0 = off)"
    )
    min_area: float = Field(gt=0, le=1, description="smallest rectangle, as a share of the image")
    max_area: float = Field(gt=0, le=1, description="largest rectangle, as a share of the image")
    max_aspect_ratio: float = Field(
        ge=1, description="height/width drawn log-uniformly in [1/this, this]"
    )

    @model_validator(mode="after")
    def _area_range(self) -> ErasingParams:
        if self.min_area > self.max_area:
            raise ValueError(
                f"random_erasing.min_area = {self.min_area} is above max_area = {self.max_area}"
            )
        return self

    def __bool__(self) -> bool:
        """On when it erases anything, so it reads like the other augmentation switches."""
        return self.probability > 0


class AugmentParams(Section):
    shift_pixels: int = Field(ge=0, le=8, description="random shift of up to ± this many pixels")
    horizontal_flip: bool = Field(description="random left-right flips (clothes, never digits)")
    rotation_degrees: float = Field(
        ge=0, le=45, description="random rotation within ± this many degrees (0 = off)"
    )
    zoom: float = Field(
        ge=0, lt=1, description="random scale in [1 - zoom, 1 + zoom] about the centre (0 = off)"
    )
    random_erasing: ErasingParams

    # Convention: each field is one augmentation, off at its type's zero (0, 0.0, false; a
    # nested section at probability 0). Both methods rely on it, so a new augmentation
    # needs no list of its own here (tests/test_params.py checks every field).
    def changes_images(self) -> bool:
        """Whether any augmentation is on."""
        return any(getattr(self, name) for name in type(self).model_fields)

    @classmethod
    def all_off(cls) -> dict:
        """A params overlay that switches every augmentation off."""
        return {
            name: {"probability": 0.0} if section_type(field.annotation) else field.annotation()
            for name, field in cls.model_fields.items()
        }


class ModelParams(Section):
    conv_filters: list[PositiveInt] = Field(
        min_length=1, description="filters per conv block; one block per entry"
    )
    convs_per_block: list[PositiveInt] = Field(
        min_length=1, description="conv layers in each block"
    )
    kernel_size: int = Field(ge=1, le=7, description="side of the square conv kernels")
    padding: Literal["same", "valid"] = Field(
        description="`same` keeps the size through each conv, `valid` shrinks it"
    )
    batch_norm: bool = Field(description="batch-norm after every conv and dense layer")
    batch_norm_momentum: float = Field(
        gt=0, lt=1, description="moving-average momentum of the batch-norm statistics"
    )
    conv_dropout: Fraction = Field(description="dropout after each block (0 = none)")
    dense_units: list[PositiveInt] = Field(description="hidden dense layers ([] = none)")
    dense_dropout: Fraction = Field(
        description="dropout after each hidden dense layer (with none: before the softmax)"
    )

    @model_validator(mode="after")
    def _one_conv_count_per_block(self) -> ModelParams:
        if len(self.convs_per_block) != len(self.conv_filters):
            raise ValueError(
                f"convs_per_block = {self.convs_per_block} needs one entry per conv block, "
                f"like conv_filters = {self.conv_filters}"
            )
        return self


class EarlyStoppingParams(Section):
    enabled: bool = Field(description="stop when `monitor` stalls; keep the best epoch's weights")
    monitor: Monitor = Field(description="validation metric that decides")
    patience: int = Field(ge=0, description="epochs without improvement before stopping")


class ReduceLrParams(Section):
    enabled: bool = Field(description="the write-up's ReduceLROnPlateau (needs a constant rate)")
    monitor: Monitor = Field(description="validation metric that decides")
    factor: float = Field(gt=0, lt=1, description="multiply the rate by this when it stalls")
    patience: int = Field(ge=0, description="epochs without improvement before a cut")
    min_lr: float = Field(ge=0, description="the rate never goes below this")


class ThreadParams(Section):
    intra_op: int = Field(
        ge=0, description="TensorFlow threads inside one op (0 = TF's default: one per core)"
    )
    inter_op: int = Field(
        ge=0, description="ops TensorFlow runs at once (0 = TF's default: one per core)"
    )


class WeightAveragingParams(Section):
    enabled: bool = Field(
        description="validate and keep an exponential moving average of the weights"
    )
    momentum: float = Field(
        gt=0, lt=1, description="the average's decay per step (its memory ≈ 1/(1 − momentum) steps)"
    )
    batch_norm_batches: PositiveInt = Field(
        description="training batches that re-estimate the batch-norm statistics for the "
        "averaged weights before each validation"
    )


class DistributionParams(Section):
    strategy: Literal["none", "mirrored", "multi_worker"] = Field(
        description="tf.distribute strategy (docs/scaling-out.md)"
    )
    devices: list[Annotated[str, Field(min_length=1)]] = Field(
        description="`mirrored`: devices to use ([] = every local GPU)"
    )
    batch_size_per_replica: bool = Field(description="global batch = `batch_size` × replicas")
    scale_learning_rate: bool = Field(description="linear rule: rate × global batch / `batch_size`")


class TrainParams(Section):
    epochs: PositiveInt = Field(description="epochs; the cosine schedule spans them all")
    batch_size: PositiveInt = Field(description="per replica (one replica unless distributed)")
    precision: Literal["float32", "mixed_bfloat16", "auto"] = Field(
        description="float32 (default: the same arithmetic on every machine); "
        "mixed_bfloat16 opts in to bfloat16 math; `auto` picks it where it trains faster "
        "(a CPU with AMX, GPUs from Ampere on), so results then depend on the machine"
    )
    optimizer: Literal["adam", "adamw"] = Field(
        description="Adam, or AdamW (decoupled weight decay)"
    )
    learning_rate: float = Field(gt=0, description="peak learning rate (after the warm-up)")
    weight_decay: float = Field(ge=0, description="AdamW's decoupled weight decay")
    lr_schedule: ScheduleParams
    label_smoothing: Fraction = Field(description="label smoothing of the cross-entropy")
    augment: AugmentParams
    backup_and_restore: bool = Field(
        description="resume interrupted training from `checkpoints/<ds>/`"
    )
    threads: ThreadParams
    model: ModelParams
    early_stopping: EarlyStoppingParams
    reduce_lr: ReduceLrParams
    weight_averaging: WeightAveragingParams
    distribution: DistributionParams

    @model_validator(mode="after")
    def _consistent(self) -> TrainParams:
        if self.reduce_lr.enabled and self.lr_schedule.name != "constant":
            raise ValueError(
                f"reduce_lr.enabled = true needs lr_schedule.name = constant (got "
                f"{self.lr_schedule.name!r}): ReduceLROnPlateau cannot change the rate of a "
                "schedule. Turn one of them off."
            )
        if self.weight_averaging.enabled and self.distribution.strategy != "none":
            raise ValueError(
                "weight_averaging.enabled = true runs on one replica only (distribution."
                f"strategy = none, got {self.distribution.strategy!r}): its batch-norm "
                "re-estimation is not written for tf.distribute"
            )
        if self.lr_schedule.warmup_epochs >= self.epochs:
            raise ValueError(
                f"lr_schedule.warmup_epochs = {self.lr_schedule.warmup_epochs} leaves no epoch "
                f"after the warm-up (epochs = {self.epochs})"
            )
        return self


class EvaluateParams(Section):
    batch_size: PositiveInt = Field(description="inference batch size")
    gallery_size: int = Field(
        ge=0, le=200, description="most confident mistakes shown in `plots/<ds>/misclassified.png`"
    )
    test_time_shift_pixels: int = Field(
        ge=0,
        le=3,
        description="test-time augmentation: average the softmax over the image shifted by "
        "every (dx, dy) within ± this many pixels ((2n+1)² views; 0 = off)",
    )


class Params(Section):
    """The whole of params.yaml."""

    seed: int = Field(
        ge=0, description="one seed for the split, subsets, weight init, shuffling and augmentation"
    )
    download: DownloadParams
    preprocess: PreprocessParams
    train: TrainParams
    evaluate: EvaluateParams
    # Per dataset, any part of `train` and of `evaluate` laid over the shared sections;
    # checked in `_datasets_known_and_overrides_valid` (overrides are partial: dicts).
    datasets: dict[str, Any] = Field(
        min_length=1,
        description="the datasets to run, each with `train` and `evaluate` overrides ({} = none)",
    )

    @model_validator(mode="after")
    def _datasets_known_and_overrides_valid(self) -> Params:
        for name in self.datasets:
            self.train_for(name)  # raises for an unknown dataset or a bad override
            self.evaluate_for(name)
        return self

    def train_for(self, dataset: str) -> TrainParams:
        """The shared `train` section with `datasets.<dataset>.train` laid over it."""
        return self._section_for(dataset, "train", TrainParams)

    def evaluate_for(self, dataset: str) -> EvaluateParams:
        """The shared `evaluate` section with `datasets.<dataset>.evaluate` laid over it."""
        return self._section_for(dataset, "evaluate", EvaluateParams)

    def _section_for(self, dataset: str, section: str, schema: type[SectionT]) -> SectionT:
        if dataset not in DATASETS:
            raise ValueError(f"unknown dataset datasets.{dataset}; known: {', '.join(DATASETS)}")
        if dataset not in self.datasets:
            raise ValueError(f"dataset {dataset!r} is not listed under datasets")
        settings = self.datasets[dataset]
        # Both keys, always ({} for none): one place to read a dataset's overrides.
        if not isinstance(settings, dict) or set(settings) != set(OVERRIDABLE):
            raise ValueError(
                f"datasets.{dataset} must hold exactly `train: {{...}}` and `evaluate: {{...}}` "
                f"overrides ({{}} for none), got {settings!r}"
            )
        override = settings[section] or {}
        if not isinstance(override, dict):
            raise ValueError(f"datasets.{dataset}.{section} must be a mapping, got {override!r}")
        merged = deep_merge(getattr(self, section).model_dump(), override)
        try:
            return schema.model_validate(merged)
        except ValidationError as error:
            # Name the key where the user wrote it: the override, or the shared section.
            raise ParamsError(
                "\n".join(
                    describe(
                        problem,
                        section=section,
                        override_prefix=f"datasets.{dataset}.{section}",
                        override=override,
                    )
                    for problem in error.errors()
                )
            ) from None


def deep_merge(base: dict, override: dict) -> dict:
    """`base` with `override` laid over it, recursively for nested mappings (copies)."""
    merged = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def _schema_at(path: tuple) -> type[Section] | None:
    """The section model found at a location of the schema (None past a leaf)."""
    model: Any = Params
    for part in path:
        field = getattr(model, "model_fields", {}).get(part)
        if field is None:
            return None
        model = field.annotation
    return section_type(model)


def _has_path(node: Any, path: tuple) -> bool:
    for part in path:
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True


def describe(
    problem: dict, section: str = "", override_prefix: str = "", override: dict | None = None
) -> str:
    """One line for one pydantic error: the dotted key, the value, what is allowed.

    For an error in a per-dataset view of `section`, the key is named in the override
    when the user wrote it there, else in the shared section.
    """
    location = tuple(str(part) for part in problem["loc"])
    prefix = ""
    if override_prefix:
        in_override = _has_path(override or {}, location)
        prefix = override_prefix if in_override else section
        schema_root: tuple = (section,)
    else:
        schema_root = ()
    key = ".".join(filter(None, (prefix, *location)))
    kind, value = problem["type"], problem.get("input")
    if kind == "extra_forbidden":
        parent = _schema_at(schema_root + location[:-1])
        allowed = list(parent.model_fields) if parent else []
        close = difflib.get_close_matches(location[-1], allowed, n=1)
        hint = f"did you mean {key.rsplit('.', 1)[0]}.{close[0]}? " if close else ""
        return f"params.yaml: unknown key {key}; {hint}allowed here: {', '.join(allowed)}"
    if kind == "missing":
        return f"params.yaml: missing key {key}"
    message = problem["msg"].removeprefix("Value error, ")
    if kind == "value_error" or not location:
        return f"params.yaml: {key + ': ' if key else ''}{message}"
    return f"params.yaml: {key} = {value!r} is not allowed: {message.lower()}"


def validate_params(raw: Any) -> Params:
    """Check a whole params mapping; raise ParamsError listing every problem."""
    if not isinstance(raw, dict):
        raise ParamsError("params.yaml must be a mapping at the top level")
    try:
        return Params.model_validate(raw)
    except ValidationError as error:
        lines = []
        for problem in error.errors():
            nested = problem.get("ctx", {}).get("error")
            # A ParamsError raised inside a validator already carries its own lines.
            lines.append(str(nested) if isinstance(nested, ParamsError) else describe(problem))
        raise ParamsError("\n".join(lines)) from None


def load_params(path: Path | str = PARAMS_FILE) -> Params:
    """Read and validate params.yaml."""
    path = Path(path)
    if not path.is_file():
        raise ParamsError(f"{path} not found: run the stages from the project root")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise ParamsError(f"{path} is not valid YAML: {error}") from None
    return validate_params(raw)


def reference_rows(raw: dict, model: type[BaseModel] = Params, prefix: str = "") -> list[str]:
    """Markdown table rows, one per leaf key: key, value in `raw` (params.yaml), meaning.

    docs/parameters.md holds this table; a test checks it matches the schema and the
    committed params.yaml (`python -m mnist_cnn.params --reference` prints it).
    """
    rows = []
    for name, field in model.model_fields.items():
        key = f"{prefix}{name}"
        value = raw.get(name) if isinstance(raw, dict) else None
        section = section_type(field.annotation)
        if section:
            rows += reference_rows(value or {}, section, f"{key}.")
            continue
        shown = yaml.safe_dump(value, default_flow_style=True, width=1000).strip()
        shown = shown.removesuffix("...").strip().replace("|", "\\|")
        rows.append(f"| `{key}` | `{shown}` | {field.description or ''} |")
    return rows


def reference_table(raw: dict) -> str:
    header = ["| key | value in params.yaml | meaning |", "|---|---|---|"]
    return "\n".join(header + reference_rows(raw)) + "\n"


def main() -> int:
    """The check_params stage: one line per problem, or the marker file."""
    # No TensorFlow here: this stage runs first.
    from mnist_cnn.artifacts import EFFECTIVE_PARAMS_DIR, DatasetPaths, atomic_path

    try:
        params = load_params()
    except ParamsError as error:
        for line in str(error).splitlines():
            print(f"check_params: {line}", file=sys.stderr)
        print(
            "check_params: fix params.yaml (docs/parameters.md); nothing else was run or removed.",
            file=sys.stderr,
        )
        return 1
    wanted_by_key = {key: effective_params_text(params, key) for key in params.datasets}
    edits = [
        line
        for key in params.datasets
        for line in hand_edits(DatasetPaths(key).effective_params, wanted_by_key[key], key)
    ]
    if edits:
        for line in edits:
            print(f"check_params: {line}", file=sys.stderr)
        return 1
    for key, text in wanted_by_key.items():
        with atomic_path(DatasetPaths(key).effective_params) as tmp:
            tmp.write_text(text)
    with atomic_path(CHECKED_MARKER) as tmp:
        tmp.write_text(CHECKED_TEXT)
    print(
        f"check_params: params.yaml is valid ({CHECKED_MARKER} written; each dataset's "
        f"effective train/evaluate settings in {EFFECTIVE_PARAMS_DIR}/)"
    )
    return 0


def effective_params_text(params: Params, dataset: str) -> str:
    """data/params/<dataset>.yaml: what the dataset's train and evaluate stages use."""
    sections = {
        "train": params.train_for(dataset).model_dump(mode="json"),
        "evaluate": params.evaluate_for(dataset).model_dump(mode="json"),
    }
    header = (
        f"# Written by the check_params stage from params.yaml: the train and evaluate\n"
        f"# settings of {dataset} after its overrides. Edit params.yaml, not this file.\n"
    )
    return header + yaml.safe_dump(sections, sort_keys=False)


def recorded_md5(path: Path, lock: Path = LOCK_FILE) -> str | None:
    """The md5 dvc.lock records for the check_params output `path` (None if it has none)."""
    try:
        stage = yaml.safe_load(lock.read_text())["stages"]["check_params"]
    except (OSError, KeyError, TypeError, yaml.YAMLError):
        return None
    return next(
        (out.get("md5") for out in stage.get("outs", []) if out["path"] == path.as_posix()), None
    )


def changed_keys(edited: Any, expected: Any, prefix: str = "") -> list[tuple[str, Any]]:
    """(dotted key, edited value) for every leaf where `edited` differs from `expected`."""
    if isinstance(edited, dict) and isinstance(expected, dict):
        return [
            change
            for key in dict.fromkeys([*expected, *edited])
            for change in changed_keys(edited.get(key), expected.get(key), f"{prefix}{key}.")
        ]
    return [] if edited == expected else [(prefix.rstrip("."), edited)]


def hand_edits(path: Path, wanted: str, dataset: str, lock: Path = LOCK_FILE) -> list[str]:
    """Why check_params refuses to overwrite `path`, or [] when it may.

    An effective file that differs from what the last run wrote (its md5 in dvc.lock) was
    edited since: by hand, or by `dvc exp run -S data/params/<ds>.yaml:…` (the VS Code
    extension offers every params file). Overwriting it would drop the edit without a
    word and run the old settings; a file that already holds what params.yaml gives, or
    that no run recorded, is no edit.
    """
    if not path.is_file():
        return []
    current = path.read_bytes()
    recorded = recorded_md5(path, lock)
    if current == wanted.encode() or recorded in (None, hashlib.md5(current).hexdigest()):  # noqa: S324
        return []
    try:
        changes = changed_keys(yaml.safe_load(current), yaml.safe_load(wanted))
    except yaml.YAMLError:
        changes = []
    lines = [
        f"{path} was edited (by hand, or by `dvc exp run -S {path}:…`), but it is written "
        "from params.yaml by this stage: the edit would be lost. Set the value in "
        "params.yaml instead:"
    ]
    lines += [f"  -S datasets.{dataset}.{key}={json.dumps(value)}" for key, value in changes]
    lines.append(
        "Nothing was run. Undo the edit with `make restore` (it keeps the edit in git's stash)."
    )
    return lines


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m mnist_cnn.params",
        description="Check params.yaml and write data/params/<dataset>.yaml (the "
        "check_params stage).",
    )
    parser.add_argument(
        "--reference",
        action="store_true",
        help="print docs/parameters.md's table of every key instead, and write nothing",
    )
    if parser.parse_args().reference:
        print(reference_table(yaml.safe_load(PARAMS_FILE.read_text())), end="")
        sys.exit(0)
    sys.exit(main())
