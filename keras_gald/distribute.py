"""Devices, `tf.distribute` strategies and the XLA / SyncBN choice for training.

* `configure_devices(devices)` must run before TensorFlow initialises its runtime (before
  any op): it splits the CPU into `devices` logical devices when no GPU is visible.
* `make_strategy(devices, gpus, n_cpu)` then picks `MultiWorkerMirroredStrategy` when
  `TF_CONFIG` names a cluster; `MirroredStrategy` over the first `devices` GPUs (all when
  0), or over the logical CPU devices when there is no GPU; else the default strategy.
* `resolve_xla_and_sync_bn(xla, sync_bn, replicas, on_gpu)` turns the `None` (automatic)
  / `True` / `False` settings into what a run can use.

Several devices and clusters are `tf.distribute`'s, so TensorFlow-only: on another Keras
backend (JAX) `configure_devices` / `make_strategy` accept one device (the default
strategy, whose scope changes nothing there) and raise a `ValueError` naming
`KERAS_BACKEND=tensorflow` for more devices or a `TF_CONFIG` cluster.

Example:
    >>> from keras_gald import distribute
    >>> gpus, n_cpu = distribute.configure_devices(2)      # before any TF op
    >>> strategy, description, chief, index = distribute.make_strategy(2, gpus, n_cpu)
    >>> xla, sync_bn = distribute.resolve_xla_and_sync_bn(
    ...     None, None, strategy.num_replicas_in_sync, on_gpu=bool(gpus))
"""

import json
import os

import keras

__all__ = ["tf_config", "is_multi_worker", "is_chief", "configure_devices", "make_strategy",
           "resolve_xla_and_sync_bn"]


def tf_config():
    """The parsed `TF_CONFIG` (dict) or None."""
    text = os.environ.get("TF_CONFIG", "").strip()
    return json.loads(text) if text else None


def is_multi_worker():
    """True when `TF_CONFIG` names more than one task."""
    cluster = (tf_config() or {}).get("cluster", {})
    return sum(len(v) for v in cluster.values()) > 1


def is_chief():
    """True for the chief (or worker 0 of a cluster without one), and without `TF_CONFIG`."""
    cfg = tf_config()
    if not cfg:
        return True
    task = cfg.get("task", {})
    kind, index = task.get("type", "worker"), int(task.get("index", 0))
    return kind == "chief" or (kind == "worker" and index == 0
                               and "chief" not in cfg.get("cluster", {}))


def _check_tensorflow_for(devices):
    """Raises the off-TensorFlow `ValueError` for several devices or a cluster."""
    backend = keras.backend.backend()
    if backend == "tensorflow":
        return
    if is_multi_worker() or (devices or 1) > 1:
        what = "a TF_CONFIG cluster" if is_multi_worker() else f"devices={devices}"
        raise ValueError(
            f"{what}: multi-device and multi-worker training use tf.distribute and are "
            f"TensorFlow-only; on the {backend} backend train on one device (devices=1, "
            "no TF_CONFIG), or run with KERAS_BACKEND=tensorflow.")


def configure_devices(devices):
    """Splits the CPU into `devices` logical devices if there is no GPU.

    Returns `(gpus, n_cpu)`: the physical GPUs and the number of logical CPUs.
    """
    _check_tensorflow_for(devices)
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    for gpu in gpus:
        try:
            tf.config.experimental.set_memory_growth(gpu, True)
        except (ValueError, RuntimeError):
            pass
    n_cpu = 1
    if not gpus and devices and devices > 1 and not is_multi_worker():
        cpus = tf.config.list_physical_devices("CPU")
        try:
            tf.config.set_logical_device_configuration(
                cpus[0], [tf.config.LogicalDeviceConfiguration() for _ in range(devices)])
            n_cpu = devices
        except RuntimeError as err:  # TF already initialised
            raise RuntimeError(f"{devices} devices: the CPU must be split before TensorFlow "
                               f"initialises ({err})") from err
    return gpus, n_cpu


def make_strategy(devices, gpus, n_cpu):
    """-> `(strategy, description, is_chief, worker_index)`."""
    _check_tensorflow_for(devices)
    import tensorflow as tf

    if is_multi_worker():
        strategy = tf.distribute.MultiWorkerMirroredStrategy()
        task = tf_config().get("task", {})
        index, kind = int(task.get("index", 0)), task.get("type", "worker")
        desc = (f"MultiWorkerMirroredStrategy ({kind} {index}, "
                f"{strategy.num_replicas_in_sync} replicas)")
        return strategy, desc, is_chief(), index
    if gpus:
        names = [f"/gpu:{i}" for i in range(len(gpus if not devices else gpus[:devices]))]
        if len(names) > 1:
            return tf.distribute.MirroredStrategy(names), f"MirroredStrategy over {names}", True, 0
        return tf.distribute.get_strategy(), "single GPU", True, 0
    if n_cpu > 1:
        names = [f"/cpu:{i}" for i in range(n_cpu)]
        return (tf.distribute.MirroredStrategy(names),
                f"MirroredStrategy over {n_cpu} logical CPU devices", True, 0)
    return tf.distribute.get_strategy(), "single CPU device", True, 0


def resolve_xla_and_sync_bn(xla, sync_bn, replicas, on_gpu):
    """-> `(xla, sync_bn)` booleans from settings that are `None` (automatic) or booleans.

    One device: automatic XLA is on for a GPU and off for the CPU (where it measured slower,
    `benchmarks/README.md`); SyncBN has nothing to synchronise, automatic is off. Several
    replicas: the per-replica XLA step cannot run SyncBN's all-reduce, so the two exclude
    each other; with both automatic SyncBN wins (the paper's recipe relies on it at 1-2
    images per GPU), and `xla=True` turns automatic SyncBN off. Both `True` raises
    `ValueError`.
    """
    if replicas <= 1:
        return (on_gpu if xla is None else bool(xla)), bool(sync_bn)
    sync = (xla is not True) if sync_bn is None else bool(sync_bn)
    use_xla = (on_gpu and not sync) if xla is None else bool(xla)
    if use_xla and sync:
        raise ValueError(
            f"xla=True and sync_bn=True over {replicas} replicas: the per-replica XLA step "
            "cannot run SyncBN's cross-replica all-reduce. Choose one: xla=False (SyncBN) "
            "or sync_bn=False (per-replica BN statistics, XLA)")
    return use_xla, sync
