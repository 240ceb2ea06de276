"""`keras_gald.ops.conv2d` and friends against a float64 NumPy convolution, on every backend.

Values and both gradients of every geometry the layers use: dilated 3x3 "SAME" and
"VALID", 1x1, strided, odd and non-square sizes, an even dilated kernel, a large rate
on a small map. On TensorFlow each geometry takes its own kernel (custom gradients);
on JAX all are `lax.conv_general_dilated`.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np
import pytest

from keras_gald.ops.conv import conv2d, dilated_conv2d, pointwise_conv2d


def _pads(size, kernel, stride, rate, padding):
    """TF's (and lax's) padding of one axis: "SAME" puts the odd row/column last."""
    if padding == "VALID":
        return 0, 0
    out = -(-size // stride)
    total = max((out - 1) * stride + (kernel - 1) * rate + 1 - size, 0)
    return total // 2, total - total // 2


def numpy_conv(x, k, strides, padding, rates):
    """Float64 convolution: per tap, the strided input window times the tap's matrix."""
    x, k = np.asarray(x, np.float64), np.asarray(k, np.float64)
    (kh, kw), (sh, sw), (rh, rw) = k.shape[:2], strides, rates
    pads = [_pads(n, kk, s, r, padding) for n, kk, s, r in zip(x.shape[1:3], (kh, kw), strides, rates)]
    xp = np.pad(x, [(0, 0), *pads, (0, 0)])
    oh = (xp.shape[1] - (kh - 1) * rh - 1) // sh + 1
    ow = (xp.shape[2] - (kw - 1) * rw - 1) // sw + 1
    windows = {
        (i, j): (slice(None), slice(i * rh, i * rh + (oh - 1) * sh + 1, sh),
                 slice(j * rw, j * rw + (ow - 1) * sw + 1, sw))
        for i in range(kh) for j in range(kw)
    }
    return xp, pads, windows, sum(xp[w] @ k[i, j] for (i, j), w in windows.items())


def numpy_loss_and_grads(x, k, strides, padding, rates):
    """Float64 `[y, dL/dx, dL/dk]` of `L = sum(y * sin(y))`, the gradients written out:
    each tap scatters `dy @ k[tap]^T` back onto its input window, and its kernel
    gradient is `window^T @ dy`."""
    k64 = np.asarray(k, np.float64)
    xp, pads, windows, y = numpy_conv(x, k, strides, padding, rates)
    dy = np.sin(y) + y * np.cos(y)
    dxp, dk = np.zeros_like(xp), np.zeros_like(k64)
    for (i, j), w in windows.items():
        dxp[w] += dy @ k64[i, j].T
        dk[i, j] = np.einsum("nhwc,nhwo->co", xp[w], dy)
    (t, b), (l, r) = pads
    return [y, dxp[:, t:xp.shape[1] - b, l:xp.shape[2] - r], dk]


def loss_and_grads(fn, x, k):
    """`[fn(x, k), dL/dx, dL/dk]` of `L = sum(y * sin(y))` as NumPy arrays: every output
    element gets its own cotangent, so a wrong gradient cannot cancel out.
    `tf.GradientTape` on TensorFlow, `jax.value_and_grad` on JAX."""
    if keras.backend.backend() == "jax":
        import jax
        import jax.numpy as jnp

        def loss(x, k):
            y = fn(x, k)
            return jnp.sum(y * jnp.sin(y)), y

        (_, y), grads = jax.jit(jax.value_and_grad(loss, argnums=(0, 1), has_aux=True))(
            jnp.asarray(x), jnp.asarray(k))
        return [np.asarray(v) for v in (y, *grads)]
    import tensorflow as tf

    x, k = tf.constant(x), tf.constant(k)
    with tf.GradientTape() as tape:
        tape.watch([x, k])
        y = fn(x, k)
        loss = tf.reduce_sum(y * tf.sin(y))
    return [v.numpy() for v in (y, *tape.gradient(loss, [x, k]))]


def assert_matches(actual, expected, rtol):
    names = ["output", "input gradient", "kernel gradient"]
    for name, a, e in zip(names, actual, expected):
        assert a.shape == e.shape, (name, a.shape, e.shape)
        err = np.abs(a - e).max() / max(np.abs(e).max(), 1e-12)
        assert err <= rtol, (name, err)


def random(shape, seed):
    return np.random.default_rng(seed).normal(size=shape).astype("float32")


# (input H, W), kernel (kh, kw), strides, padding, rates
CASES = {
    "dilated_3x3_same": ((9, 11), (3, 3), (1, 1), "SAME", (2, 2)),
    "dilated_3x3_valid": ((9, 11), (3, 3), (1, 1), "VALID", (2, 3)),
    "large_rate_small_map": ((7, 9), (3, 3), (1, 1), "SAME", (6, 6)),  # TF: taps
    "even_dilated_same": ((8, 9), (2, 2), (1, 1), "SAME", (2, 2)),
    "odd_5x3_rate_1": ((7, 8), (5, 3), (1, 1), "SAME", (1, 1)),
    "pointwise": ((5, 7), (1, 1), (1, 1), "VALID", (1, 1)),
    "stride_2_same_odd_size": ((9, 11), (3, 3), (2, 2), "SAME", (1, 1)),
    "stride_2_valid": ((10, 9), (3, 3), (2, 2), "VALID", (1, 1)),
    "pointwise_stride_2": ((7, 6), (1, 1), (2, 2), "VALID", (1, 1)),
}


@pytest.mark.jax
@pytest.mark.parametrize("case", list(CASES))
def test_conv2d_values_and_gradients_match_float64(case):
    (h, w), (kh, kw), strides, padding, rates = CASES[case]
    x, k = random((2, h, w, 3), 0), random((kh, kw, 3, 4), 1)
    actual = loss_and_grads(
        lambda a, b: conv2d(a, b, strides=strides, padding=padding.lower(), dilation_rate=rates),
        x, k)
    assert_matches(actual, numpy_loss_and_grads(x, k, strides, padding, rates), 1e-5)


@pytest.mark.jax
@pytest.mark.parametrize("method", ["auto", "conv", "taps"])
def test_dilated_conv2d_every_method_matches_float64(method):
    # On JAX the TF-only methods compute the same numbers with lax.
    x, k = random((1, 8, 10, 3), 2), random((3, 3, 3, 5), 3)
    actual = loss_and_grads(lambda a, b: dilated_conv2d(a, b, (3, 2), "SAME", method=method), x, k)
    assert_matches(actual, numpy_loss_and_grads(x, k, (1, 1), "SAME", (3, 2)), 1e-5)


@pytest.mark.jax
def test_pointwise_conv2d_matches_float64():
    x, k = random((2, 4, 6, 5), 4), random((1, 1, 5, 3), 5)
    actual = loss_and_grads(pointwise_conv2d, x, k)
    assert_matches(actual, numpy_loss_and_grads(x, k, (1, 1), "VALID", (1, 1)), 1e-5)


@pytest.mark.jax
def test_argument_errors():
    x, k = np.zeros((1, 9, 9, 2), "float32"), np.zeros((3, 3, 2, 2), "float32")
    with pytest.raises(ValueError, match="strides > 1 are not supported with dilation_rate > 1"):
        conv2d(x, k, strides=2, padding="valid", dilation_rate=2)
    with pytest.raises(ValueError, match='padding must be "same" or "valid"'):
        conv2d(x, k, padding="causal")
    with pytest.raises(ValueError, match='method="taps" needs padding="SAME"'):
        dilated_conv2d(x, k, (2, 2), "VALID", method="taps")
    with pytest.raises(ValueError, match="method must be one of"):
        dilated_conv2d(x, k, (2, 2), "SAME", method="fft")
