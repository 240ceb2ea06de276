"""Ordering helper for loops of large, independent products in TF graphs."""

import contextlib

from keras_gald.ops.optional_tensorflow import tf


def after(tensor):
    """Context that makes the ops created in it wait for `tensor`.

    Loops that build `k^2` feature-sized products and sum or matmul them one by one
    (LDv2's shifted slices, the dilated conv's kernel gradient) have no data
    dependency between iterations, so TF's graph executor (without XLA) may run
    many products at once and hold them all, which multiplies the peak memory of
    LDv2 and of the dilated conv's kernel gradient on large maps. The peak is
    measured by `python benchmarks/speed.py --sections memory` (results in
    benchmarks/results/speed_r50_cpu.json and ldv2_block_memory_avx512.json).
    Eager execution and XLA order the loop themselves; tf2onnx drops
    control edges.

    Args:
        tensor: a tensor, or None (no ordering).
    """
    if tensor is None or tf.executing_eagerly():
        return contextlib.nullcontext()
    return tf.control_dependencies([tensor])
