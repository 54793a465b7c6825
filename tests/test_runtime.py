"""Precision and distribution choices, without training."""

from __future__ import annotations

import subprocess
import sys

import pytest

from mnist_cnn.params import DistributionParams
from mnist_cnn.runtime import chief_from_tf_config, cpu_flags, make_distribution, resolve_precision
from tests.conftest import changed


def test_explicit_precision_is_kept():
    assert resolve_precision("float32", flags={"amx_bf16"}) == "float32"
    assert resolve_precision("mixed_bfloat16", flags=set()) == "mixed_bfloat16"


@pytest.mark.parametrize(
    "flags, expected",
    [
        ({"avx2", "amx_bf16", "amx_tile"}, "mixed_bfloat16"),
        ({"avx512f", "avx512_bf16"}, "float32"),  # measured slower than float32 without AMX
        ({"avx2", "avx512f"}, "float32"),  # bfloat16 would be emulated: slower than float32
        (set(), "float32"),
    ],
)
def test_auto_precision_follows_the_cpu(flags, expected):
    assert resolve_precision("auto", flags=flags) == expected


def test_cpu_flags_reads_cpuinfo(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu sse2 amx_bf16\n\nprocessor\t: 1\n")
    assert cpu_flags(cpuinfo) == {"fpu", "sse2", "amx_bf16"}
    assert cpu_flags(tmp_path / "missing") == set()


@pytest.mark.parametrize(
    "config, chief",
    [
        ({"cluster": {"worker": ["a:1", "b:2"]}, "task": {"type": "worker", "index": 0}}, True),
        ({"cluster": {"worker": ["a:1", "b:2"]}, "task": {"type": "worker", "index": 1}}, False),
        (
            {
                "cluster": {"chief": ["c:0"], "worker": ["a:1"]},
                "task": {"type": "chief", "index": 0},
            },
            True,
        ),
        (
            {
                "cluster": {"chief": ["c:0"], "worker": ["a:1"]},
                "task": {"type": "worker", "index": 0},
            },
            False,
        ),
    ],
)
def test_only_one_task_is_chief(config, chief):
    assert chief_from_tf_config(config) is chief


SINGLE = DistributionParams(
    strategy="none", devices=[], batch_size_per_replica=True, scale_learning_rate=True
)


def test_no_distribution_changes_nothing():
    distribution = make_distribution(SINGLE, batch_size=128, learning_rate=0.002)
    assert (
        distribution.replicas,
        distribution.global_batch_size,
        distribution.learning_rate,
        distribution.is_chief,
    ) == (1, 128, 0.002, True)


def test_multi_worker_without_tf_config_says_what_to_set(monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    with pytest.raises(RuntimeError, match="needs the TF_CONFIG environment variable"):
        make_distribution(changed(SINGLE, strategy="multi_worker"), 128, 0.002)
    monkeypatch.setenv("TF_CONFIG", "{not json")
    with pytest.raises(RuntimeError, match="TF_CONFIG is not valid JSON"):
        make_distribution(changed(SINGLE, strategy="multi_worker"), 128, 0.002)


def test_thread_params_size_tensorflows_pools():
    """0 keeps TensorFlow's default; a number sets the pool (in a fresh process: the
    pools are fixed once TensorFlow's runtime starts)."""
    script = (
        "import tensorflow as tf\n"
        "from mnist_cnn.params import ThreadParams\n"
        "from mnist_cnn.runtime import set_threads\n"
        "set_threads(ThreadParams(intra_op=1, inter_op=0))\n"
        "tf.constant(1.0) + 1\n"
        "print(tf.config.threading.get_intra_op_parallelism_threads(),"
        " tf.config.threading.get_inter_op_parallelism_threads())\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=120
    )
    assert result.stdout.split() == ["1", "0"]
