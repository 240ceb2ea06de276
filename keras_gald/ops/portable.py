"""A thread-local switch from the XLA-compiled fast paths to plain TF ops.

LDv2's shifted-slice primitives and the Winograd convolution's transforms run
as small XLA-compiled functions inside otherwise plain TF graphs. The
exporters (`keras_gald.export`) trace under `portable_ops()`: tf2onnx and the
TFLite converter need every op inlined in the graph, and a served SavedModel
should not depend on XLA.
"""

import contextlib
import threading

from keras_gald.ops.optional_tensorflow import tf

# Per thread: an export tracing in one thread leaves a training graph traced
# meanwhile in another on the fast (XLA) primitives.
_portable = threading.local()


@contextlib.contextmanager
def portable_ops():
    """Within this context layers trace plain TF ops only: LDv2 its
    shifted-slice primitives without XLA (see `LDv2(jit_slices=...)`), 3x3
    convolutions `tf.nn.conv2d` instead of Winograd transforms compiled by XLA
    (`keras_gald.ops.winograd`). It applies to the calling thread only.
    """
    _portable.depth = getattr(_portable, "depth", 0) + 1
    try:
        yield
    finally:
        _portable.depth -= 1


def tracing_portable():
    """True inside `portable_ops()` in this thread."""
    return bool(getattr(_portable, "depth", 0))


def may_use_xla():
    """True while tracing a graph outside `portable_ops()` (eager calls stay plain:
    no per-shape compile for small interactive calls)."""
    return not tracing_portable() and not tf.executing_eagerly()


def inside_xla_cluster():
    """True while tracing inside a function compiled by XLA as a whole
    (`tf.function(jit_compile=True)`, `model.compile(jit_compile=True)`, or a
    function nested in one): XLA compiles every op there itself."""
    from tensorflow.python.framework import ops as tf_ops  # TF backend only
    from tensorflow.python.ops import control_flow_util

    return control_flow_util.GraphOrParentsInXlaContext(tf_ops.get_default_graph())


def gpu_visible():
    """True when TF sees a GPU: the fast paths chosen by CPU measurements
    (Winograd, channel slices, the bf16 taps forward, bf16 straight into
    BatchNorm; `benchmarks/library_vs_stock.py`) step aside, since they were
    never measured on a GPU."""
    return bool(tf.config.list_logical_devices("GPU"))
