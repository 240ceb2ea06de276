"""PyTorch's max-pooling (`nn.MaxPool2d`, floor and ceil mode) in NHWC.

The ResNet stem's `TorchMaxPool2D` calls `max_pool2d`. TensorFlow pads with
`-inf` and max-pools `"VALID"` (dynamic `H, W` allowed); JAX runs
`lax.reduce_window` with the same `-inf` padding on static shapes.
"""

import keras
import numpy as np


def pool_output_length(length, kernel, stride, pad, ceil_mode):
    """PyTorch's `pooling_output_shape` for a Python int or a scalar int tensor.

    `floor((L + 2p - k) / s) + 1`; in ceil mode `ceil(...) + 1`, minus one
    when that last window would start at or beyond `L + p` (PyTorch's rule:
    it must start inside the input or the left padding).
    """
    numer = length + 2 * pad - kernel
    if not ceil_mode:
        return numer // stride + 1
    out = (numer + stride - 1) // stride + 1
    if isinstance(out, int):
        return out - 1 if (out - 1) * stride >= length + pad else out
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        return tf.where((out - 1) * stride >= length + pad, out - 1, out)
    return keras.ops.where((out - 1) * stride >= length + pad, out - 1, out)


def max_pool2d(inputs, pool_size, strides, padding, ceil_mode):
    """PyTorch's `MaxPool2d(pool_size, strides, padding, ceil_mode)` on NHWC.

    Pads `padding` on the top/left and whatever the output length
    (`pool_output_length`) needs on the bottom/right with `-inf`, so padding
    never wins whatever the input's sign, and takes the max over each window.

    Args:
        inputs: `(N, H, W, C)`, floating point; on TensorFlow `H, W` may be
            dynamic.
        pool_size: `(kh, kw)`.
        strides: `(sh, sw)`.
        padding: `(ph, pw)`, each at most half the window (as in PyTorch).
        ceil_mode: PyTorch's `ceil_mode`.

    Returns:
        `(N, H', W', C)`.

    Example:
    >>> y = max_pool2d(keras.ops.zeros((1, 385, 384, 8)), (3, 3), (2, 2), (1, 1), True)
    >>> tuple(y.shape)
    (1, 193, 193, 8)
    """
    if keras.backend.backend() == "tensorflow":
        return _max_pool2d_tf(inputs, pool_size, strides, padding, ceil_mode)
    inputs = keras.ops.convert_to_tensor(inputs)
    sizes = [int(inputs.shape[axis]) for axis in (1, 2)]
    out_sizes = [
        pool_output_length(n, k, s, p, ceil_mode)
        for n, k, s, p in zip(sizes, pool_size, strides, padding)
    ]
    pads = [
        (p, max((out - 1) * s + k - p - n, 0))
        for n, out, k, s, p in zip(sizes, out_sizes, pool_size, strides, padding)
    ]
    if keras.backend.backend() == "jax":
        from jax import lax  # only JAX users import jax

        # A NumPy -inf (not a traced one) lets lax see the max monoid and pick
        # reduce_window_max, which has a gradient.
        y = lax.reduce_window(
            inputs, np.array(-np.inf, inputs.dtype), lax.max,
            (1, *pool_size, 1), (1, *strides, 1), ((0, 0), *pads, (0, 0)),
        )
    else:
        x = keras.ops.pad(inputs, [(0, 0), *pads, (0, 0)], constant_values=-np.inf)
        y = keras.ops.max_pool(x, pool_size, strides, padding="valid")
    return y[:, : out_sizes[0], : out_sizes[1], :]


def _max_pool2d_tf(inputs, pool_size, strides, padding, ceil_mode):
    import tensorflow as tf

    dynamic = tf.shape(inputs)
    sizes = [
        inputs.shape[axis] if inputs.shape[axis] is not None else dynamic[axis]
        for axis in (1, 2)
    ]
    out_sizes = [
        pool_output_length(n, k, s, p, ceil_mode)
        for n, k, s, p in zip(sizes, pool_size, strides, padding)
    ]
    pads = [[0, 0]]
    for n, out, k, s, p in zip(sizes, out_sizes, pool_size, strides, padding):
        after = (out - 1) * s + k - p - n
        after = max(after, 0) if isinstance(after, int) else tf.maximum(after, 0)
        pads.append([p, after])
    pads.append([0, 0])
    if not all(isinstance(v, int) for pair in pads for v in pair):
        pads = tf.stack([tf.stack([tf.cast(v, tf.int32) for v in pair]) for pair in pads])
    x = tf.pad(inputs, pads, constant_values=tf.constant(-np.inf, inputs.dtype))
    y = tf.nn.max_pool2d(x, ksize=pool_size, strides=strides, padding="VALID")
    return y[:, : out_sizes[0], : out_sizes[1], :]

