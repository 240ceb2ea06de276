"""The machine header every benchmark JSON starts with, and the thread set-up.

Results differ between AVX2 and AVX-512 CPUs and with TensorFlow's oneDNN
kernels on or off (benchmarks/README.md, "Dispatch per machine"), so every
script records the CPU flags and prints what `keras_gald.ops.machine()` found
and which kernel paths `keras_gald.ops.Policy` switches on.
"""

import os
import pathlib
import platform

import numpy as np

from common.report import log


def _read_proc(path):
    try:
        return pathlib.Path(path).read_text()
    except OSError:
        return ""


def machine_info(threads, torch_mod):
    import keras
    import tensorflow as tf

    cpuinfo = _read_proc("/proc/cpuinfo")
    model = next((line.split(":", 1)[1].strip() for line in cpuinfo.splitlines()
                  if line.startswith("model name")), platform.processor())
    flags = next((line.split(":", 1)[1].split() for line in cpuinfo.splitlines()
                  if line.startswith("flags")), [])
    interesting = [f for f in flags if f.startswith(("avx", "amx", "fma")) or "bf16" in f
                   or "vnni" in f]
    meminfo = _read_proc("/proc/meminfo").split()
    mem_total = None
    if "MemTotal:" in meminfo:
        mem_total = round(int(meminfo[meminfo.index("MemTotal:") + 1]) / 2**20, 1)
    info = {
        "cpu_model": model,
        "cpu_flags": interesting,
        "logical_cpus": os.cpu_count(),
        "usable_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "mem_total_gib": mem_total,
        "loadavg_start": list(os.getloadavg()),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "numpy": np.__version__,
        # TF turns oneDNN on by itself only on CPUs with AVX512-VNNI/BF16 or AMX;
        # elsewhere it runs Eigen kernels unless this is set to 1.
        "TF_ENABLE_ONEDNN_OPTS": os.environ.get("TF_ENABLE_ONEDNN_OPTS"),
        "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY"),
        "tf_intra_op_threads": tf.config.threading.get_intra_op_parallelism_threads(),
        "tf_inter_op_threads": tf.config.threading.get_inter_op_parallelism_threads(),
        "tf_devices": [d.name for d in tf.config.list_logical_devices()],
        "threads": threads,
    }
    # What the library's CPU dispatch reads (keras_gald.ops.machine()), printed as
    # the header of every benchmark: results differ between AVX2 and AVX-512
    # CPUs and with oneDNN on or off.
    from keras_gald.ops import Policy, machine

    info["keras_gald_machine"] = machine().to_dict()
    info["keras_gald_policy"] = Policy.current().to_dict()
    log(f"machine: {machine().describe()}; flags: {' '.join(interesting)}")
    switches = ("winograd", "winograd_bf16", "conv_slices", "taps", "taps_direct_forward_bf16",
                "ldv2_fold", "jit_slices")
    log("kernel policy: " + ", ".join(
        f"{name} {'on' if getattr(Policy.current(), name) else 'off'}" for name in switches))
    if torch_mod is not None:
        info["torch"] = torch_mod.__version__
        info["torch_threads"] = torch_mod.get_num_threads()
        info["torch_mkldnn"] = torch_mod.backends.mkldnn.is_available()
    return info



def usable_cpus():
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def set_tf_threads(threads, inter_op_threads):
    """TF intra-op threads (PyTorch gets the same count) and inter-op threads
    (0 keeps TF's default). Must run before TF's runtime starts."""
    import tensorflow as tf

    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        if inter_op_threads:
            tf.config.threading.set_inter_op_parallelism_threads(inter_op_threads)
    except RuntimeError as exc:
        log(f"note: could not set TF threads ({exc})")


def check_load(omp_wait_policy):
    """Warns when the machine is busy at start and sets OMP_WAIT_POLICY=PASSIVE
    for PyTorch per `omp_wait_policy` ("auto": only when busy; "passive";
    "unchanged"); never overrides an OMP_WAIT_POLICY already set. PyTorch's
    OpenMP threads spin while they wait for each other, which stalls them
    badly when other processes share the cores. Must run before torch is
    imported. Returns the notes for the JSON."""
    notes = []
    load, cpus = os.getloadavg()[0], len(os.sched_getaffinity(0)) if hasattr(
        os, "sched_getaffinity") else (os.cpu_count() or 1)
    busy = load > 0.5 * cpus
    if busy:
        message = (f"machine busy (load average {load:.1f} on {cpus} CPUs): every number is "
                   "slowed down, PyTorch's spinning OpenMP threads most of all")
        notes.append(message)
        log(f"WARNING: {message}")
    if "OMP_WAIT_POLICY" not in os.environ and (
        omp_wait_policy == "passive" or (omp_wait_policy == "auto" and busy)
    ):
        os.environ["OMP_WAIT_POLICY"] = "PASSIVE"  # read when torch loads its OpenMP runtime
        notes.append("OMP_WAIT_POLICY=PASSIVE set for PyTorch")
        log("note: OMP_WAIT_POLICY=PASSIVE for PyTorch's OpenMP threads "
            "(--omp-wait-policy unchanged to keep its default)")
    return notes
