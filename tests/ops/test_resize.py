"""Tests for keras_gald.ops.resize_bilinear on every backend (both PyTorch conventions).

Tests marked `jax` also run under `KERAS_BACKEND=jax`.
"""

import keras
import numpy as np
import pytest

from keras_gald.ops.resize import resize_bilinear


def interpolation_matrix(in_size, out_size, align_corners):
    """`(out, in)` float64 matrix of PyTorch's 1-D bilinear interpolation.

    Written from PyTorch's definition (`area_pixel_compute_source_index`):
    align_corners=True: `src = i * (in - 1) / (out - 1)`; False:
    `src = max((i + 0.5) * in / out - 0.5, 0)`; the two taps are
    `floor(src)` and the next pixel, clamped to the last one.
    """
    m = np.zeros((out_size, in_size))
    for i in range(out_size):
        if align_corners:
            src = i * (in_size - 1) / (out_size - 1) if out_size > 1 else 0.0
        else:
            src = max((i + 0.5) * in_size / out_size - 0.5, 0.0)
        lo = min(int(np.floor(src)), in_size - 1)
        hi = min(lo + 1, in_size - 1)
        m[i, lo] += 1.0 - (src - lo)
        m[i, hi] += src - lo
    return m


def np_resize(x, size, align_corners):
    a_h = interpolation_matrix(x.shape[1], size[0], align_corners)
    a_w = interpolation_matrix(x.shape[2], size[1], align_corners)
    return np.einsum("yh,nhwc,xw->nyxc", a_h, x.astype(np.float64), a_w)


def compiled(fn):
    """`jax.jit(fn)` on JAX (one compile, not one per op), `fn` on TensorFlow."""
    if keras.backend.backend() == "jax":
        import jax

        return jax.jit(fn)
    return fn


def _random(shape, seed):
    return np.random.default_rng(seed).standard_normal(shape).astype("float32")


# (input H, W) -> (output H, W): up, down, mixed, to and from a single pixel.
SIZES = [((4, 5), (9, 13)), ((9, 13), (4, 5)), ((1, 4), (3, 1))]


@pytest.mark.jax
@pytest.mark.parametrize("align_corners", [False, True])
@pytest.mark.parametrize("in_hw, out_hw", SIZES)
def test_values_match_numpy_reference(in_hw, out_hw, align_corners):
    x = _random((2, *in_hw, 3), 0)
    resize = compiled(lambda t: resize_bilinear(t, out_hw, align_corners))
    got = keras.ops.convert_to_numpy(resize(keras.ops.convert_to_tensor(x)))
    assert got.shape == (2, *out_hw, 3) and got.dtype == np.float32
    np.testing.assert_allclose(got, np_resize(x, out_hw, align_corners), rtol=1e-5, atol=1e-6)


@pytest.mark.jax
def test_conventions_differ_and_corners_map_to_corners():
    x = _random((1, 4, 5, 2), 1)
    xt = keras.ops.convert_to_tensor(x)
    corners = keras.ops.convert_to_numpy(resize_bilinear(xt, (7, 9), align_corners=True))
    half = keras.ops.convert_to_numpy(resize_bilinear(xt, (7, 9), align_corners=False))
    for y, x_ in [(0, 0), (0, -1), (-1, 0), (-1, -1)]:
        np.testing.assert_allclose(corners[0, y, x_], x[0, y, x_], rtol=1e-6)
    assert np.abs(corners - half).max() > 1e-2
    # Downsampling by 2 with half-pixel centres averages 2x2 blocks (no antialias
    # filter spreading further: jax.image.resize would).
    big = _random((1, 8, 8, 1), 2)
    down = keras.ops.convert_to_numpy(resize_bilinear(keras.ops.convert_to_tensor(big), (4, 4)))
    blocks = big.reshape(1, 4, 2, 4, 2, 1).mean(axis=(2, 4))
    np.testing.assert_allclose(down, blocks, rtol=1e-5, atol=1e-6)


@pytest.mark.jax
@pytest.mark.parametrize("align_corners", [False, True])
def test_gradient_is_the_transposed_interpolation(align_corners):
    in_hw, out_hw = (4, 5), (7, 3)
    x = keras.ops.convert_to_tensor(_random((1, *in_hw, 2), 3))
    cot = _random((1, *out_hw, 2), 4)
    loss = lambda t: keras.ops.sum(resize_bilinear(t, out_hw, align_corners) * cot)  # noqa: E731
    if keras.backend.backend() == "jax":
        import jax

        grad = jax.jit(jax.grad(loss))(x)
    else:
        import tensorflow as tf

        with tf.GradientTape() as tape:
            tape.watch(x)
            value = loss(x)
        grad = tape.gradient(value, x)
    a_h = interpolation_matrix(in_hw[0], out_hw[0], align_corners)
    a_w = interpolation_matrix(in_hw[1], out_hw[1], align_corners)
    expected = np.einsum("yh,nyxc,xw->nhwc", a_h, cot.astype(np.float64), a_w)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(grad), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.jax
def test_half_precision_keeps_its_dtype():
    x = keras.ops.convert_to_tensor(_random((1, 4, 5, 2), 5), "bfloat16")
    y = resize_bilinear(x, (7, 9), align_corners=True)
    assert keras.backend.standardize_dtype(y.dtype) == "bfloat16"
    expected = np_resize(keras.ops.convert_to_numpy(keras.ops.cast(x, "float32")), (7, 9), True)
    got = keras.ops.convert_to_numpy(keras.ops.cast(y, "float32"))
    np.testing.assert_allclose(got, expected, rtol=2e-2, atol=2e-2)


@pytest.mark.parametrize("align_corners", [False, True])
def test_matches_pytorch_interpolate(align_corners):
    """The real thing: torch.nn.functional.interpolate(mode="bilinear")."""
    torch = pytest.importorskip("torch")
    x = _random((1, 5, 7, 3), 6)
    for out_hw in [(11, 4), (3, 13)]:
        expected = torch.nn.functional.interpolate(
            torch.from_numpy(x).permute(0, 3, 1, 2), size=out_hw, mode="bilinear",
            align_corners=align_corners,
        ).permute(0, 2, 3, 1).numpy()
        got = resize_bilinear(keras.ops.convert_to_tensor(x), out_hw, align_corners)
        np.testing.assert_allclose(keras.ops.convert_to_numpy(got), expected, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(np_resize(x, out_hw, align_corners), expected, atol=1e-5)
