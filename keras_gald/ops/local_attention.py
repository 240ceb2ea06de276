"""Local attention kernels: LDv2's neighbourhood correlation and aggregation.

For a `k x k` neighbourhood sampled with dilation `r`, on per-head tensors
(features `(N, H, W, heads, d)`, logits / weights `(N, H, W, heads, k*k)`):

    local_logits(q, k)[..., n]  = sum_d q * shift_n(k)
    local_aggregate(w, v)       = sum_n w[..., n] * shift_n(v)

where `shift_n` reads the map at offset `d_n` and out-of-image neighbours
read zeros. The fast path pads the map once and takes `k^2` shifted slices,
with custom gradients written the same way, so no `(N, H, W, k^2, C)` tensor
is built forward or backward.
"""

import functools

import tensorflow as tf

from keras_gald.ops.portable import may_use_xla
from keras_gald.ops.sequencing import after

# --------------------------------------------------------------------------
# Shifted-slice primitives (impl="slices"). Tensors are per head:
#   features (N, H, W, heads, d), weights / logits (N, H, W, heads, K).
# Neighbour n = i * k + j sits at offset d_n = ((i - h) * r, (j - h) * r),
# h = (k - 1) // 2, i.e. row-major over the window (the order of
# `tf.image.extract_patches`). Out-of-image neighbours read zeros.
# --------------------------------------------------------------------------


def neighbour_offsets(kernel_size, dilation_rate):
    """`[(dy, dx), ...]` of the `kernel_size**2` neighbours, row-major."""
    half = (kernel_size - 1) // 2
    return [
        ((i - half) * dilation_rate, (j - half) * dilation_rate)
        for i in range(kernel_size)
        for j in range(kernel_size)
    ]


def _pad_hw(x, pad):
    paddings = [[0, 0], [pad, pad], [pad, pad]] + [[0, 0]] * (len(x.shape) - 3)
    return tf.pad(x, paddings)


def _window(x_pad, top, left, height, width):
    return x_pad[:, top : top + height, left : left + width]


def _corr(a, b, offsets, pad):
    """`out[..., n] = sum_d a * shift_n(b)`: (N,H,W,h,d) x2 -> (N,H,W,h,K).

    The channel sum is a matmul with a ones column rather than `reduce_sum`:
    XLA:CPU fuses a minor-axis reduce into the `k^2`-way stack as a scalar
    loop, which is far slower than the matmul; plain TF graphs (jit_slices=False,
    exports) pay a little on this op instead, a small share of the layer. The
    layer's timings: `python benchmarks/speed.py --sections ldv2_block` and
    `python benchmarks/ldv2_impl.py` (see benchmarks/README.md).
    """
    shape = tf.shape(a)
    height, width, depth = shape[1], shape[2], a.shape[-1]
    b_pad = _pad_hw(b, pad)
    ones = tf.ones((depth, 1), a.dtype)
    logits = []
    for dy, dx in offsets:
        with after(logits[-1] if logits else None):
            prod = a * _window(b_pad, pad + dy, pad + dx, height, width)
        logits.append(tf.reshape(tf.matmul(tf.reshape(prod, [-1, depth]), ones), shape[:4]))
    return tf.stack(logits, axis=-1)


def _agg(w, b, offsets, pad):
    """`out = sum_n w[..., n] * shift_n(b)`: (N,H,W,h,K), (N,H,W,h,d) -> (N,H,W,h,d)."""
    height, width = tf.shape(b)[1], tf.shape(b)[2]
    b_pad = _pad_hw(b, pad)
    weights = tf.unstack(w, num=len(offsets), axis=-1)
    out = None
    for w_n, (dy, dx) in zip(weights, offsets):
        with after(out):
            term = w_n[..., None] * _window(b_pad, pad + dy, pad + dx, height, width)
        out = term if out is None else out + term
    return out


def _agg_t(w, a, offsets, pad):
    """Adjoint of the shift: `out(y) = sum_n w_n(y - d_n) * a(y - d_n)`.

    `y - d_n` outside the image contributes zero. This is the gradient of
    `_corr` w.r.t. `b` and of `_agg` w.r.t. `b`. Pads `w` and `a` once and
    slices both, instead of padding `k^2` products.
    """
    height, width = tf.shape(a)[1], tf.shape(a)[2]
    a_pad = _pad_hw(a, pad)
    w_pad = tf.unstack(_pad_hw(w, pad), num=len(offsets), axis=-1)
    out = None
    for w_n, (dy, dx) in zip(w_pad, offsets):
        top, left = pad - dy, pad - dx
        with after(out):
            term = _window(w_n, top, left, height, width)[..., None] * _window(
                a_pad, top, left, height, width
            )
        out = term if out is None else out + term
    return out


_PRIMITIVES = {"corr": _corr, "agg": _agg, "agg_t": _agg_t}
@functools.lru_cache(maxsize=None)
def _compiled_primitive(name, offsets, pad):
    fn = _PRIMITIVES[name]
    # Traced per static shape the outer graph passes in (unknown dims stay
    # unknown); the channel width must be static, so no reduce_retracing.
    return tf.function(lambda a, b: fn(a, b, offsets, pad), jit_compile=True, autograph=False)


def _primitives(offsets, pad, jit):
    """`(corr, agg, agg_t)` for `(offsets, pad)`, XLA-compiled when `jit` and
    tracing a graph outside `portable_ops()`.

    Why: TF's graph executor runs the `k^2` slice-multiply-sum steps as ~4 k^2
    separate kernels, each a pass over a feature-sized tensor; XLA fuses each
    primitive into a few loops, which makes the block faster forward and
    backward on CPU (`python benchmarks/speed.py --sections ldv2_block` times
    `jit_slices=True` against `False`; results in
    benchmarks/results/ldv2_block_memory_avx512.json). Eager calls stay plain (no
    per-shape compile for small interactive calls), and inside an outer XLA
    cluster the call is simply inlined.
    """
    offsets = tuple(tuple(o) for o in offsets)
    if jit and may_use_xla():
        return tuple(_compiled_primitive(name, offsets, pad) for name in _PRIMITIVES)
    return tuple(functools.partial(_bind, fn, offsets, pad) for fn in _PRIMITIVES.values())


def _bind(fn, offsets, pad, a, b):
    return fn(a, b, offsets, pad)


def local_logits(q, k, offsets, pad, jit=False):
    """`_corr` with a gradient that never holds `k^2` feature-sized tensors."""
    corr, agg, agg_t = _primitives(offsets, pad, jit)

    @tf.custom_gradient
    def local_logits(q, k):
        def grad(g):
            return agg(g, k), agg_t(g, q)

        return corr(q, k), grad

    return local_logits(q, k)


def local_aggregate(w, v, offsets, pad, jit=False):
    """`_agg` with a gradient that never holds `k^2` feature-sized tensors."""
    corr, agg, agg_t = _primitives(offsets, pad, jit)

    @tf.custom_gradient
    def local_aggregate(w, v):
        def grad(g):
            return corr(g, v), agg_t(w, g)

        return agg(w, v), grad

    return local_aggregate(w, v)


def valid_neighbours(height, width, offsets):
    """Bool `(1, H, W, 1, K)`: neighbour n of position (y, x) lies in the image."""
    rows = tf.range(height)[:, None]
    cols = tf.range(width)[None, :]
    valid = [
        (rows + dy >= 0) & (rows + dy < height) & (cols + dx >= 0) & (cols + dx < width)
        for dy, dx in offsets
    ]
    return tf.stack(valid, axis=-1)[None, :, :, None, :]
