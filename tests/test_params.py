"""params.yaml is checked against one schema before any stage runs."""

from __future__ import annotations

import copy
import hashlib
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from mnist_cnn.params import (
    AugmentParams,
    ParamsError,
    deep_merge,
    load_params,
    validate_params,
)
from tests.conftest import PROJECT_ROOT, committed_params, with_value


@pytest.fixture
def params() -> dict:
    """The committed params.yaml as plain YAML data, to be broken by each test."""
    return committed_params()


@pytest.mark.parametrize(
    "key, value, message",
    [
        (
            "train.epochs",
            -1,
            r"train.epochs = -1 is not allowed: input should be greater than or equal to 1",
        ),
        ("train.epochs", "10", r"train.epochs = '10' is not allowed"),
        ("train.epochs", True, r"train.epochs = True is not allowed"),
        (
            "train.model.conv_dropout",
            1.0,
            r"conv_dropout = 1.0 is not allowed: input should be less than 1",
        ),
        (
            "preprocess.val_fraction",
            0,
            r"val_fraction = 0 is not allowed: input should be greater than 0",
        ),
        ("preprocess.val_fraction", 1.5, r"val_fraction = 1.5"),
        (
            "train.early_stopping.monitor",
            "val_acc",
            r"monitor = 'val_acc' .*: input should be 'val_loss' or 'val_accuracy'",
        ),
        ("train.model.conv_filters", [], r"conv_filters = \[\]"),
        ("seed", None, r"seed = None"),
        (
            "train.precision",
            "float16",
            r"precision = 'float16' .* 'float32', 'mixed_bfloat16' or 'auto'",
        ),
        ("train.optimizer", "sgd", r"optimizer = 'sgd' .* 'adam' or 'adamw'"),
        ("train.label_smoothing", 1.0, r"label_smoothing = 1.0"),
        ("train.augment.shift_pixels", -1, r"shift_pixels = -1"),
        (
            "train.distribution.strategy",
            "parameter_server",
            r"strategy = 'parameter_server' .* 'none', 'mirrored' or 'multi_worker'",
        ),
        ("train.distribution.devices", "/gpu:0", r"devices = '/gpu:0' .* valid list"),
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
    with pytest.raises(
        ParamsError, match=r"unknown key train.epoch; did you mean train.epochs\? allowed here"
    ):
        validate_params(typo)
    nested = with_value(params, "datasets.mnist.train", {"model": {"dropout": 0.1}})
    with pytest.raises(
        ParamsError,
        match=r"unknown key datasets.mnist.train.model.dropout; "
        r"did you mean datasets.mnist.train.model.\w+_dropout",
    ):
        validate_params(nested)
    missing = copy.deepcopy(params)
    del missing["train"]["batch_size"]
    with pytest.raises(ParamsError, match="missing key train.batch_size"):
        validate_params(missing)
    with pytest.raises(ParamsError, match="unknown dataset datasets.cifar10"):
        validate_params(with_value(params, "datasets.cifar10", {}))


def test_per_dataset_override_is_merged_and_validated(params):
    changed = with_value(
        params, "datasets.fashion_mnist.train", {"epochs": 30, "model": {"dense_units": [64]}}
    )
    fashion = validate_params(changed).train_for("fashion_mnist")
    assert fashion.epochs == 30 and fashion.model.dense_units == [64]
    assert fashion.model.conv_filters == params["train"]["model"]["conv_filters"]
    assert validate_params(changed).train_for("mnist") == validate_params(params).train_for("mnist")
    with pytest.raises(ParamsError, match=r"datasets.mnist.train.epochs = 0"):
        validate_params(with_value(params, "datasets.mnist.train", {"epochs": 0}))


def test_per_dataset_evaluate_override(params):
    changed = with_value(params, "datasets.mnist.evaluate", {"test_time_shift_pixels": 2})
    loaded = validate_params(changed)
    assert loaded.evaluate_for("mnist").test_time_shift_pixels == 2
    assert loaded.evaluate_for("mnist").batch_size == params["evaluate"]["batch_size"]
    assert loaded.evaluate_for("fashion_mnist") == validate_params(params).evaluate_for(
        "fashion_mnist"
    )
    with pytest.raises(
        ParamsError, match=r"datasets.mnist.evaluate.test_time_shift_pixels = 9 is not allowed"
    ):
        validate_params(
            with_value(params, "datasets.mnist.evaluate", {"test_time_shift_pixels": 9})
        )
    # dvc.yaml names both keys as params of the dataset's stages, so both must be there.
    without = copy.deepcopy(params)
    del without["datasets"]["mnist"]["evaluate"]
    with pytest.raises(ParamsError, match=r"datasets.mnist must hold exactly `train: \{...\}`"):
        validate_params(without)


def test_every_problem_is_listed_one_per_line(params):
    broken = with_value(with_value(params, "seed", -1), "train.optimizer", "sgd")
    with pytest.raises(ParamsError) as raised:
        validate_params(broken)
    lines = str(raised.value).splitlines()
    assert len(lines) == 2 and lines[0].startswith("params.yaml: seed = -1")
    assert lines[1].startswith("params.yaml: train.optimizer = 'sgd'")


def test_params_are_read_through_attributes_and_are_immutable(params):
    loaded = validate_params(params)
    assert loaded.train_for("mnist").model.conv_filters == params["train"]["model"]["conv_filters"]
    with pytest.raises(ValueError, match="frozen"):
        loaded.train.epochs = 3


# One value that switches each augmentation on (a new field fails the test until added).
AUGMENTATION_ON = {
    "shift_pixels": 1,
    "horizontal_flip": True,
    "rotation_degrees": 5.0,
    "zoom": 0.1,
    "random_erasing": {"probability": 0.5},
}


def test_all_off_switches_every_augmentation_off_and_each_one_counts(params):
    def augment_with(overlay: dict) -> AugmentParams:
        return AugmentParams.model_validate(deep_merge(params["train"]["augment"], overlay))

    assert set(AUGMENTATION_ON) == set(AugmentParams.model_fields)
    off = AugmentParams.all_off()
    assert not augment_with(off).changes_images()
    for name, value in AUGMENTATION_ON.items():
        assert augment_with({**off, name: value}).changes_images(), name


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
    assert validate_params(seed_style).train.reduce_lr.enabled is True


def test_consistency_is_checked_after_the_per_dataset_merge(params):
    bad = with_value(params, "datasets.mnist.train", {"model": {"conv_filters": [16]}})
    with pytest.raises(ParamsError, match=r"datasets.mnist.train.model: convs_per_block"):
        validate_params(bad)


def test_check_stage_writes_the_same_marker_for_any_valid_params(tmp_path, monkeypatch, params):
    """The check_params stage: its output's bytes must not depend on the (valid) values,
    or every params change would invalidate every stage."""
    from mnist_cnn.params import CHECKED_MARKER, main

    monkeypatch.chdir(tmp_path)
    written = []
    for value in (0.1, 0.3):
        (tmp_path / "params.yaml").write_text(
            yaml.safe_dump(with_value(params, "train.model.conv_dropout", value))
        )
        assert main() == 0
        written.append((tmp_path / CHECKED_MARKER).read_bytes())
    assert written[0] == written[1]


def test_check_stage_writes_each_datasets_effective_settings(tmp_path, monkeypatch, params):
    """data/params/<ds>.yaml: the shared sections with the dataset's overrides laid over
    them — what DVC compares for the train and evaluate stages."""
    from mnist_cnn.params import Params, main

    monkeypatch.chdir(tmp_path)
    raw = with_value(params, "train.model.dense_dropout", 0.3)
    raw["datasets"]["fashion_mnist"]["train"]["model"]["dense_dropout"] = 0.1
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    assert main() == 0
    loaded = Params.model_validate(raw)
    for key in ("mnist", "fashion_mnist"):
        effective = yaml.safe_load((tmp_path / f"data/params/{key}.yaml").read_text())
        assert effective["train"] == loaded.train_for(key).model_dump(mode="json")
        assert effective["evaluate"] == loaded.evaluate_for(key).model_dump(mode="json")
    mnist = yaml.safe_load((tmp_path / "data/params/mnist.yaml").read_text())
    fashion = yaml.safe_load((tmp_path / "data/params/fashion_mnist.yaml").read_text())
    assert mnist["train"]["model"]["dense_dropout"] == 0.3
    assert fashion["train"]["model"]["dense_dropout"] == 0.1  # its override wins
    # A shared key the dataset overrides leaves its file byte-identical.
    before = (tmp_path / "data/params/fashion_mnist.yaml").read_bytes()
    (tmp_path / "params.yaml").write_text(
        yaml.safe_dump(with_value(raw, "train.model.dense_dropout", 0.4))
    )
    assert main() == 0
    assert (tmp_path / "data/params/fashion_mnist.yaml").read_bytes() == before


def lock_recording(path: Path, text: str) -> str:
    """A dvc.lock whose check_params stage recorded writing `text` to `path`."""
    md5 = hashlib.md5(text.encode()).hexdigest()  # noqa: S324 (DVC's own checksum)
    outs = [{"path": path.as_posix(), "hash": "md5", "md5": md5, "size": len(text)}]
    return yaml.safe_dump({"schema": "2.0", "stages": {"check_params": {"outs": outs}}})


def test_check_stage_refuses_a_hand_edit_of_an_effective_file(
    tmp_path, monkeypatch, params, capsys
):
    """`dvc exp run -S data/params/mnist.yaml:train.epochs=2` (or a hand edit) changes a
    file the stage writes from params.yaml: overwriting it would run the old settings
    without a word. The stage refuses, names the key and the params.yaml spelling."""
    from mnist_cnn.params import main

    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    assert main() == 0
    effective = Path("data/params/mnist.yaml")
    written = effective.read_text()
    (tmp_path / "dvc.lock").write_text(lock_recording(effective, written))
    assert main() == 0  # a file as the last run recorded it is overwritten

    edited = yaml.safe_load(written)
    edited["train"]["epochs"] = 2
    effective.write_text(yaml.safe_dump(edited))  # comments dropped, as `-S` does
    assert main() == 1
    err = capsys.readouterr().err
    assert "data/params/mnist.yaml was edited" in err
    assert "  -S datasets.mnist.train.epochs=2" in err.splitlines()[1]
    assert "Undo the edit with `make restore`" in err
    assert yaml.safe_load(effective.read_text())["train"]["epochs"] == 2  # nothing lost

    # After a params.yaml change the stage rewrites a file it wrote itself.
    effective.write_text(written)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(with_value(params, "train.epochs", 3)))
    assert main() == 0
    assert yaml.safe_load(effective.read_text())["train"]["epochs"] == 3
    # And an edit that already equals what params.yaml gives is no conflict.
    assert main() == 0


def test_changed_keys_names_each_differing_leaf():
    from mnist_cnn.params import changed_keys

    expected = {"train": {"epochs": 20, "model": {"kernel_size": 3}}, "evaluate": {"a": 1}}
    edited = {"train": {"epochs": 2, "model": {"kernel_size": 3, "new": 1}}, "evaluate": {}}
    assert changed_keys(edited, expected) == [
        ("train.epochs", 2),
        ("train.model.new", 1),
        ("evaluate.a", None),
    ]
    assert changed_keys(expected, expected) == []


def test_check_stage_names_the_problem_in_one_line(tmp_path, monkeypatch, params, capsys):
    from mnist_cnn.params import CHECKED_MARKER, main

    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text(
        yaml.safe_dump(with_value(params, "train.model.conv_dropout", 1.5))
    )
    assert main() == 1
    first_line = capsys.readouterr().err.splitlines()[0]
    assert first_line == (
        "check_params: params.yaml: train.model.conv_dropout = 1.5 is not "
        "allowed: input should be less than 1"
    )
    assert not (tmp_path / CHECKED_MARKER).exists()


def test_check_stage_does_not_load_tensorflow(tmp_path):
    """It runs before every stage: it must stay cheap (no TensorFlow start-up)."""
    (tmp_path / "params.yaml").write_text((PROJECT_ROOT / "params.yaml").read_text())
    probe = (
        "import sys; from mnist_cnn.params import main; code = main(); "
        "print(code, 'tensorflow' in sys.modules, 'keras' in sys.modules)"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        env={"PYTHONPATH": str(PROJECT_ROOT), "PATH": ""},
    )
    assert result.stdout.split()[-3:] == ["0", "False", "False"], result.stderr


def test_parameters_page_matches_the_schema_and_params_yaml():
    """docs/parameters.md's table is what the schema generates from the committed file:
    a key added, renamed or re-described without the page (or the reverse) fails here."""
    from mnist_cnn.params import reference_table

    page = (PROJECT_ROOT / "docs/parameters.md").read_text()
    block = page.split("<!-- generated: python -m mnist_cnn.params --reference -->\n")[1]
    block = block.split("<!-- end generated -->")[0]
    assert block == reference_table(committed_params())
