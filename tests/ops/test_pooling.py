"""`keras_gald.ops.max_pool2d`: PyTorch's max-pooling, ceil and floor mode, on every backend."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np
import pytest

from keras_gald.ops.pooling import max_pool2d, pool_output_length


def torch_output_length(n, k, s, p, ceil_mode):
    """PyTorch's `pooling_output_shape` (dilation 1), written from aten."""
    out = (-(-(n + 2 * p - k) // s) if ceil_mode else (n + 2 * p - k) // s) + 1
    if ceil_mode and (out - 1) * s >= n + p:
        out -= 1  # the last window must start inside the input or the left padding
    return out


def numpy_max_pool(x, k, s, p, ceil_mode):
    """Max over each window clipped to the input (padding never wins), and the
    gradient of `sum(y * c)`: each window's cotangent goes to its maximum."""
    n, h, w, ch = x.shape
    oh, ow = (torch_output_length(v, k, s, p, ceil_mode) for v in (h, w))
    y = np.empty((n, oh, ow, ch), x.dtype)
    c = np.cos(np.arange(y.size, dtype=np.float64)).reshape(y.shape)
    dx = np.zeros(x.shape, np.float64)
    for i in range(oh):
        h0, h1 = max(i * s - p, 0), min(i * s - p + k, h)
        for j in range(ow):
            w0, w1 = max(j * s - p, 0), min(j * s - p + k, w)
            window = x[:, h0:h1, w0:w1, :].reshape(n, -1, ch)
            y[:, i, j, :] = window.max(axis=1)
            at = window.argmax(axis=1)
            for b in range(n):
                for q in range(ch):
                    a, e = divmod(at[b, q], w1 - w0)
                    dx[b, h0 + a, w0 + e, q] += c[b, i, j, q]
    return y, c, dx


def pool_and_grad(x, c, k, s, p, ceil_mode):
    """`[max_pool2d(x), d sum(y * c) / dx]`: `tf.GradientTape` on TF, `jax.grad` on JAX."""
    pool = lambda v: max_pool2d(v, (k, k), (s, s), (p, p), ceil_mode)  # noqa: E731
    if keras.backend.backend() == "jax":
        import jax
        import jax.numpy as jnp

        y = jax.jit(pool)(jnp.asarray(x))
        dx = jax.jit(jax.grad(lambda v: jnp.sum(pool(v) * c)))(jnp.asarray(x))
        return np.asarray(y), np.asarray(dx)
    import tensorflow as tf

    x = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = pool(x)
        loss = tf.reduce_sum(y * tf.constant(c, y.dtype))
    return y.numpy(), tape.gradient(loss, x).numpy()


@pytest.mark.jax
@pytest.mark.parametrize(
    "k, s, p, ceil_mode, size",
    [(3, 2, 1, True, (8, 9)), (3, 2, 1, False, (8, 9)), (2, 3, 1, True, (7, 8)),
     (3, 3, 1, True, (5, 7))],
)
def test_max_pool_matches_pytorch_reference(k, s, p, ceil_mode, size):
    # Negative inputs: the -inf padding must never win.
    x = np.random.default_rng(k * 10 + s).normal(size=(2, *size, 3)).astype("float32") - 3.0
    expected, c, expected_dx = numpy_max_pool(x, k, s, p, ceil_mode)
    y, dx = pool_and_grad(x, c.astype("float32"), k, s, p, ceil_mode)
    np.testing.assert_array_equal(y, expected)
    np.testing.assert_allclose(dx, expected_dx, rtol=1e-6, atol=1e-6)


def test_output_length_follows_pytorch_rule():
    fired = 0
    for n in range(1, 30):
        for k, s, p in [(3, 2, 1), (2, 3, 1), (4, 3, 2), (2, 2, 0)]:
            if n + 2 * p < k:
                continue
            for ceil_mode in (True, False):
                assert pool_output_length(n, k, s, p, ceil_mode) == \
                    torch_output_length(n, k, s, p, ceil_mode), (n, k, s, p, ceil_mode)
            fired += pool_output_length(n, k, s, p, True) != -(-(n + 2 * p - k) // s) + 1
    assert fired  # the "last window starts inside input + left pad" rule was exercised
