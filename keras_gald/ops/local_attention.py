"""Local attention kernels: LDv2's neighbourhood correlation and aggregation.

For a `k x k` neighbourhood sampled with dilation `r`, on per-head tensors
(features `(N, H, W, heads, d)`, logits / weights `(N, H, W, heads, k*k)`):

    local_logits(q, k)[..., n]  = sum_d q * shift_n(k)
    local_aggregate(w, v)       = sum_n w[..., n] * shift_n(v)

where `shift_n` reads the map at offset `d_n` and out-of-image neighbours
read zeros. The fast path pads the map once and takes `k^2` shifted slices,
so no `(N, H, W, k^2, C)` tensor is built forward or backward:

* TensorFlow: the slices carry custom gradients written the same way (TF's
  autodiff would keep `k^2` padded gradient tensors alive for one `AddN`),
  each primitive optionally XLA-compiled (`Policy.jit_slices`), the `k^2`
  products ordered one after another (`after`).
* JAX: the same slices, one per step of a `lax.scan` (so one window is alive
  at a time), differentiated by JAX itself: no custom gradient.

`local_logits_reference` / `local_aggregate_reference` compute the same
numbers the obvious way, from the `(N, H, W, k^2, heads, d)` neighbourhood
tensors (`neighbourhoods`: `tf.image.extract_patches` on TF,
`jax.lax.conv_general_dilated_patches` on JAX): code that shares nothing with
the slices, so the two are a real cross-check of each other on each backend.
"""

import functools

import keras
import numpy as np

from keras_gald.ops.optional_tensorflow import tf
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


def _window(x_pad, top, left, size):
    """The `size`-shaped slice of the padded map starting at row `top`, column `left`.

    `size` is the unpadded map's shape, computed once per primitive, so each of
    the `k^2` windows adds two graph nodes (its constant origin and a `Slice`)
    instead of the dozen that Python slicing with dynamic bounds builds: a third
    of the nodes, and a layer's first forward + backward trace takes less than
    half the time (`python benchmarks/ldv2_trace.py`); every `fit`, `predict`
    and export traces it.
    """
    begin = [0, top, left] + [0] * (len(x_pad.shape) - 3)
    return tf.slice(x_pad, begin, size)


def _corr(a, b, offsets, pad):
    """`out[..., n] = sum_d a * shift_n(b)`: (N,H,W,h,d) x2 -> (N,H,W,h,K).

    The channel sum is a matmul with a ones column rather than `reduce_sum`:
    XLA:CPU fuses a minor-axis reduce into the `k^2`-way stack as a scalar
    loop, which is far slower than the matmul; plain TF graphs (jit_slices=False,
    exports) pay a little on this op instead, a small share of the layer. The
    layer's timings: `python benchmarks/speed.py --sections ldv2_block` and
    `python benchmarks/ldv2_impl.py` (see benchmarks/README.md).
    """
    size = tf.shape(b)
    depth = a.shape[-1]
    b_pad = _pad_hw(b, pad)
    ones = tf.ones((depth, 1), a.dtype)
    out_size = size[:4]
    logits = []
    for dy, dx in offsets:
        with after(logits[-1] if logits else None):
            prod = a * _window(b_pad, pad + dy, pad + dx, size)
        logits.append(tf.reshape(tf.matmul(tf.reshape(prod, [-1, depth]), ones), out_size))
    return tf.stack(logits, axis=-1)


def _agg(w, b, offsets, pad):
    """`out = sum_n w[..., n] * shift_n(b)`: (N,H,W,h,K), (N,H,W,h,d) -> (N,H,W,h,d)."""
    size = tf.shape(b)
    b_pad = _pad_hw(b, pad)
    weights = tf.unstack(w, num=len(offsets), axis=-1)
    out = None
    for w_n, (dy, dx) in zip(weights, offsets):
        with after(out):
            term = tf.expand_dims(w_n, -1) * _window(b_pad, pad + dy, pad + dx, size)
        out = term if out is None else out + term
    return out


def _agg_t(w, a, offsets, pad):
    """Adjoint of the shift: `out(y) = sum_n w_n(y - d_n) * a(y - d_n)`.

    `y - d_n` outside the image contributes zero. This is the gradient of
    `_corr` w.r.t. `b` and of `_agg` w.r.t. `b`. Pads `w` and `a` once and
    slices both, instead of padding `k^2` products.
    """
    size = tf.shape(a)
    w_size = size[:4]
    a_pad = _pad_hw(a, pad)
    w_pad = tf.unstack(_pad_hw(w, pad), num=len(offsets), axis=-1)
    out = None
    for w_n, (dy, dx) in zip(w_pad, offsets):
        top, left = pad - dy, pad - dx
        with after(out):
            w_shifted = tf.expand_dims(_window(w_n, top, left, w_size), -1)
            term = w_shifted * _window(a_pad, top, left, size)
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


def _backend():
    backend = keras.backend.backend()
    if backend not in ("tensorflow", "jax"):
        raise NotImplementedError(
            f"keras_gald's local attention kernels run on the TensorFlow and JAX "
            f"backends; KERAS_BACKEND is {backend!r}"
        )
    return backend


def local_logits(q, k, offsets, pad, jit=False):
    """Neighbourhood correlation: `out[..., n] = sum_d q * shift_n(k)`.

    Args:
        q, k: `(N, H, W, heads, d)` float tensors.
        offsets: the `K` neighbour offsets `[(dy, dx), ...]`
            (`neighbour_offsets(kernel_size, dilation_rate)`).
        pad: `max(|dy|, |dx|)` over the offsets (`(kernel_size - 1) // 2 *
            dilation_rate`): the zero border the map is padded with once.
        jit: TensorFlow only: run the primitive and its gradients as
            XLA-compiled functions when tracing a graph outside
            `portable_ops()`. Ignored on JAX, where XLA compiles everything.

    Returns:
        `(N, H, W, heads, K)` logits. Gradients never hold `K` feature-sized
        tensors (TF: custom gradients; JAX: a scan over the slices, rematerialised).

    Example:
    >>> q = k = keras.ops.ones((1, 9, 9, 1, 8))
    >>> tuple(local_logits(q, k, neighbour_offsets(3, 2), pad=2).shape)
    (1, 9, 9, 1, 9)
    """
    if _backend() == "jax":
        return _jax_corr(q, k, offsets, pad)
    corr, agg, agg_t = _primitives(offsets, pad, jit)

    @tf.custom_gradient
    def local_logits(q, k):
        def grad(g):
            return agg(g, k), agg_t(g, q)

        return corr(q, k), grad

    return local_logits(q, k)


def local_aggregate(w, v, offsets, pad, jit=False):
    """Weighted neighbourhood sum: `out = sum_n w[..., n] * shift_n(v)`.

    Args:
        w: `(N, H, W, heads, K)` weights (e.g. the softmax of `local_logits`).
        v: `(N, H, W, heads, d)` values.
        offsets, pad, jit: see `local_logits`.

    Returns:
        `(N, H, W, heads, d)`.
    """
    if _backend() == "jax":
        return _jax_agg(w, v, offsets, pad)
    corr, agg, agg_t = _primitives(offsets, pad, jit)

    @tf.custom_gradient
    def local_aggregate(w, v):
        def grad(g):
            return corr(g, v), agg_t(w, g)

        return agg(w, v), grad

    return local_aggregate(w, v)


# JAX: the same shifted slices, as a `lax.scan` over the k^2 offsets (one
# `dynamic_slice` of the once-padded map per step), differentiated by JAX.
# Why a scan rather than k^2 unrolled slices: XLA:CPU does not fuse the
# unrolled products into their sums, and its scheduler keeps most of them
# alive at once (forward and backward about 47 feature-sized buffers on a
# 64 x 64 x 128 map, k = 5), whereas the scan holds one step's window; with
# the step rematerialised (`jax.checkpoint`), autodiff stores only the offsets
# per step instead of k^2 windows. Measured on 2 CPU cores, k = 5, forward +
# backward of softmax attention: 10.7 MB of XLA temporaries and 122 ms for the
# scan against 99 MB and 251 ms unrolled (the patches reference: 210 MB,
# 12.7 s). No custom gradient is needed.


def _jax_pad_hw(x, pad):
    import jax.numpy as jnp

    return jnp.pad(x, [(0, 0), (pad, pad), (pad, pad)] + [(0, 0)] * (x.ndim - 3))


def _jax_window_fn(b, offsets, pad):
    """`(starts, window)`: the k^2 slice origins in the padded `b`, and
    `window(start)`, the `b`-shaped slice at one of them."""
    import jax.numpy as jnp
    from jax import lax

    b_pad = _jax_pad_hw(b, pad)
    starts = jnp.asarray(offsets, jnp.int32) + pad
    zero = jnp.int32(0)

    def window(start):
        begin = (zero, start[0], start[1]) + (zero,) * (b.ndim - 3)
        return lax.dynamic_slice(b_pad, begin, b.shape)

    return starts, window


def _jax_corr(a, b, offsets, pad):
    import jax
    import jax.numpy as jnp
    from jax import lax

    starts, window = _jax_window_fn(b, offsets, pad)
    ones = jnp.ones((a.shape[-1],), a.dtype)

    @jax.checkpoint
    def step(carry, start):
        # The channel sum as a dot with ones, for the reason `_corr` gives
        # (XLA:CPU); HIGHEST keeps it a float32 sum on GPUs (no TF32).
        return carry, jnp.dot(a * window(start), ones, precision=lax.Precision.HIGHEST)

    _, logits = lax.scan(step, None, starts)  # (K, N, H, W, heads)
    return jnp.moveaxis(logits, 0, -1)


def _jax_agg(w, b, offsets, pad):
    import jax
    import jax.numpy as jnp
    from jax import lax

    starts, window = _jax_window_fn(b, offsets, pad)

    @jax.checkpoint
    def step(out, inputs):
        start, w_n = inputs
        return out + w_n[..., None] * window(start), None

    out = jnp.zeros(b.shape, jnp.result_type(w, b))
    out, _ = lax.scan(step, out, (starts, jnp.moveaxis(w, -1, 0)))
    return out


def valid_neighbours(height, width, offsets):
    """Bool `(1, H, W, 1, K)`: neighbour n of position (y, x) lies in the image.

    `height`, `width`: Python ints, or (TensorFlow) scalar tensors.
    """
    if _backend() == "jax":
        # Shapes are static under JAX: a constant.
        rows = np.arange(int(height))[:, None]
        cols = np.arange(int(width))[None, :]
        stack = np.stack
    else:
        rows = tf.range(height)[:, None]
        cols = tf.range(width)[None, :]
        stack = tf.stack
    valid = [
        (rows + dy >= 0) & (rows + dy < height) & (cols + dx >= 0) & (cols + dx < width)
        for dy, dx in offsets
    ]
    return stack(valid, axis=-1)[None, :, :, None, :]


# --------------------------------------------------------------------------
# Reference (impl="patches"): the k x k neighbourhoods materialised, then
# Eq. (8)'s sums as einsums. k^2 copies of the map, forward and backward; kept
# because it shares no code with the slices above.
# --------------------------------------------------------------------------


def neighbourhoods(x, kernel_size, dilation_rate):
    """`(N, H, W, heads, d)` -> `(N, H, W, K, heads, d)`, the zero-padded
    neighbours of every position, row-major over the window.

    TF: `tf.image.extract_patches(rates=r, padding="SAME")`; JAX:
    `jax.lax.conv_general_dilated_patches`, which puts the input channel
    before the window position in its output features.
    """
    kk = kernel_size
    if _backend() == "jax":
        import jax.numpy as jnp
        from jax import lax

        n, height, width, heads, depth = x.shape
        pad = (kk - 1) // 2 * dilation_rate
        patches = lax.conv_general_dilated_patches(
            jnp.reshape(x, (n, height, width, heads * depth)),
            filter_shape=(kk, kk),
            window_strides=(1, 1),
            padding=[(pad, pad), (pad, pad)],
            rhs_dilation=(dilation_rate, dilation_rate),
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
            # A one-hot filter: exact at full precision (no TF32 on GPUs).
            precision=lax.Precision.HIGHEST,
        )
        patches = jnp.reshape(patches, (n, height, width, heads, depth, kk * kk))
        return jnp.moveaxis(patches, -1, 3)
    shape = tf.shape(x)
    # An explicit channel count: tf2onnx turns a -1 here into a Reshape with two -1s.
    flat = tf.reshape(x, tf.stack([shape[0], shape[1], shape[2], shape[3] * shape[4]]))
    patches = tf.image.extract_patches(
        flat,
        sizes=[1, kk, kk, 1],
        strides=[1, 1, 1, 1],
        rates=[1, dilation_rate, dilation_rate, 1],
        padding="SAME",
    )
    return tf.reshape(patches, tf.concat([shape[:3], [kk * kk], shape[3:]], axis=0))


def _einsum(equation, a, b):
    if _backend() == "jax":
        import jax.numpy as jnp
        from jax import lax

        return jnp.einsum(equation, a, b, precision=lax.Precision.HIGHEST)
    return tf.einsum(equation, a, b)


def local_logits_reference(q, k, kernel_size, dilation_rate):
    """`local_logits` computed from `neighbourhoods(k)` (the reference).

    Args:
        q, k: `(N, H, W, heads, d)`.
        kernel_size: odd `k`; dilation_rate: `r`.

    Returns:
        `(N, H, W, heads, k*k)`, neighbours in `neighbour_offsets` order.
    """
    return _einsum("nyxhd,nyxkhd->nyxhk", q, neighbourhoods(k, kernel_size, dilation_rate))


def local_aggregate_reference(w, v, kernel_size, dilation_rate):
    """`local_aggregate` computed from `neighbourhoods(v)` (the reference).

    Args:
        w: `(N, H, W, heads, k*k)`; v: `(N, H, W, heads, d)`.

    Returns:
        `(N, H, W, heads, d)`.
    """
    return _einsum("nyxhk,nyxkhd->nyxhd", w, neighbourhoods(v, kernel_size, dilation_rate))


def valid_neighbours_reference(height, width, kernel_size, dilation_rate):
    """`valid_neighbours` from the patches of a map of ones (the reference)."""
    if _backend() == "jax":
        import jax.numpy as jnp

        ones = jnp.ones((1, int(height), int(width), 1, 1), jnp.float32)
        patches = neighbourhoods(ones, kernel_size, dilation_rate)[..., 0]  # (1,H,W,K,1)
        return jnp.moveaxis(patches > 0.5, -1, 3)
    ones = tf.ones(tf.stack([1, height, width, 1]), tf.float32)
    patches = tf.image.extract_patches(
        ones,
        sizes=[1, kernel_size, kernel_size, 1],
        strides=[1, 1, 1, 1],
        rates=[1, dilation_rate, dilation_rate, 1],
        padding="SAME",
    )
    return (patches > 0.5)[:, :, :, None, :]


# --------------------------------------------------------------------------
# Run-time shape checks the layers need where shapes are dynamic.
# --------------------------------------------------------------------------


def assert_same_height_width(x_global, x_local, message):
    """Returns `x_local`, checked to share `H, W` with `x_global`.

    Static sizes raise `ValueError(message)` at once. Under TensorFlow, sizes
    known only at run time get an `Assert` the returned tensor depends on
    (`tf.errors.InvalidArgumentError` with `message`; it compiles to nothing
    under XLA and tf2onnx drops it). JAX shapes are always static.
    """
    static = (x_global.shape[1], x_local.shape[1], x_global.shape[2], x_local.shape[2])
    if None not in static:
        if static[0] != static[1] or static[2] != static[3]:
            raise ValueError(f"{message}; got shapes {tuple(x_global.shape)} and "
                             f"{tuple(x_local.shape)}")
        return x_local
    g_hw, l_hw = tf.shape(x_global)[1:3], tf.shape(x_local)[1:3]
    with tf.control_dependencies([tf.debugging.assert_equal(g_hw, l_hw, message=message)]):
        return tf.identity(x_local)


def assert_min_height_width(x, minimum, message):
    """Returns `x`, checked to be at least `minimum` high and wide.

    Static sizes are the caller's to check (it can name them in its error);
    under TensorFlow, sizes known only at run time get an `Assert` the returned
    tensor depends on (`tf.errors.InvalidArgumentError` with `message`). JAX
    shapes are always static: `x` is returned as it is.
    """
    if x.shape[1] is not None and x.shape[2] is not None:
        return x
    shape = tf.shape(x)
    checks = [
        tf.debugging.assert_greater_equal(shape[1], minimum, message=message),
        tf.debugging.assert_greater_equal(shape[2], minimum, message=message),
    ]
    with tf.control_dependencies(checks):
        return tf.identity(x)
