"""params.yaml is checked against one schema before any stage runs."""

from __future__ import annotations

import copy
import subprocess
import sys

import pytest
import yaml

from stages.params import ParamsError, load_params, train_params_for, validate_params
from tests.conftest import PROJECT_ROOT


@pytest.fixture
def params() -> dict:
    return load_params(PROJECT_ROOT / "params.yaml")


def with_value(params: dict, dotted: str, value):
    changed = copy.deepcopy(params)
    *parents, leaf = dotted.split(".")
    node = changed
    for key in parents:
        node = node[key]
    node[leaf] = value
    return changed


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("train.epochs", -1, r"train.epochs = -1 is not allowed; expected an integer in \[1, inf\]"),
        ("train.epochs", "10", r"train.epochs = '10' is not allowed"),
        ("train.epochs", True, r"train.epochs = True is not allowed"),
        ("train.model.conv_dropout", 1.0, r"conv_dropout = 1.0 .* in \[0, 1\)"),
        ("preprocess.val_fraction", 0, r"val_fraction = 0 .* in \(0, 1\)"),
        ("preprocess.val_fraction", 1.5, r"val_fraction = 1.5"),
        ("train.early_stopping.monitor", "val_acc", r"one of val_loss, val_accuracy"),
        ("train.model.conv_filters", [], r"conv_filters = \[\]"),
        ("seed", None, r"seed = None"),
        ("train.precision", "float16", r"precision = 'float16' .* one of float32, mixed_bfloat16, auto"),
        ("train.optimizer", "sgd", r"optimizer = 'sgd' .* one of adam, adamw"),
        ("train.label_smoothing", 1.0, r"label_smoothing = 1.0"),
        ("train.augment.shift_pixels", -1, r"shift_pixels = -1"),
        ("train.distribution.strategy", "parameter_server", r"one of none, mirrored, multi_worker"),
        ("train.distribution.devices", "/gpu:0", r"devices = '/gpu:0' .* list of strings"),
        ("train.model.convs_per_block", [1, 2], r"convs_per_block = \[1, 2\] needs one entry per"),
        ("train.lr_schedule.warmup_epochs", 40, r"warmup_epochs = 40 leaves no epoch"),
    ],
)
def test_bad_values_name_key_value_and_rule(params, key, value, message):
    with pytest.raises(ParamsError, match=message):
        validate_params(with_value(params, key, value))


def test_unknown_and_missing_keys(params):
    typo = copy.deepcopy(params)
    typo["train"]["epoch"] = 3
    with pytest.raises(ParamsError, match=r"unknown key train.epoch; allowed keys here: epochs"):
        validate_params(typo)
    missing = copy.deepcopy(params)
    del missing["train"]["batch_size"]
    with pytest.raises(ParamsError, match="missing key train.batch_size"):
        validate_params(missing)
    with pytest.raises(ParamsError, match="unknown dataset datasets.cifar10"):
        validate_params(with_value(params, "datasets.cifar10", {}))


def test_per_dataset_override_is_merged_and_validated(params):
    changed = with_value(params, "datasets.fashion_mnist.train", {"epochs": 30,
                                                                  "model": {"dense_units": [64]}})
    validate_params(changed)
    fashion = train_params_for(changed, "fashion_mnist")
    assert fashion["epochs"] == 30 and fashion["model"]["dense_units"] == [64]
    assert fashion["model"]["conv_filters"] == params["train"]["model"]["conv_filters"]
    assert train_params_for(changed, "mnist") == train_params_for(params, "mnist")
    with pytest.raises(ParamsError, match=r"datasets.mnist.train.epochs = 0"):
        validate_params(with_value(params, "datasets.mnist.train", {"epochs": 0}))


def test_load_reports_missing_file(tmp_path):
    with pytest.raises(ParamsError, match="not found"):
        load_params(tmp_path / "params.yaml")
    (tmp_path / "params.yaml").write_text(yaml.safe_dump([1, 2]))
    with pytest.raises(ParamsError, match="must be a mapping"):
        load_params(tmp_path / "params.yaml")


def test_reduce_lr_on_plateau_needs_a_constant_rate(params):
    both = with_value(params, "train.reduce_lr.enabled", True)
    with pytest.raises(ParamsError, match=r"reduce_lr.enabled = true needs lr_schedule.name"):
        validate_params(both)
    seed_style = with_value(both, "train.lr_schedule.name", "constant")
    assert validate_params(seed_style)["train"]["reduce_lr"]["enabled"] is True


def test_consistency_is_checked_after_the_per_dataset_merge(params):
    bad = with_value(params, "datasets.mnist.train", {"model": {"conv_filters": [16]}})
    with pytest.raises(ParamsError, match=r"datasets.mnist.train.model.convs_per_block"):
        validate_params(bad)


def test_check_stage_writes_the_same_marker_for_any_valid_params(tmp_path, monkeypatch, params):
    """The check_params stage: its output's bytes must not depend on the (valid) values,
    or every params change would invalidate every stage."""
    from stages.params import CHECKED_MARKER, main

    monkeypatch.chdir(tmp_path)
    written = []
    for value in (0.1, 0.3):
        (tmp_path / "params.yaml").write_text(
            yaml.safe_dump(with_value(params, "train.model.conv_dropout", value)))
        assert main() == 0
        written.append((tmp_path / CHECKED_MARKER).read_bytes())
    assert written[0] == written[1]


def test_check_stage_names_the_problem_in_one_line(tmp_path, monkeypatch, params, capsys):
    from stages.params import CHECKED_MARKER, main

    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text(
        yaml.safe_dump(with_value(params, "train.model.conv_dropout", 1.5)))
    assert main() == 1
    first_line = capsys.readouterr().err.splitlines()[0]
    assert first_line == ("check_params: params.yaml: train.model.conv_dropout = 1.5 is not "
                          "allowed; expected a number in [0, 1)")
    assert not (tmp_path / CHECKED_MARKER).exists()


def test_check_stage_does_not_load_tensorflow(tmp_path):
    """It runs before every stage: it must stay cheap (no TensorFlow start-up)."""
    (tmp_path / "params.yaml").write_text((PROJECT_ROOT / "params.yaml").read_text())
    probe = ("import sys; from stages.params import main; code = main(); "
             "print(code, 'tensorflow' in sys.modules, 'keras' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, capture_output=True,
                            text=True, timeout=60,
                            env={"PYTHONPATH": str(PROJECT_ROOT), "PATH": ""})
    assert result.stdout.split()[-3:] == ["0", "False", "False"], result.stderr
