"""Backend kernels and the machine facts that choose between them.

The layers compute the paper's equations; the kernels they call live here, each
behind one function with a TensorFlow fast path and a JAX path: `conv2d` (and
`dilated_conv2d` / `pointwise_conv2d`: Winograd and per-tap fast paths on TF),
`local_logits` / `local_aggregate` (LDv2's neighbourhood correlation and
weighted sum), `resize_bilinear` (both PyTorch conventions), `max_pool2d`
(ceil mode), `adaptive_average_pool2d` (PyTorch's bins),
`assert_min_spatial_size`.
`machine()` tells what this CPU can do (ISA, bfloat16 instructions, whether
TensorFlow's oneDNN kernels are active); `Policy` holds the kernels' speed
switches, with defaults from `machine()`, read when a graph is traced;
`portable_ops()` makes exports trace plain ops only.
"""

from keras_gald.ops.adaptive_pool import adaptive_average_pool2d
from keras_gald.ops.assertions import assert_min_spatial_size
from keras_gald.ops.conv import conv2d, dilated_conv2d, pointwise_conv2d
from keras_gald.ops.hardware import Machine, bf16_is_slow, machine
from keras_gald.ops.local_attention import local_aggregate, local_logits, neighbour_offsets
from keras_gald.ops.policy import Policy
from keras_gald.ops.pooling import max_pool2d, pool_output_length
from keras_gald.ops.portable import portable_ops
from keras_gald.ops.resize import resize_bilinear

__all__ = [
    "Machine",
    "adaptive_average_pool2d",
    "assert_min_spatial_size",
    "conv2d",
    "max_pool2d",
    "pool_output_length",
    "Policy",
    "bf16_is_slow",
    "dilated_conv2d",
    "local_aggregate",
    "local_logits",
    "machine",
    "neighbour_offsets",
    "pointwise_conv2d",
    "portable_ops",
    "resize_bilinear",
]
