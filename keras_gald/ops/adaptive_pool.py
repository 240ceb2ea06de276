"""PyTorch's adaptive average pooling (`F.adaptive_avg_pool2d`) for NHWC tensors.

PyTorch's bin `i` of `b` over a side of length `L` covers
`[floor(i * L / b), ceil((i + 1) * L / b))`: bins may overlap and none is
empty, so any `L >= 1` works, also `L < b`. Both axes are pooled as small
matrix products with a `(b, L)` averaging matrix, which needs no cumulative sum
(an integral image loses precision on large maps and is unusable in bfloat16)
and handles a dynamic `L`.

`adaptive_average_pool2d` dispatches on `keras.backend.backend()`:
- TensorFlow: the matrices are built in the graph from `tf.shape` (dynamic H,
  W, graph mode, XLA) with ONNX-friendly ops only (Range, comparisons, Einsum);
- JAX: shapes are static under tracing, so the matrices are NumPy constants
  and the products two `jnp.einsum`s that XLA fuses;
- any other backend: the same maths in `keras.ops` (static H, W).
"""

import keras
import numpy as np


def bin_edges(length, bins):
    """`(start, end)` int arrays of PyTorch's `bins` adaptive bins over `length`."""
    index = np.arange(bins)
    start = (index * length) // bins  # floor(i * L / b)
    end = ((index + 1) * length + bins - 1) // bins  # ceil((i + 1) * L / b)
    return start, end


def pool_matrix(length, bins, dtype="float32"):
    """`(bins, length)` NumPy matrix whose row `i` averages adaptive bin `i`."""
    start, end = bin_edges(int(length), int(bins))
    position = np.arange(int(length))
    inside = (position[None, :] >= start[:, None]) & (position[None, :] < end[:, None])
    return (inside / (end - start)[:, None]).astype(dtype)


def _check_output_size(output_size):
    if isinstance(output_size, int):
        output_size = (output_size, output_size)
    bins_h, bins_w = (int(b) for b in output_size)
    if bins_h < 1 or bins_w < 1:
        raise ValueError(f"output_size must be positive, got {output_size}")
    return bins_h, bins_w


def adaptive_average_pool2d(inputs, output_size):
    """PyTorch `F.adaptive_avg_pool2d` for NHWC tensors.

    Bin `(i, j)` averages rows `[floor(i*H/bh), ceil((i+1)*H/bh))` and columns
    `[floor(j*W/bw), ceil((j+1)*W/bw))`; any `H, W >= 1` works, including sizes
    smaller than the number of bins. Computed in float32 (the result keeps the
    input's dtype). `output_size=1` is a global average.

    Args:
        inputs: `(N, H, W, C)` float tensor (H, W may be dynamic on TensorFlow).
        output_size: `int` or `(bh, bw)` of Python ints.

    Returns:
        `(N, bh, bw, C)` tensor of the input's dtype.

    Example:
    >>> x = keras.ops.reshape(keras.ops.arange(5.0), (1, 5, 1, 1))
    >>> y = adaptive_average_pool2d(x, (2, 1))  # rows [0, 3) and [2, 5)
    >>> keras.ops.convert_to_numpy(y).ravel().tolist()
    [1.0, 3.0]
    """
    bins = _check_output_size(output_size)
    backend = keras.backend.backend()
    if backend == "tensorflow":
        return _adaptive_average_pool2d_tf(inputs, bins)
    if backend == "jax":
        return _adaptive_average_pool2d_jax(inputs, bins)
    return adaptive_average_pool2d_reference(inputs, bins)


def adaptive_average_pool2d_reference(inputs, output_size):
    """The plain `keras.ops` version (static H, W), any backend."""
    bins_h, bins_w = _check_output_size(output_size)
    x = keras.ops.convert_to_tensor(inputs)
    dtype = x.dtype
    x = keras.ops.cast(x, "float32")
    _, h, w, _ = keras.ops.shape(x)
    x = keras.ops.einsum("ih,nhwc->niwc", pool_matrix(h, bins_h), x)
    x = keras.ops.einsum("jw,niwc->nijc", pool_matrix(w, bins_w), x)
    return keras.ops.cast(x, dtype)


def _adaptive_average_pool2d_jax(inputs, bins):
    import jax.numpy as jnp

    bins_h, bins_w = bins
    x = jnp.asarray(inputs)
    dtype = x.dtype
    x = x.astype(jnp.float32)
    if bins_h == 1 and bins_w == 1:
        return jnp.mean(x, axis=(1, 2), keepdims=True).astype(dtype)
    _, h, w, _ = x.shape
    x = jnp.einsum("ih,nhwc->niwc", pool_matrix(h, bins_h), x)
    x = jnp.einsum("jw,niwc->nijc", pool_matrix(w, bins_w), x)
    return x.astype(dtype)


def _tf_pool_matrix(length, bins, dtype):
    """`pool_matrix` built in the graph from a (possibly dynamic) `length`."""
    import tensorflow as tf

    length = tf.cast(length, tf.int32)
    index = tf.range(bins, dtype=tf.int32)
    start = (index * length) // bins  # floor(i * L / b)
    end = ((index + 1) * length + bins - 1) // bins  # ceil((i + 1) * L / b)
    position = tf.range(length, dtype=tf.int32)
    inside = (position[None, :] >= start[:, None]) & (position[None, :] < end[:, None])
    counts = tf.cast(end - start, dtype)
    return tf.cast(inside, dtype) / counts[:, None]


def _adaptive_average_pool2d_tf(inputs, bins):
    import tensorflow as tf

    bins_h, bins_w = bins
    dtype = inputs.dtype
    x = tf.cast(inputs, tf.float32)
    if bins_h == 1 and bins_w == 1:  # GlobalAveragePooling2D(keepdims=True)
        return tf.cast(tf.reduce_mean(x, axis=[1, 2], keepdims=True), dtype)
    shape = tf.shape(x)
    pool_h = _tf_pool_matrix(shape[1], bins_h, tf.float32)
    pool_w = _tf_pool_matrix(shape[2], bins_w, tf.float32)
    x = tf.einsum("ih,nhwc->niwc", pool_h, x)
    x = tf.einsum("jw,niwc->nijc", pool_w, x)
    return tf.cast(x, dtype)
