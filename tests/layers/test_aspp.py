"""Tests for keras_gald.layers.aspp.ASPP and its converter."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

from keras_gald.convert.official_psp_aspp import load_official_aspp  # noqa: E402
from keras_gald.convert.torch_weights import StateDict  # noqa: E402
from keras_gald.layers.aspp import ASPP  # noqa: E402
from keras_gald.layers.conv import Conv2D  # noqa: E402
from tests.conftest import OfficialFixture  # noqa: E402
from tests.harness import assert_close_relative  # noqa: E402
from tests.layers._helpers import (  # noqa: E402
    assert_cases_close, assert_clone_matches, assert_gradients, assert_rejects_bad_nhwc,
    functional_model, global_policy, load_fixture_into,
    projected_gradients, random_input, randomize_batch_norms
)

FIXTURE = "ga_ASPPModule_operators"


# --------------------------------------------------------------------------- helpers
def loaded_fixture_aspp(**kwargs):
    layer = ASPP(filters=64, branch_filters=32, dilation_rates=(12, 24, 36), **kwargs)
    return layer, load_fixture_into(FIXTURE, layer, load_official_aspp)


def to_numpy(value):
    """A variable or tensor of any backend as a NumPy array."""
    return keras.ops.convert_to_numpy(value)


def numpy_bn(x, bn):
    return (x - to_numpy(bn.moving_mean)) / np.sqrt(to_numpy(bn.moving_variance) + bn.epsilon) \
        * to_numpy(bn.gamma) + to_numpy(bn.beta)


def numpy_conv_same(x, kernel, rate):
    """Stride-1 'same' (PyTorch padding = rate * (k - 1) / 2) dilated conv, NHWC/HWIO."""
    kh, kw = kernel.shape[:2]
    ph, pw = rate * (kh - 1) // 2, rate * (kw - 1) // 2
    n, h, w, _ = x.shape
    xp = np.pad(x.astype(np.float64), ((0, 0), (ph, ph), (pw, pw), (0, 0)))
    out = np.zeros((n, h, w, kernel.shape[3]))
    for i in range(kh):
        for j in range(kw):
            patch = xp[:, i * rate:i * rate + h, j * rate:j * rate + w]
            out += patch @ kernel[i, j].astype(np.float64)
    return out


def numpy_aspp_reference(layer, x):
    """Inference-mode ASPP written from the authors' description, in NumPy."""
    relu = lambda v: np.maximum(v, 0.0)  # noqa: E731
    n, h, w, _ = x.shape
    pooled = x.astype(np.float64).mean(axis=(1, 2), keepdims=True)
    pooled = relu(numpy_bn(pooled @ to_numpy(layer.conv1_conv.kernel)[0, 0], layer.conv1_bn))
    branches = [np.broadcast_to(pooled, (n, h, w, pooled.shape[-1]))]
    branches.append(relu(numpy_bn(x @ to_numpy(layer.conv2_conv.kernel)[0, 0], layer.conv2_bn)))
    for rate, conv, bn in zip(layer.dilation_rates, layer.atrous_convs, layer.atrous_bns):
        branches.append(relu(numpy_bn(numpy_conv_same(x, to_numpy(conv.kernel), rate), bn)))
    y = np.concatenate(branches, -1) @ to_numpy(layer.bottleneck_conv.kernel)[0, 0]
    return relu(numpy_bn(y, layer.bottleneck_bn))


@pytest.fixture
def mixed_bfloat16():
    with global_policy("mixed_bfloat16"):
        yield


# -------------------------------------------------------------- fixture parity
@pytest.mark.jax
def test_fixture_parity_every_case():
    layer, fixture = loaded_fixture_aspp()
    assert len(fixture.cases) == 2
    assert_cases_close(lambda x: layer(x, training=False), fixture.cases, rtol=1e-4)


def test_fixture_parity_dynamic_functional_model():
    layer, fixture = loaded_fixture_aspp()
    model = functional_model(layer, 64)
    assert_cases_close(lambda x: model.predict(x, verbose=0), fixture.cases, rtol=1e-4)


def test_numpy_reference_reproduces_fixture():
    # Validates the NumPy reference used below for other rates / sizes.
    layer, fixture = loaded_fixture_aspp()
    x, expected = fixture.cases[1]
    assert_close_relative(numpy_aspp_reference(layer, x), expected, rtol=1e-4)


@pytest.mark.parametrize("rates", [(6, 12, 18), (1, 2), (2, 3, 5, 40)])
def test_other_rates_match_numpy_reference(rates):
    layer = ASPP(filters=6, branch_filters=4, dilation_rates=rates)
    layer.build((None, None, None, 3))
    randomize_batch_norms(layer, seed=len(rates))
    x = random_input((2, 13, 9, 3), seed=7)
    np.testing.assert_allclose(
        layer(x, training=False).numpy(), numpy_aspp_reference(layer, x), rtol=1e-4, atol=1e-5
    )
    assert all(isinstance(c, Conv2D) for c in layer.atrous_convs)
    assert [c.dilation_rate for c in layer.atrous_convs] == [(r, r) for r in rates]


@pytest.mark.jax
def test_forward_matches_numpy_reference_on_every_backend():
    keras.utils.set_random_seed(2)
    layer = ASPP(filters=6, branch_filters=4, dilation_rates=(1, 2, 3))
    layer.build((None, None, None, 3))
    randomize_batch_norms(layer, seed=3)
    x = random_input((2, 7, 5, 3), seed=4)
    np.testing.assert_allclose(
        to_numpy(layer(x, training=False)), numpy_aspp_reference(layer, x), rtol=1e-4, atol=1e-5
    )


def test_converter_builds_unbuilt_layer_and_accepts_prefix():
    fixture = OfficialFixture(FIXTURE)
    prefixed = {f"head.aspp.{k}": v for k, v in fixture.state_dict.items()}
    prefixed["head.cls.weight"] = np.zeros(3, np.float32)
    layer = ASPP(filters=64, branch_filters=32)
    assert not layer.built
    state_dict = load_official_aspp(layer, prefixed, prefix="head.aspp.")
    assert layer.built
    assert state_dict.unused() == ["head.cls.weight"]
    x, expected = fixture.cases[0]
    assert_close_relative(layer(x, training=False), expected, rtol=1e-4)


def test_converter_rejects_mismatched_configuration():
    fixture = OfficialFixture(FIXTURE)
    with pytest.raises(ValueError, match="shape mismatch"):
        load_official_aspp(ASPP(filters=64), StateDict(fixture.state_dict))  # inner 64 != 32
    with pytest.raises(ValueError, match="shape mismatch"):
        load_official_aspp(ASPP(filters=64, branch_filters=32, dilation_rates=(12, 24)),
                           StateDict(fixture.state_dict))
    extra = dict(fixture.state_dict, **{"conv6.0.weight": np.zeros((32, 64, 3, 3))})
    with pytest.raises(ValueError, match=r"not used.*conv6\.0\.weight"):
        load_official_aspp(ASPP(filters=64, branch_filters=32), StateDict(extra))
    with pytest.raises(KeyError, match="conv6.0.weight"):
        load_official_aspp(ASPP(filters=64, branch_filters=32, dilation_rates=(1, 2, 3, 4)),
                           StateDict(fixture.state_dict))
    with pytest.raises(TypeError, match="ASPP"):
        load_official_aspp(keras.layers.Dense(3), StateDict(fixture.state_dict))


# ------------------------------------------------------------------- shapes
def test_output_shape_odd_size():
    layer = ASPP(filters=8, branch_filters=4)
    y = layer(random_input((2, 33, 47, 5)), training=False)
    assert tuple(y.shape) == (2, 33, 47, 8)
    assert layer.compute_output_shape((2, 33, 47, 5)) == (2, 33, 47, 8)
    assert layer.bottleneck_conv.kernel.shape == (1, 1, 5 * 4, 8)


def test_dynamic_shape_functional_model():
    layer = ASPP(filters=8, dilation_rates=(6, 12, 18))
    model = functional_model(layer, 5, out_channels=8)
    for size in [(33, 47), (20, 13), (1, 1)]:
        x = random_input((1, *size, 5), seed=size[0])
        y = model.predict(x, verbose=0)
        assert y.shape == (1, *size, 8)
        np.testing.assert_allclose(y, numpy_aspp_reference(layer, x), rtol=1e-4, atol=1e-5)


# ------------------------------------------------------------- serialization
def test_get_config_from_config_round_trip():
    layer = ASPP(filters=8, branch_filters=4, dilation_rates=(6, 12, 18), dropout=0.3,
                 align_corners=False, name="aspp_rt")
    assert layer.get_config()["dilation_rates"] == [6, 12, 18]
    assert_clone_matches(layer, random_input((2, 9, 10, 5)), build_shape=(None, None, None, 5),
                         training=False)


# ------------------------------------------------------------------ training
def gradients(layer, x, jit_compile):
    """d(random projection of the output)/d(trainable weights), training=True."""
    projection = lambda y: tf.random.stateless_normal(tf.shape(y), seed=(1, 2))  # noqa: E731
    return projected_gradients(layer, x, projection, training=True, jit_compile=jit_compile)


def test_gradients_reach_every_trainable_weight():
    # XLA, as `model.fit` uses by default (jit_compile="auto").
    layer = ASPP(filters=6, branch_filters=4, dilation_rates=(1, 2, 3))
    grads = gradients(layer, random_input((2, 9, 11, 4)), jit_compile=True)
    # 6 (conv, BN) pairs: conv kernel, BN gamma, BN beta each
    assert len(layer.trainable_weights) == 3 * 6
    assert_gradients(layer.trainable_weights, grads)


def test_training_dropout_is_channelwise():
    layer = ASPP(filters=32, branch_filters=4, dilation_rates=(1, 2, 3), dropout=0.5)
    x = tf.constant(random_input((2, 7, 7, 4)))
    y = layer(x, training=True).numpy()
    dropped = np.all(y == 0.0, axis=(1, 2))  # (N, C) whole channels zeroed
    assert dropped.any()
    inference = layer(x, training=False).numpy()
    np.testing.assert_array_equal(inference, layer(x, training=False).numpy())


def test_mixed_bfloat16(mixed_bfloat16):
    layer, fixture = loaded_fixture_aspp()
    assert layer.compute_dtype == "bfloat16"
    assert layer.atrous_convs[0].kernel.dtype == "float32"
    for x, expected in fixture.cases:
        y = layer(x, training=False)
        assert y.dtype == tf.bfloat16
        assert_close_relative(tf.cast(y, tf.float32), expected, rtol=2e-2)
    model = functional_model(layer, 64)
    assert model.predict(fixture.cases[1][0], verbose=0).shape == (1, 21, 29, 64)
    grads = gradients(layer, fixture.cases[0][0], jit_compile=True)
    assert_gradients(layer.trainable_weights, grads, nonzero=False, finite=True, dtype=tf.float32)


# -------------------------------------------------------------------- errors
def test_bad_inputs_raise_clear_errors():
    assert_rejects_bad_nhwc(lambda: ASPP(filters=4), bad_rank_shape=(8, 3),
                            unknown_channels_shape=(None, 8, 8, None))
    with pytest.raises(ValueError, match="dilation_rates"):
        ASPP(dilation_rates=(12, 0, 36))
    with pytest.raises(ValueError, match="dilation_rates"):
        ASPP(dilation_rates=())
    with pytest.raises(ValueError, match="filters"):
        ASPP(filters=-1)
    with pytest.raises(ValueError, match="branch_filters"):
        ASPP(branch_filters=0)
    with pytest.raises(ValueError, match="dropout"):
        ASPP(dropout=-0.1)
