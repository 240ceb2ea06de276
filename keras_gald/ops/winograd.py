"""Winograd F(2x2, 3x3) for stride-1 "SAME" 3x3 convolutions, dilated or not.

Each 2x2 block of outputs is computed from the 4x4 input tile around it as
`A^T [(G g G^T) * (B^T d B)] A` (Lavin & Gray, 2016): 16 products per tile
and channel pair instead of 36, so the channel mixing becomes 16 batched
matmuls of `(tiles, C_in) x (C_in, C_out)` — 4/9 of a direct convolution's
multiply-adds. The tile transforms are additions and halvings only: float32
results stay within 1e-5 of the output's scale of `tf.nn.conv2d`'s, values
and gradients (tests/layers/test_winograd.py). The transformed input is 4x
the input's size (16 values per 2x2 outputs); training keeps it for the
kernel gradient.

For bfloat16 / float16 inputs the transforms add in float32 and round once
to the input's dtype, so the transformed tiles, the transformed kernel and
the matmul results are each rounded once; the matmuls run in the input's
dtype (TF's CPU kernels have no bfloat16 x bfloat16 -> float32 matmul).

A dilated convolution at rate `r` is `r^2` undilated ones on the phase
sub-grids `x[p::r, q::r]`; the map is zero-extended to a multiple of `2r`
first (a "SAME" conv reads zeros there anyway) and cropped after.

TF's graph executor would run the transforms as dozens of separate
feature-sized element-wise kernels; in graphs (outside `portable_ops()`) they
are small XLA-compiled functions instead, while the matmuls stay on oneDNN.
`keras_gald.ops.conv.dilated_conv2d` picks this path for wide float32
and bfloat16 kernels on CPU (`keras_gald.ops.Policy`: `winograd_min_weights`,
`winograd_min_weights_bf16`, per machine): there the saved multiply-adds outweigh the
memory passes of the transforms. The thresholds come from A/B runs against
the path taken without Winograd: `python benchmarks/library_vs_stock.py
--changes winograd,winograd_bf16` (results in benchmarks/results/winograd_cpu.json
and winograd_bf16_cpu.json, tables in benchmarks/README.md).
"""

import functools

import numpy as np

from keras_gald.ops.optional_tensorflow import tf
from keras_gald.ops.portable import may_use_xla

# F(2, 3) in 1-D: G (4x3) maps the kernel to the transform domain; B^T (input
# tile) and A^T (back to two outputs) are written out in _bt_combine / _at_combine.
_G = np.array([[1, 0, 0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0, 0, 1]], np.float32)
# 2-D kernel transform as one (16, 9) matrix acting on the 9 taps.
_KERNEL_T = np.einsum("ap,bq->abpq", _G, _G).reshape(16, 9)


def _bt_combine(d):
    """`B^T d`, B^T = [[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]],
    for the four rows (or columns) `d[0..3]` of a tile."""
    return [d[0] - d[2], d[1] + d[2], d[2] - d[1], d[1] - d[3]]


def _at_combine(m):
    """`A^T m`, A^T = [[1, 1, 1, 0], [0, 1, -1, -1]], for the four transformed rows
    (or columns) `m[0..3]`."""
    return [m[0] + m[1] + m[2], m[1] - m[2] - m[3]]


def extended_size(size, rate):
    """The map size zero-extended to whole 2x2 tiles on every phase grid."""
    step = 2 * rate
    return -(-size // step) * step


def _transform_dtype(dtype):
    """Half-precision tiles add in float32 (see the module docstring)."""
    return tf.float32 if dtype in (tf.bfloat16, tf.float16) else dtype


def input_transform(x, rate):
    """`(N, H, W, C)` -> `(16, N * r^2 * tiles, C)`: `B^T d B` of every tile, in `x`'s dtype."""
    dtype = x.dtype
    x = tf.cast(x, _transform_dtype(dtype))
    height, width, channels = x.shape[1], x.shape[2], x.shape[3]
    eh, ew = extended_size(height, rate), extended_size(width, rate)
    x = tf.pad(x, [[0, 0], [0, eh - height], [0, ew - width], [0, 0]])
    gh, gw = eh // rate, ew // rate  # one phase grid
    if rate > 1:
        x = tf.reshape(x, [-1, gh, rate, gw, rate, channels])
        x = tf.reshape(tf.transpose(x, [0, 2, 4, 1, 3, 5]), [-1, gh, gw, channels])
    x = tf.pad(x, [[0, 0], [1, 1], [1, 1], [0, 0]])
    th, tw = gh // 2, gw // 2
    pairs = tf.reshape(x, [-1, th + 1, 2, gw + 2, channels])
    even, odd = pairs[:, :, 0], pairs[:, :, 1]
    rows = _bt_combine([even[:, :-1], odd[:, :-1], even[:, 1:], odd[:, 1:]])
    tiles = []
    for row in rows:
        pairs = tf.reshape(row, [-1, th, tw + 1, 2, channels])
        even, odd = pairs[:, :, :, 0], pairs[:, :, :, 1]
        tiles += _bt_combine([even[:, :, :-1], odd[:, :, :-1], even[:, :, 1:], odd[:, :, 1:]])
    return tf.cast(tf.reshape(tf.stack(tiles), [16, -1, channels]), dtype)


def output_transform(m, height, width, rate):
    """`(16, N * r^2 * tiles, C_out)` -> `(N, H, W, C_out)`: `A^T m A`, phases merged,
    in `m`'s dtype."""
    dtype = m.dtype
    m = tf.cast(m, _transform_dtype(dtype))
    channels = m.shape[-1]
    eh, ew = extended_size(height, rate), extended_size(width, rate)
    gh, gw = eh // rate, ew // rate
    th, tw = gh // 2, gw // 2
    m = tf.reshape(m, [4, 4, -1, th, tw, channels])
    rows = _at_combine([m[0], m[1], m[2], m[3]])
    blocks = [_at_combine([r[0], r[1], r[2], r[3]]) for r in rows]  # [i][j]: (B, th, tw, C)
    y = tf.stack([tf.stack(blocks[0], axis=3), tf.stack(blocks[1], axis=3)], axis=2)
    y = tf.reshape(y, [-1, gh, gw, channels])
    if rate > 1:
        y = tf.reshape(y, [-1, rate, rate, gh, gw, channels])
        y = tf.reshape(tf.transpose(y, [0, 3, 1, 4, 2, 5]), [-1, eh, ew, channels])
    return tf.cast(y[:, :height, :width, :], dtype)


def kernel_transform(kernel):
    """`(3, 3, C_in, C_out)` -> `(16, C_in, C_out)`: `G g G^T` per channel pair."""
    c_in, c_out = kernel.shape[2], kernel.shape[3]
    flat = tf.reshape(kernel, [9, c_in * c_out])
    return tf.reshape(tf.matmul(tf.constant(_KERNEL_T, kernel.dtype), flat), [16, c_in, c_out])


@functools.lru_cache(maxsize=None)
def _compiled(name, *static):
    fn = {"input": input_transform, "output": output_transform}[name]
    return tf.function(lambda t: fn(t, *static), jit_compile=True, autograph=False)


def winograd_conv3x3(x, kernel, rate=1):
    """Stride-1 `"SAME"` 3x3 convolution at dilation `rate`, by Winograd F(2x2, 3x3).

    Args:
        x: `(N, H, W, C_in)` with static `H, W, C_in`.
        kernel: `(3, 3, C_in, C_out)`.
        rate: the dilation (the same along both axes).

    Returns:
        `(N, H, W, C_out)` in `x`'s dtype: `tf.nn.conv2d(x, kernel, 1, "SAME",
        dilations=rate)` up to float rounding (the transforms add and halve; in
        float32 for half-precision `x`, rounded once to its dtype).
    """
    height, width = int(x.shape[1]), int(x.shape[2])
    rate = int(rate)
    if tuple(kernel.shape[:2]) != (3, 3):
        raise ValueError(f"winograd_conv3x3 needs a 3x3 kernel; got {tuple(kernel.shape)}")
    # XLA-compiled transforms while tracing a graph outside portable_ops();
    # eager calls stay plain TF.
    if may_use_xla():
        forward_in = _compiled("input", rate)
        forward_out = _compiled("output", height, width, rate)
    else:
        forward_in = functools.partial(input_transform, rate=rate)
        forward_out = functools.partial(output_transform, height=height, width=width, rate=rate)
    u = tf.cast(kernel_transform(tf.cast(kernel, _transform_dtype(x.dtype))), x.dtype)
    m = tf.matmul(forward_in(x), u)
    return forward_out(m)
