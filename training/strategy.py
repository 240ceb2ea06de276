"""Device setup and `tf.distribute` strategy selection for `keras-gald train`.

`configure_devices(devices)` must run before TensorFlow initialises its runtime
(before any op): it splits the CPU into `devices` logical devices when no GPU is
visible. `make_strategy(devices)` then picks:

* `MultiWorkerMirroredStrategy` when `TF_CONFIG` names a cluster;
* `MirroredStrategy` over the first `devices` GPUs (all when 0), or over the
  logical CPU devices when `devices > 1` and there is no GPU;
* the default (no-op) strategy on a single device.
"""

import json
import os


def tf_config():
    """The parsed `TF_CONFIG` (dict) or None."""
    text = os.environ.get("TF_CONFIG", "").strip()
    return json.loads(text) if text else None


def is_multi_worker():
    cfg = tf_config()
    if not cfg:
        return False
    cluster = cfg.get("cluster", {})
    return sum(len(v) for v in cluster.values()) > 1


def configure_devices(devices):
    """Splits the CPU into `devices` logical devices if there is no GPU.

    Returns `(gpus, cpu_devices)`: the physical GPUs and the number of logical CPUs.
    """
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
                cpus[0], [tf.config.LogicalDeviceConfiguration() for _ in range(devices)]
            )
            n_cpu = devices
        except RuntimeError as err:  # TF already initialised
            raise RuntimeError(
                f"--devices {devices}: the CPU must be split before TensorFlow initialises ({err})"
            ) from err
    return gpus, n_cpu


def make_strategy(devices, gpus, n_cpu):
    """-> (strategy, description, is_chief, worker_index)."""
    import tensorflow as tf

    if is_multi_worker():
        strategy = tf.distribute.MultiWorkerMirroredStrategy()
        cfg = tf_config()
        task = cfg.get("task", {})
        index = int(task.get("index", 0))
        kind = task.get("type", "worker")
        chief = kind == "chief" or (kind == "worker" and index == 0 and "chief" not in cfg["cluster"])
        desc = f"MultiWorkerMirroredStrategy ({kind} {index}, {strategy.num_replicas_in_sync} replicas)"
        return strategy, desc, chief, index
    if gpus:
        use = gpus if not devices else gpus[:devices]
        names = [f"/gpu:{i}" for i in range(len(use))]
        if len(names) > 1:
            return tf.distribute.MirroredStrategy(names), f"MirroredStrategy over {names}", True, 0
        return tf.distribute.get_strategy(), "single GPU", True, 0
    if n_cpu > 1:
        names = [f"/cpu:{i}" for i in range(n_cpu)]
        return (
            tf.distribute.MirroredStrategy(names),
            f"MirroredStrategy over {n_cpu} logical CPU devices",
            True,
            0,
        )
    return tf.distribute.get_strategy(), "single CPU device", True, 0
