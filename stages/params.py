"""Load params.yaml and check it against one schema before any stage does work.

A typo'd key or an out-of-range value fails fast with one message that names the
key, the value and what is allowed, instead of surfacing minutes into training.

Run as a module (`python -m stages.params`) it is the pipeline's first stage,
`check_params`: every other stage depends on its output, so DVC stops at a bad
params.yaml before it removes any stage's outputs. The output's bytes are the same
for every valid params.yaml, so a valid change invalidates nothing by itself.
"""

from __future__ import annotations

import copy
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from stages.datasets import DATASETS

PARAMS_FILE = Path("params.yaml")
# Output of the check_params stage (see the module docstring); fixed content.
CHECKED_MARKER = Path("data/params.ok")
CHECKED_TEXT = "params.yaml matches the schema in stages/params.py\n"


class ParamsError(ValueError):
    """params.yaml does not match the schema."""


@dataclass(frozen=True)
class Field:
    """One leaf of the schema: its type and the values it may take."""

    kind: str  # "int", "float", "bool", "str", "int_list", "str_list"
    minimum: float | None = None
    maximum: float | None = None
    open_min: bool = False  # value must be strictly greater than minimum
    open_max: bool = False  # value must be strictly less than maximum
    optional: bool = False  # null is allowed
    choices: tuple[str, ...] | None = None
    min_items: int = 1  # for int_list: the fewest entries allowed

    def describe(self) -> str:
        parts = {"int": "an integer", "float": "a number", "bool": "true or false",
                 "str": "a string", "int_list": "a list of integers",
                 "str_list": "a list of strings"}[self.kind]
        if self.kind == "int_list" and self.min_items:
            parts = f"a list of at least {self.min_items} integer(s), each"
        if self.choices:
            parts = "one of " + ", ".join(self.choices)
        low = "(" if self.open_min else "["
        high = ")" if self.open_max else "]"
        if self.minimum is not None or self.maximum is not None:
            lo = "-inf" if self.minimum is None else self.minimum
            hi = "inf" if self.maximum is None else self.maximum
            parts += f" in {low}{lo}, {hi}{high}"
        if self.optional:
            parts += " or null"
        return parts

    def accepts(self, value: Any) -> bool:
        if value is None:
            return self.optional
        if self.kind == "str_list":
            return (isinstance(value, list) and len(value) >= self.min_items
                    and all(isinstance(v, str) and v for v in value))
        if self.kind == "int_list":
            return (isinstance(value, list) and len(value) >= self.min_items
                    and all(self._in_range(v) for v in value))
        return self._in_range(value)

    def _in_range(self, value: Any) -> bool:
        if self.kind == "bool":
            return isinstance(value, bool)
        if self.kind == "str":
            return isinstance(value, str) and (not self.choices or value in self.choices)
        if isinstance(value, bool):  # YAML true/false must not pass for a number
            return False
        if self.kind in ("int", "int_list") and not isinstance(value, int):
            return False
        if self.kind == "float" and not isinstance(value, (int, float)):
            return False
        if self.minimum is not None:
            if value < self.minimum or (self.open_min and value == self.minimum):
                return False
        if self.maximum is not None:
            if value > self.maximum or (self.open_max and value == self.maximum):
                return False
        return True


MONITORS = ("val_loss", "val_accuracy")
PRECISIONS = ("float32", "mixed_bfloat16", "auto")
OPTIMIZERS = ("adam", "adamw")
LR_SCHEDULES = ("constant", "cosine")
STRATEGIES = ("none", "mirrored", "multi_worker")

TRAIN_SCHEMA: dict[str, Any] = {
    "epochs": Field("int", minimum=1),
    "batch_size": Field("int", minimum=1),
    "precision": Field("str", choices=PRECISIONS),
    "optimizer": Field("str", choices=OPTIMIZERS),
    "learning_rate": Field("float", minimum=0, open_min=True),
    "weight_decay": Field("float", minimum=0),
    "lr_schedule": {
        "name": Field("str", choices=LR_SCHEDULES),
        "warmup_epochs": Field("int", minimum=0),
    },
    "label_smoothing": Field("float", minimum=0, maximum=1, open_max=True),
    "augment": {
        "shift_pixels": Field("int", minimum=0, maximum=8),
        "horizontal_flip": Field("bool"),
    },
    "backup_and_restore": Field("bool"),
    "model": {
        "conv_filters": Field("int_list", minimum=1),
        "convs_per_block": Field("int_list", minimum=1),
        "kernel_size": Field("int", minimum=1, maximum=7),
        "padding": Field("str", choices=("same", "valid")),
        "batch_norm": Field("bool"),
        "batch_norm_momentum": Field("float", minimum=0, maximum=1, open_min=True, open_max=True),
        "conv_dropout": Field("float", minimum=0, maximum=1, open_max=True),
        "dense_units": Field("int_list", minimum=1, min_items=0),  # [] = no hidden dense layer
        "dense_dropout": Field("float", minimum=0, maximum=1, open_max=True),
    },
    "early_stopping": {
        "enabled": Field("bool"),
        "monitor": Field("str", choices=MONITORS),
        "patience": Field("int", minimum=0),
    },
    "reduce_lr": {
        "enabled": Field("bool"),
        "monitor": Field("str", choices=MONITORS),
        "factor": Field("float", minimum=0, maximum=1, open_min=True, open_max=True),
        "patience": Field("int", minimum=0),
        "min_lr": Field("float", minimum=0),
    },
    "distribution": {
        "strategy": Field("str", choices=STRATEGIES),
        "devices": Field("str_list", min_items=0),
        "batch_size_per_replica": Field("bool"),
        "scale_learning_rate": Field("bool"),
    },
}

SCHEMA: dict[str, Any] = {
    "seed": Field("int", minimum=0),
    "download": {
        "local_dir": Field("str"),
        "timeout_seconds": Field("float", minimum=0, open_min=True),
        "retries": Field("int", minimum=0, maximum=10),
    },
    "preprocess": {
        "val_fraction": Field("float", minimum=0, maximum=1, open_min=True, open_max=True),
        "max_train_samples": Field("int", minimum=100, optional=True),
        "max_test_samples": Field("int", minimum=10, optional=True),
        "samples_per_class": Field("int", minimum=1, maximum=20),
    },
    "train": TRAIN_SCHEMA,
    "evaluate": {
        "batch_size": Field("int", minimum=1),
        "gallery_size": Field("int", minimum=0, maximum=200),
    },
}


def _validate(value: Any, schema: Any, path: str, partial: bool) -> None:
    """Raise ParamsError unless `value` matches `schema`; `partial` allows missing keys."""
    if isinstance(schema, Field):
        if not schema.accepts(value):
            raise ParamsError(
                f"params.yaml: {path} = {value!r} is not allowed; expected {schema.describe()}"
            )
        return
    if not isinstance(value, dict):
        raise ParamsError(f"params.yaml: {path} must be a mapping, got {value!r}")
    unknown = sorted(set(value) - set(schema))
    if unknown:
        raise ParamsError(
            f"params.yaml: unknown key {path + '.' if path else ''}{unknown[0]}; "
            f"allowed keys here: {', '.join(schema)}"
        )
    for key, sub_schema in schema.items():
        sub_path = f"{path}.{key}" if path else key
        if key not in value:
            if partial:
                continue
            raise ParamsError(f"params.yaml: missing key {sub_path}")
        _validate(value[key], sub_schema, sub_path, partial)


def validate_params(params: Any) -> dict:
    """Check a whole params mapping; return it unchanged when valid."""
    if not isinstance(params, dict):
        raise ParamsError("params.yaml must be a mapping at the top level")
    _validate({k: v for k, v in params.items() if k != "datasets"}, SCHEMA, "", partial=False)
    _check_train_consistency(params["train"], "train")

    datasets = params.get("datasets")
    if not isinstance(datasets, dict) or not datasets:
        raise ParamsError(
            "params.yaml: datasets must map dataset names to their settings, "
            f"e.g. {', '.join(DATASETS)}"
        )
    for name, settings in datasets.items():
        if name not in DATASETS:
            raise ParamsError(
                f"params.yaml: unknown dataset datasets.{name}; known: {', '.join(DATASETS)}"
            )
        # A dataset may override any subset of the shared `train` section.
        _validate(settings or {}, {"train": TRAIN_SCHEMA}, f"datasets.{name}", partial=True)
        _check_train_consistency(train_params_for(params, name), f"datasets.{name}.train")
    return params


def _check_train_consistency(train: dict, path: str) -> None:
    """Rules that span several keys of one (merged) train section."""
    blocks, convs = train["model"]["conv_filters"], train["model"]["convs_per_block"]
    if len(convs) != len(blocks):
        raise ParamsError(
            f"params.yaml: {path}.model.convs_per_block = {convs} needs one entry per conv "
            f"block, like conv_filters = {blocks}"
        )
    if train["reduce_lr"]["enabled"] and train["lr_schedule"]["name"] != "constant":
        raise ParamsError(
            f"params.yaml: {path}.reduce_lr.enabled = true needs lr_schedule.name = constant "
            f"(got {train['lr_schedule']['name']!r}): ReduceLROnPlateau cannot change the rate "
            "of a schedule. Turn one of them off."
        )
    if train["lr_schedule"]["warmup_epochs"] >= train["epochs"]:
        raise ParamsError(
            f"params.yaml: {path}.lr_schedule.warmup_epochs = "
            f"{train['lr_schedule']['warmup_epochs']} leaves no epoch after the warm-up "
            f"(epochs = {train['epochs']})"
        )


def load_params(path: Path | str = PARAMS_FILE) -> dict:
    """Read and validate params.yaml."""
    path = Path(path)
    if not path.is_file():
        raise ParamsError(f"{path} not found: run the stages from the project root")
    with path.open() as handle:
        params = yaml.safe_load(handle)
    return validate_params(params)


def _deep_merge(base: dict, override: dict) -> dict:
    merged = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def train_params_for(params: dict, dataset: str) -> dict:
    """The shared `train` section with `datasets.<dataset>.train` laid over it."""
    settings = params["datasets"].get(dataset)
    if settings is None:
        raise ParamsError(f"params.yaml: dataset {dataset!r} is not listed under datasets")
    return _deep_merge(params["train"], (settings or {}).get("train") or {})


def main() -> int:
    """The check_params stage: one line naming the problem, or the marker file."""
    from stages.artifacts import atomic_path  # numpy only; no TensorFlow here

    try:
        load_params()
    except ParamsError as error:
        print(f"check_params: {error}", file=sys.stderr)
        print("check_params: fix params.yaml (README: Parameters); nothing else was run "
              "or removed.", file=sys.stderr)
        return 1
    except yaml.YAMLError as error:
        print(f"check_params: params.yaml is not valid YAML: {error}", file=sys.stderr)
        return 1
    with atomic_path(CHECKED_MARKER) as tmp:
        tmp.write_text(CHECKED_TEXT)
    print(f"check_params: params.yaml is valid ({CHECKED_MARKER} written)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
