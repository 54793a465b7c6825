"""Where and how training runs: number precision, tf.distribute strategy, and a record of
the machine.

Precision and strategy are chosen from params (`train.precision`, `train.distribution`)
before any model exists, because Keras reads the dtype policy and the strategy scope when
layers are built. `environment()` is what the train stage records beside its metrics, so
that `make check-results` shows when two runs ran on different hardware or libraries
(a list: DVC's metrics commands skip it).
"""

from __future__ import annotations

import json
import os
import platform
from dataclasses import dataclass
from pathlib import Path

import keras
import tensorflow as tf

from mnist_cnn.params import DistributionParams, ThreadParams

CPUINFO = Path("/proc/cpuinfo")
# CPU features that make bfloat16 training faster than float32 (oneDNN's AMX kernels).
# AVX512-BF16 alone is not enough: on a Xeon VM that exposes it without AMX, the default
# models trained faster in float32 (measured per CPU kind: docs/design-notes.md).
BF16_CPU_FLAGS = ("amx_bf16",)
# NVIDIA GPUs do bfloat16 math from compute capability 8.0 (Ampere) on.
BF16_GPU_CAPABILITY = (8, 0)


# Instruction-set extensions that decide which oneDNN/Eigen kernels run, and so the exact
# float results: two CPUs that differ here round differently (x86 `flags`; aarch64
# `Features`).
KERNEL_CPU_FLAGS = (
    "avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "avx512_fp16",
    "amx_tile", "amx_bf16", "amx_int8",
    "asimd", "sve", "sve2", "bf16", "i8mm",
)  # fmt: skip


def _cpuinfo_field(names: tuple[str, ...], cpuinfo: Path) -> str | None:
    """The first CPU's value of the first field in `names` (None off Linux)."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return None
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in names:
            return value.strip()
    return None


def cpu_flags(cpuinfo: Path = CPUINFO) -> set[str]:
    """The feature flags the kernel reports for the first CPU (empty off Linux)."""
    return set((_cpuinfo_field(("flags", "Features"), cpuinfo) or "").split())


def environment(policy: str, threads: ThreadParams, cpuinfo: Path = CPUINFO) -> dict:
    """What decides a run's exact numbers besides code, data and params.

    Same values, same results (bit for bit); any difference here moves results within
    the spread over seeds (docs/results.md). No clock, no host name: a rerun on the same
    machine writes the same bytes.
    """
    import numpy as np

    return {
        "cpu": _cpuinfo_field(("model name",), cpuinfo) or platform.processor() or "unknown",
        "cpu_flags": " ".join(f for f in KERNEL_CPU_FLAGS if f in cpu_flags(cpuinfo)),
        "cpus": os.cpu_count(),
        "gpus": len(tf.config.list_physical_devices("GPU")),
        "machine": platform.machine(),
        "python": platform.python_version(),
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "numpy": np.__version__,
        # 0 = TensorFlow's default, one thread per core (`train.threads`).
        "intra_op_threads": threads.intra_op,
        "inter_op_threads": threads.inter_op,
        "precision": policy,
    }


def gpu_supports_bfloat16() -> bool:
    gpus = tf.config.list_physical_devices("GPU")
    capabilities = [
        tf.config.experimental.get_device_details(gpu).get("compute_capability") for gpu in gpus
    ]
    return bool(gpus) and all(
        c is not None and tuple(c) >= BF16_GPU_CAPABILITY for c in capabilities
    )


def resolve_precision(
    setting: str, flags: set[str] | None = None, gpu_bf16: bool | None = None
) -> str:
    """The Keras dtype policy for `train.precision`.

    `auto` picks mixed_bfloat16 only where it trains faster than float32: every visible
    GPU from Ampere on, or, without GPUs, a CPU with AMX. Elsewhere bfloat16 is emulated,
    or (AVX512-BF16 without AMX) still slower than float32.
    """
    if setting != "auto":
        return setting
    if tf.config.list_physical_devices("GPU"):
        native = gpu_supports_bfloat16() if gpu_bf16 is None else gpu_bf16
    else:
        native = bool((cpu_flags() if flags is None else flags) & set(BF16_CPU_FLAGS))
    return "mixed_bfloat16" if native else "float32"


def set_precision(setting: str) -> str:
    """Set Keras' global dtype policy from `train.precision`; return the policy name."""
    policy = resolve_precision(setting)
    keras.mixed_precision.set_global_policy(policy)
    return policy


def set_threads(threads: ThreadParams) -> None:
    """Size TensorFlow's thread pools from `train.threads` (0 leaves TF's default).

    Must run before TensorFlow starts its runtime (before any op or device query).
    """
    if threads.intra_op:
        tf.config.threading.set_intra_op_parallelism_threads(threads.intra_op)
    if threads.inter_op:
        tf.config.threading.set_inter_op_parallelism_threads(threads.inter_op)


@dataclass(frozen=True)
class Distribution:
    """The strategy to build the model under, and what it means for batches and rates."""

    strategy: tf.distribute.Strategy
    replicas: int
    global_batch_size: int
    learning_rate: float
    is_chief: bool  # only the chief writes outputs (model, metrics, plots)


def split_cpu(devices: list[str]) -> None:
    """Make enough logical CPU devices for the CPUs `devices` names.

    Lets a CPU-only machine try MirroredStrategy (e.g. devices: ["/cpu:0", "/cpu:1"]).
    Must run before TensorFlow initialises its devices.
    """
    wanted = sum(1 for d in devices if "cpu" in d.lower())
    if wanted <= 1:
        return
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration() for _ in range(wanted)]
    )


def chief_from_tf_config(tf_config: dict) -> bool:
    """True for the task that writes outputs: the `chief`, else worker 0."""
    task = tf_config.get("task", {})
    task_type, task_id = task.get("type"), int(task.get("index", 0))
    if "chief" in tf_config.get("cluster", {}):
        return task_type == "chief"
    return task_type == "worker" and task_id == 0


def make_distribution(
    settings: DistributionParams, batch_size: int, learning_rate: float
) -> Distribution:
    """Build the strategy `train.distribution.strategy` names and the scaled batch/rate.

    - none: TensorFlow's default strategy (one device: the GPU if there is one, else CPU).
    - mirrored: synchronous data parallelism over the listed devices (all GPUs if none).
    - multi_worker: the same across machines; the cluster comes from TF_CONFIG.
    With `batch_size_per_replica`, batch_size is what each replica sees and the global
    batch grows with the replicas; `scale_learning_rate` then applies the linear rule
    (rate × global batch / batch_size) so that one epoch moves the weights about as far.
    """
    name = settings.strategy
    is_chief = True
    if name == "none":
        strategy = tf.distribute.get_strategy()
    elif name == "mirrored":
        split_cpu(settings.devices)
        strategy = tf.distribute.MirroredStrategy(devices=settings.devices or None)
    else:
        raw = os.environ.get("TF_CONFIG")
        if not raw:
            raise RuntimeError(
                "train.distribution.strategy = multi_worker needs the TF_CONFIG environment "
                'variable (cluster and this task), e.g. TF_CONFIG=\'{"cluster": {"worker": '
                '["host1:12345", "host2:12345"]}, "task": {"type": "worker", '
                '"index": 0}}\'; see docs/scaling-out.md'
            )
        try:
            is_chief = chief_from_tf_config(json.loads(raw))
        except (ValueError, AttributeError, TypeError) as error:
            raise RuntimeError(f"TF_CONFIG is not valid JSON of a cluster: {error}") from None
        strategy = tf.distribute.MultiWorkerMirroredStrategy()
        _patch_keras_multi_worker_mean()

    replicas = strategy.num_replicas_in_sync
    global_batch = batch_size * replicas if settings.batch_size_per_replica else batch_size
    rate = (
        learning_rate * global_batch / batch_size if settings.scale_learning_rate else learning_rate
    )
    return Distribution(strategy, replicas, global_batch, rate, is_chief)


def unpin_multi_worker_strategy(model: keras.Model, strategy: tf.distribute.Strategy) -> None:
    """Let Keras 3.15's fit() build the model under MultiWorkerMirroredStrategy.

    fit() first builds the model from one batch reduced with strategy.reduce(), which
    MultiWorkerMirroredStrategy cannot do for an (images, labels) pair
    (keras-team/keras#20585). Without a pinned strategy Keras builds while tracing
    instead and takes the strategy of the scope fit() runs in. Other strategies: no-op.
    """
    if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        model._distribute_strategy = None


def _patch_keras_multi_worker_mean() -> None:
    """Let Keras' fit() average scalar logs across workers.

    Keras 3.15 reduces each step's logs under MultiWorkerMirroredStrategy with
    strategy.reduce("MEAN", value, axis=0), which fails for the scalar loss and metrics
    ("Invalid reduction dimension 0 for input with 0 dimensions"; keras-team/keras#20585).
    Averaging a scalar over the replicas is reduce(axis=None); this wraps Keras' helper
    to do that for scalars and leaves every other case to Keras.
    """
    from keras.src.backend.tensorflow import trainer

    original = trainer.reduce_per_replica
    if getattr(original, "scalar_mean_patch", False):
        return

    def reduce_per_replica(values, strategy, reduction):
        if reduction in ("auto", "mean") and trainer._collective_all_reduce_multi_worker(strategy):
            return tf.nest.map_structure(
                lambda value: (
                    strategy.reduce("MEAN", value, axis=None)
                    if value.shape.rank == 0
                    else original(value, strategy, reduction)
                ),
                values,
            )
        return original(values, strategy, reduction)

    reduce_per_replica.scalar_mean_patch = True
    trainer.reduce_per_replica = reduce_per_replica
