"""Tests for keras_gald.layers.psp (PSP, adaptive_average_pool2d) and its converter."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

from keras_gald.convert.official_psp_aspp import load_official_psp  # noqa: E402
from keras_gald.convert.torch_weights import StateDict  # noqa: E402
from keras_gald.layers.psp import PSP, adaptive_average_pool2d  # noqa: E402
from keras_gald.ops.resize import resize_bilinear  # noqa: E402
from tests.conftest import OfficialFixture  # noqa: E402
from tests.harness import assert_close_relative  # noqa: E402
from tests.layers._helpers import (  # noqa: E402
    assert_cases_close, assert_gradients, assert_rejects_bad_nhwc, functional_model,
    global_policy, load_fixture_into,
    projected_gradients, random_input, randomize_batch_norms
)

FIXTURE = "ga_PSPModule_PSPNet"


# --------------------------------------------------------------------------- helpers
def torch_adaptive_avg_pool_reference(x, out_h, out_w):
    """NumPy re-statement of PyTorch's adaptive_avg_pool2d (NHWC, float64)."""
    n, h, w, c = x.shape
    out = np.zeros((n, out_h, out_w, c), np.float64)
    for i in range(out_h):
        h0, h1 = (i * h) // out_h, -((-(i + 1) * h) // out_h)  # floor, ceil
        for j in range(out_w):
            w0, w1 = (j * w) // out_w, -((-(j + 1) * w) // out_w)
            out[:, i, j] = x[:, h0:h1, w0:w1].astype(np.float64).mean(axis=(1, 2))
    return out


def loaded_fixture_psp(**kwargs):
    layer = PSP(filters=16, bins=(1, 2, 3, 6), **kwargs)
    return layer, load_fixture_into(FIXTURE, layer, load_official_psp)


@pytest.fixture
def mixed_bfloat16():
    with global_policy("mixed_bfloat16"):
        yield


# --------------------------------------------------------------- adaptive pooling
def test_reference_pool_hand_values():
    # H = 5, 3 bins: PyTorch's bins are rows [0, 2), [1, 4), [3, 5) (overlapping).
    x = np.arange(5, dtype=np.float32).reshape(1, 5, 1, 1)
    np.testing.assert_allclose(
        torch_adaptive_avg_pool_reference(x, 3, 1)[0, :, 0, 0], [0.5, 2.0, 3.5]
    )
    np.testing.assert_allclose(adaptive_average_pool2d(x, (3, 1))[0, :, 0, 0], [0.5, 2.0, 3.5])


@pytest.mark.parametrize("size", [(33, 47), (21, 29), (7, 5), (2, 3), (1, 1)])
@pytest.mark.parametrize("bins", [1, 2, 3, 6, (2, 6)])
def test_adaptive_pool_matches_pytorch_reference(size, bins):
    x = random_input((2, *size, 3), seed=size[0] * 100 + size[1])
    bh, bw = (bins, bins) if isinstance(bins, int) else bins
    actual = adaptive_average_pool2d(tf.constant(x), bins)
    assert actual.shape == (2, bh, bw, 3)
    np.testing.assert_allclose(
        actual.numpy(), torch_adaptive_avg_pool_reference(x, bh, bw), rtol=1e-5, atol=1e-6
    )


def test_adaptive_pool_dynamic_shape_graph():
    @tf.function(input_signature=[tf.TensorSpec([None, None, None, 3], tf.float32)])
    def pool6(x):
        return adaptive_average_pool2d(x, 6)

    for size in [(33, 47), (13, 8), (4, 4)]:
        x = random_input((1, *size, 3), seed=size[0])
        np.testing.assert_allclose(
            pool6(x).numpy(), torch_adaptive_avg_pool_reference(x, 6, 6), rtol=1e-5, atol=1e-6
        )


def test_adaptive_pool_keeps_dtype_and_rejects_zero_bins():
    x = tf.ones((1, 5, 5, 2), tf.bfloat16)
    assert adaptive_average_pool2d(x, 3).dtype == tf.bfloat16
    with pytest.raises(ValueError, match="positive"):
        adaptive_average_pool2d(x, 0)


# -------------------------------------------------------------- fixture parity
@pytest.mark.jax
def test_fixture_parity_every_case():
    layer, fixture = loaded_fixture_psp()
    assert len(fixture.cases) == 2
    assert_cases_close(lambda x: layer(x, training=False), fixture.cases, rtol=1e-4)


def test_fixture_parity_dynamic_functional_model():
    layer, fixture = loaded_fixture_psp()
    model = functional_model(layer, 64)
    assert_cases_close(lambda x: model.predict(x, verbose=0), fixture.cases, rtol=1e-4)


def test_fixture_concat_order_matters():
    # The authors concatenate [stages..., input]; input-first gives other numbers.
    layer, fixture = loaded_fixture_psp()
    x, expected = fixture.cases[1]
    size = (x.shape[1], x.shape[2])
    priors = [tf.constant(x)]
    for b, conv, bn in zip(layer.bins, layer.stage_convs, layer.stage_bns):
        y = bn(conv(adaptive_average_pool2d(tf.constant(x), b)), training=False)
        priors.append(resize_bilinear(y, size, True))
    y = layer.bottleneck_conv(tf.concat(priors, -1))
    y = tf.nn.relu(layer.bottleneck_bn(y, training=False)).numpy()
    assert np.abs(y - expected).max() > 1e-2 * np.abs(expected).max()


def test_converter_builds_unbuilt_layer_and_accepts_prefix():
    fixture = OfficialFixture(FIXTURE)
    prefixed = {f"head.psp.{k}": v for k, v in fixture.state_dict.items()}
    prefixed["head.other.weight"] = np.zeros(3, np.float32)
    layer = PSP(filters=16)
    assert not layer.built
    state_dict = load_official_psp(layer, prefixed, prefix="head.psp")
    assert layer.built
    assert state_dict.unused() == ["head.other.weight"]
    x, expected = fixture.cases[0]
    assert_close_relative(layer(x, training=False), expected, rtol=1e-4)


def test_converter_rejects_mismatched_configuration():
    fixture = OfficialFixture(FIXTURE)
    with pytest.raises(ValueError, match="bottleneck.0.weight"):
        load_official_psp(PSP(filters=16, bins=(1, 2, 3)), StateDict(fixture.state_dict))
    extra = dict(fixture.state_dict, **{"stages.4.1.weight": np.zeros((16, 64, 1, 1))})
    with pytest.raises(ValueError, match=r"not used.*stages\.4\.1\.weight"):
        load_official_psp(PSP(filters=16), StateDict(extra))
    with pytest.raises(ValueError, match="shape mismatch"):
        load_official_psp(PSP(filters=8), StateDict(fixture.state_dict))
    with pytest.raises(KeyError, match="stages.4.1.weight"):
        load_official_psp(PSP(filters=16, bins=(1, 2, 3, 6, 8)), StateDict(fixture.state_dict))
    with pytest.raises(TypeError, match="PSP"):
        load_official_psp(keras.layers.Dense(3), StateDict(fixture.state_dict))


# ------------------------------------------------------------------- shapes
def test_output_shape_odd_size():
    layer = PSP(filters=8)
    y = layer(random_input((2, 33, 47, 5)), training=False)
    assert tuple(y.shape) == (2, 33, 47, 8)
    assert layer.compute_output_shape((2, 33, 47, 5)) == (2, 33, 47, 8)
    assert layer.compute_output_shape((None, None, None, 5)) == (None, None, None, 8)


def test_dynamic_shape_functional_model():
    layer = PSP(filters=8, bins=(1, 2, 3, 6))
    model = functional_model(layer, 5, out_channels=8)
    for size in [(33, 47), (20, 13), (6, 6)]:
        x = random_input((1, *size, 5), seed=size[0])
        y = model.predict(x, verbose=0)
        assert y.shape == (1, *size, 8)
        np.testing.assert_allclose(y, layer(x, training=False).numpy(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("size", [(1, 1), (2, 3), (5, 4)])
def test_inputs_smaller_than_largest_bin_work(size):
    # Decision: no error; PyTorch's adaptive bins overlap, every bin is non-empty.
    layer = PSP(filters=4, bins=(1, 2, 3, 6))
    layer.build((None, None, None, 3))
    randomize_batch_norms(layer)
    y = layer(random_input((2, *size, 3)), training=False).numpy()
    assert y.shape == (2, *size, 4)
    assert np.isfinite(y).all()


def test_branch_activation_and_half_pixel_variant():
    layer = PSP(filters=6, bins=(1, 3), branch_filters=4, branch_activation="relu",
                align_corners=False, dropout=0.0)
    layer.build((None, None, None, 5))
    randomize_batch_norms(layer, seed=3)
    x = tf.constant(random_input((2, 11, 9, 5), seed=4))
    assert layer.stage_convs[0].filters == 4
    assert layer.bottleneck_conv.kernel.shape == (3, 3, 2 * 4 + 5, 6)
    priors = []
    for b, conv, bn in zip(layer.bins, layer.stage_convs, layer.stage_bns):
        y = tf.nn.relu(bn(conv(adaptive_average_pool2d(x, b)), training=False))
        priors.append(resize_bilinear(y, (11, 9), False))
    expected = layer.bottleneck_conv(tf.concat(priors + [x], -1))
    expected = tf.nn.relu(layer.bottleneck_bn(expected, training=False))
    np.testing.assert_allclose(layer(x, training=False), expected, rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------- serialization


# ------------------------------------------------------------------ training
def test_gradients_reach_every_trainable_weight():
    layer = PSP(filters=6, bins=(1, 2, 3, 6))
    x = random_input((2, 13, 11, 4))
    grads = projected_gradients(layer, x, lambda y: random_input(y.shape, seed=1))
    # per stage and for the bottleneck: conv kernel, BN gamma, BN beta
    assert len(layer.trainable_weights) == 3 * (len(layer.bins) + 1)
    assert_gradients(layer.trainable_weights, grads)


def test_mixed_bfloat16(mixed_bfloat16):
    layer, fixture = loaded_fixture_psp()
    assert layer.compute_dtype == "bfloat16"
    assert layer.stage_convs[0].kernel.dtype == "float32"
    for x, expected in fixture.cases:
        y = layer(x, training=False)
        assert y.dtype == tf.bfloat16
        assert_close_relative(tf.cast(y, tf.float32), expected, rtol=2e-2)
    model = functional_model(layer, 64)
    assert model.predict(fixture.cases[1][0], verbose=0).shape == (1, 21, 29, 16)
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(tf.cast(layer(fixture.cases[1][0], training=True), tf.float32))
    assert all(g is not None for g in tape.gradient(loss, layer.trainable_weights))


# -------------------------------------------------------------------- errors
def test_bad_inputs_raise_clear_errors():
    assert_rejects_bad_nhwc(lambda: PSP(filters=4), bad_rank_shape=(2, 8, 8, 8, 3),
                            unknown_channels_shape=(None, None, None, None))
    with pytest.raises(ValueError, match="bins"):
        PSP(bins=(1, 0))
    with pytest.raises(ValueError, match="bins"):
        PSP(bins=())
    with pytest.raises(ValueError, match="filters"):
        PSP(filters=0)
    with pytest.raises(ValueError, match="dropout"):
        PSP(dropout=1.0)
