"""`python tests/_logical_cpus.py N TARGET...`: split the CPU into N logical devices,
then run TARGET (`-m MODULE args`, `-c CODE` or `SCRIPT args`) as `__main__`.

The split must happen before TensorFlow initialises its devices, hence a launcher
(`tests/harness.py: run_python(..., logical_cpus=N)`).
"""

import os
import runpy
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def main(argv):
    count, target = int(argv[0]), argv[1:]
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration()] * count)
    if target[0] == "-m":
        sys.argv = [target[1], *target[2:]]
        runpy.run_module(target[1], run_name="__main__", alter_sys=True)
    elif target[0] == "-c":
        sys.argv = ["-c", *target[2:]]
        exec(compile(target[1], "<string>", "exec"), {"__name__": "__main__"})
    else:
        sys.argv = list(target)
        runpy.run_path(target[0], run_name="__main__")


if __name__ == "__main__":
    main(sys.argv[1:])
