"""Tests for keras_gald.layers.nonlocal_block.NonLocal against a NumPy reference."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

from keras_gald.layers.nonlocal_block import NonLocal  # noqa: E402
from tests.layers._helpers import (  # noqa: E402
    assert_clone_matches, assert_gradients, assert_rejects_bad_nhwc,
    functional_model, global_policy, projected_gradients, random_input
)


# --------------------------------------------------------------------------- helpers
def to_numpy(value):
    """A variable or tensor of any backend as a NumPy array."""
    return keras.ops.convert_to_numpy(value)


def max_pool_2x2_ceil(x):
    """2x2 / stride-2 max pool, ceil mode (a trailing odd row/column is its own window)."""
    n, h, w, c = x.shape
    hp, wp = -(-h // 2), -(-w // 2)
    padded = np.full((n, 2 * hp, 2 * wp, c), -np.inf)
    padded[:, :h, :w] = x
    return padded.reshape(n, hp, 2, wp, 2, c).max(axis=(2, 4))


def nonlocal_reference(layer, x):
    """Embedded-Gaussian non-local block (Wang et al. 2018), inference mode, float64."""
    x = x.astype(np.float64)
    n, h, w, c = x.shape

    def conv1x1(conv, v):
        out = v @ to_numpy(conv.kernel)[0, 0].astype(np.float64)
        return out + to_numpy(conv.bias) if conv.use_bias else out

    theta = conv1x1(layer.theta, x)
    phi = conv1x1(layer.phi, x)
    g = conv1x1(layer.g, x)
    if layer.downsample:
        phi, g = max_pool_2x2_ceil(phi), max_pool_2x2_ceil(g)
    inter = theta.shape[-1]
    theta = theta.reshape(n, h * w, inter)
    phi = phi.reshape(n, -1, inter)
    g = g.reshape(n, -1, inter)
    logits = theta @ phi.transpose(0, 2, 1)
    logits -= logits.max(axis=-1, keepdims=True)
    attention = np.exp(logits)
    attention /= attention.sum(axis=-1, keepdims=True)
    y = (attention @ g).reshape(n, h, w, inter)
    z = conv1x1(layer.w_conv, y)
    bn = layer.w_bn
    z = (z - to_numpy(bn.moving_mean)) / np.sqrt(to_numpy(bn.moving_variance) + bn.epsilon)
    z = z * to_numpy(bn.gamma) + to_numpy(bn.beta)
    return x + z


def randomise(layer, seed=0):
    """Non-trivial weights: random biases and BN (gamma != 0, so the block is not identity)."""
    rng = np.random.default_rng(seed)
    for conv in (layer.theta, layer.phi, layer.g):
        conv.bias.assign(rng.normal(0, 0.1, conv.bias.shape).astype(np.float32))
    c = layer.w_bn.gamma.shape[0]
    layer.w_bn.gamma.assign(rng.uniform(0.5, 1.5, c).astype(np.float32))
    layer.w_bn.beta.assign(rng.normal(0, 0.1, c).astype(np.float32))
    layer.w_bn.moving_mean.assign(rng.normal(0, 0.1, c).astype(np.float32))
    layer.w_bn.moving_variance.assign(rng.uniform(0.5, 1.5, c).astype(np.float32))


def built_block(channels, seed=0, **kwargs):
    keras.utils.set_random_seed(seed)
    layer = NonLocal(**kwargs)
    layer.build((None, None, None, channels))
    randomise(layer, seed)
    return layer


@pytest.fixture
def mixed_bfloat16():
    with global_policy("mixed_bfloat16"):
        yield


# ---------------------------------------------------------------- reference
def test_reference_ceil_max_pool_hand_values():
    x = np.arange(9, dtype=np.float64).reshape(1, 3, 3, 1)
    np.testing.assert_array_equal(max_pool_2x2_ceil(x)[0, :, :, 0], [[4, 5], [7, 8]])


@pytest.mark.parametrize("size", [(9, 11), (8, 6), (1, 5), (33, 47)])
@pytest.mark.parametrize("downsample", [True, False])
def test_matches_numpy_reference(size, downsample):
    layer = built_block(8, seed=size[0], downsample=downsample)
    x = random_input((2, *size, 8), seed=size[1])
    actual = layer(x, training=False).numpy()
    expected = nonlocal_reference(layer, x)
    assert actual.shape == (2, *size, 8)
    # the residual dominates the scale; compare the non-local branch itself too
    np.testing.assert_allclose(actual - x, expected - x, rtol=1e-4, atol=1e-5)


@pytest.mark.jax
@pytest.mark.parametrize("downsample", [True, False])
def test_forward_matches_numpy_reference_on_every_backend(downsample):
    # Odd sizes: the ceil-mode pooling keeps the last row and column.
    layer = built_block(6, seed=3, inter_channels=4, downsample=downsample)
    x = random_input((2, 5, 7, 6), seed=4)
    actual = to_numpy(layer(x, training=False))
    np.testing.assert_allclose(actual - x, nonlocal_reference(layer, x) - x, rtol=1e-4, atol=1e-5)


def test_downsampling_changes_the_result():
    layer = built_block(8, seed=1, downsample=True)
    x = random_input((1, 9, 11, 8), seed=2)
    full = NonLocal(downsample=False)
    full.build((None, None, None, 8))
    full.set_weights(layer.get_weights())
    assert np.abs(layer(x, training=False) - full(x, training=False)).max() > 1e-3


def test_identity_at_initialisation():
    layer = NonLocal()
    x = random_input((2, 9, 11, 6))
    np.testing.assert_array_equal(layer(x, training=False), x)
    np.testing.assert_array_equal(layer(x, training=True), x)
    assert np.all(layer.w_bn.gamma.numpy() == 0.0)


def test_inter_channels_default_and_explicit():
    layer = NonLocal()
    layer.build((None, None, None, 10))
    assert layer.theta.filters == 5 and layer.w_conv.filters == 10
    layer = NonLocal()
    layer.build((None, None, None, 1))
    assert layer.theta.filters == 1
    layer = NonLocal(inter_channels=3)
    layer.build((None, 4, 4, 10))
    assert layer.theta.kernel.shape == (1, 1, 10, 3)
    assert layer.w_conv.kernel.shape == (1, 1, 3, 10)


# ------------------------------------------------------------------- shapes


def test_dynamic_shape_functional_model():
    layer = NonLocal(inter_channels=4)
    model = functional_model(layer, 8, out_channels=8)
    randomise(layer, seed=5)
    for size in [(33, 47), (7, 4), (1, 1)]:
        x = random_input((1, *size, 8), seed=size[0])
        y = model.predict(x, verbose=0)
        assert y.shape == (1, *size, 8)
        np.testing.assert_allclose(y - x, nonlocal_reference(layer, x) - x, rtol=1e-4, atol=1e-5)


# ------------------------------------------------------------- serialization
def test_get_config_from_config_round_trip():
    layer = built_block(6, seed=3, inter_channels=2, downsample=False, name="nl_rt")
    config = layer.get_config()
    assert config["inter_channels"] == 2 and config["downsample"] is False
    assert_clone_matches(layer, random_input((2, 5, 7, 6)), build_shape=(None, None, None, 6),
                         training=False)


# ------------------------------------------------------------------ training
def gradients(layer, x):
    return projected_gradients(layer, x, lambda y: random_input(y.shape, seed=9))


def test_gradients_reach_every_trainable_weight():
    layer = NonLocal(inter_channels=4)
    x = random_input((2, 9, 7, 8))
    layer.build(x.shape)
    # theta, phi, g: kernel + bias; W: kernel; BN: gamma, beta
    assert len(layer.trainable_weights) == 3 * 2 + 1 + 2
    # At initialisation gamma = 0 blocks the gradient of everything before the
    # BN, but every weight is connected and gamma / beta already learn.
    grads = dict(zip([w.path for w in layer.trainable_weights], gradients(layer, x)))
    assert all(g is not None for g in grads.values())
    assert float(tf.reduce_max(tf.abs(grads[layer.w_bn.gamma.path]))) > 0.0
    assert float(tf.reduce_max(tf.abs(grads[layer.w_bn.beta.path]))) > 0.0
    # Once gamma moves off zero, gradients reach every weight.
    layer.w_bn.gamma.assign(np.ones(8, np.float32))
    assert_gradients(layer.trainable_weights, gradients(layer, x))


def test_mixed_bfloat16(mixed_bfloat16):
    layer = NonLocal(inter_channels=4)
    layer.build((None, None, None, 8))
    assert layer.compute_dtype == "bfloat16"
    assert layer.theta.kernel.dtype == "float32"
    randomise(layer, seed=6)
    x = random_input((2, 9, 11, 8), seed=6)
    y = layer(x, training=False)
    assert y.dtype == tf.bfloat16
    expected = nonlocal_reference(layer, x)
    branch_error = np.abs(tf.cast(y, tf.float32).numpy() - expected).max()
    assert branch_error <= 2e-2 * np.abs(expected).max()
    model = functional_model(layer, 8)
    assert model.predict(x[:1, :5, :3], verbose=0).shape == (1, 5, 3, 8)
    assert_gradients(layer.trainable_weights, gradients(layer, x), nonzero=False, finite=True,
                     dtype=tf.float32)


# -------------------------------------------------------------------- errors
def test_bad_inputs_raise_clear_errors():
    assert_rejects_bad_nhwc(NonLocal, bad_rank_shape=(2, 8, 8, 8, 3),
                            unknown_channels_shape=(None, 8, 8, None))
    with pytest.raises(ValueError, match="inter_channels"):
        NonLocal(inter_channels=0)
