"""tf.distribute strategies by name: none, mirrored (local devices), multi_worker (TF_CONFIG).

Create the strategy before any other TensorFlow op runs (multi-worker collectives require
it). For CPU-only tests and demos, `logical_cpus=N` first splits the CPU into N logical
devices so MirroredStrategy has N replicas.

Example:

>>> from kzoo.training.distribute import get_strategy
>>> get_strategy("none").num_replicas_in_sync
1
"""

from __future__ import annotations

import json
import os

import tensorflow as tf


def split_cpu(logical_cpus: int) -> None:
    """Split the first CPU into `logical_cpus` logical devices (before TF initializes)."""
    if logical_cpus <= 1:
        return
    cpu = tf.config.list_physical_devices("CPU")[0]
    current = tf.config.get_logical_device_configuration(cpu)
    if current and len(current) == logical_cpus:
        return
    try:
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration() for _ in range(logical_cpus)]
        )
    except RuntimeError as error:
        raise ValueError(
            f"logical_cpus={logical_cpus} must be set before TensorFlow initializes its "
            f"devices (start a fresh process): {error}"
        ) from None


def _none(logical_cpus: int):
    return tf.distribute.get_strategy()


def _mirrored(logical_cpus: int):
    split_cpu(logical_cpus)
    gpus = tf.config.list_logical_devices("GPU")
    devices = [d.name for d in gpus] or [d.name for d in tf.config.list_logical_devices("CPU")]
    return tf.distribute.MirroredStrategy(devices=devices)


def _multi_worker(logical_cpus: int):
    if "TF_CONFIG" not in os.environ:
        raise ValueError(
            "distribution 'multi_worker' needs the TF_CONFIG environment variable, e.g. "
            '{"cluster": {"worker": ["host1:port", "host2:port"]}, '
            '"task": {"type": "worker", "index": 0}}'
        )
    split_cpu(logical_cpus)
    return tf.distribute.MultiWorkerMirroredStrategy()


STRATEGIES = {"none": _none, "mirrored": _mirrored, "multi_worker": _multi_worker}


def get_strategy(name: str, logical_cpus: int = 0) -> tf.distribute.Strategy:
    """Return the strategy called `name`; ValueError lists the valid names.

    Args:
        name: str. "none", "mirrored" or "multi_worker".
        logical_cpus: int. split the CPU into this many logical devices first (0/1: don't).
    """
    if name not in STRATEGIES:
        raise ValueError(f"unknown distribution {name!r}; valid: {sorted(STRATEGIES)}")
    return STRATEGIES[name](logical_cpus)


def is_chief() -> bool:
    """True unless TF_CONFIG names this process a non-chief worker (index > 0)."""
    config = json.loads(os.environ.get("TF_CONFIG", "{}") or "{}")
    task = config.get("task", {})
    cluster = config.get("cluster", {})
    if task.get("type") == "chief":
        return True
    if "chief" in cluster:
        return False
    return task.get("type", "worker") == "worker" and int(task.get("index", 0)) == 0
