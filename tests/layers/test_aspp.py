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
from keras_gald.layers.conv import DilatedConv2D  # noqa: E402
from tests.conftest import OfficialFixture, assert_close_relative  # noqa: E402

FIXTURE = "ga_ASPPModule_operators"


# --------------------------------------------------------------------------- helpers
def loaded_fixture_aspp(**kwargs):
    fixture = OfficialFixture(FIXTURE)
    layer = ASPP(filters=64, branch_filters=32, dilation_rates=(12, 24, 36), **kwargs)
    state_dict = load_official_aspp(layer, StateDict(fixture.state_dict))
    assert state_dict.unused() == []
    return layer, fixture


def random_input(shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def numpy_bn(x, bn):
    return (x - bn.moving_mean.numpy()) / np.sqrt(bn.moving_variance.numpy() + bn.epsilon) \
        * bn.gamma.numpy() + bn.beta.numpy()


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
    pooled = relu(numpy_bn(pooled @ layer.conv1_conv.kernel.numpy()[0, 0], layer.conv1_bn))
    branches = [np.broadcast_to(pooled, (n, h, w, pooled.shape[-1]))]
    branches.append(relu(numpy_bn(x @ layer.conv2_conv.kernel.numpy()[0, 0], layer.conv2_bn)))
    for rate, conv, bn in zip(layer.dilation_rates, layer.atrous_convs, layer.atrous_bns):
        branches.append(relu(numpy_bn(numpy_conv_same(x, conv.kernel.numpy(), rate), bn)))
    y = np.concatenate(branches, -1) @ layer.bottleneck_conv.kernel.numpy()[0, 0]
    return relu(numpy_bn(y, layer.bottleneck_bn))


def randomise(layer, seed=0):
    rng = np.random.default_rng(seed)
    for sub in layer._flatten_layers(include_self=False):
        if isinstance(sub, keras.layers.BatchNormalization):
            c = sub.gamma.shape[0]
            sub.gamma.assign(rng.uniform(0.5, 1.5, c).astype(np.float32))
            sub.beta.assign(rng.normal(0, 0.1, c).astype(np.float32))
            sub.moving_mean.assign(rng.normal(0, 0.1, c).astype(np.float32))
            sub.moving_variance.assign(rng.uniform(0.5, 1.5, c).astype(np.float32))


@pytest.fixture
def mixed_bfloat16():
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy("float32")


# -------------------------------------------------------------- fixture parity
def test_fixture_parity_every_case():
    layer, fixture = loaded_fixture_aspp()
    assert len(fixture.cases) == 2
    for x, expected in fixture.cases:
        assert_close_relative(layer(x, training=False), expected, rtol=1e-4)


def test_fixture_parity_dynamic_functional_model():
    layer, fixture = loaded_fixture_aspp()
    inputs = keras.Input((None, None, 64))
    model = keras.Model(inputs, layer(inputs))
    for x, expected in fixture.cases:
        assert_close_relative(model.predict(x, verbose=0), expected, rtol=1e-4)


def test_numpy_reference_reproduces_fixture():
    # Validates the NumPy reference used below for other rates / sizes.
    layer, fixture = loaded_fixture_aspp()
    x, expected = fixture.cases[1]
    assert_close_relative(numpy_aspp_reference(layer, x), expected, rtol=1e-4)


@pytest.mark.parametrize("rates", [(6, 12, 18), (1, 2), (2, 3, 5, 40)])
def test_other_rates_match_numpy_reference(rates):
    layer = ASPP(filters=6, branch_filters=4, dilation_rates=rates)
    layer.build((None, None, None, 3))
    randomise(layer, seed=len(rates))
    x = random_input((2, 13, 9, 3), seed=7)
    np.testing.assert_allclose(
        layer(x, training=False).numpy(), numpy_aspp_reference(layer, x), rtol=1e-4, atol=1e-5
    )
    assert all(isinstance(c, DilatedConv2D) for c in layer.atrous_convs)
    assert [c.dilation_rate for c in layer.atrous_convs] == [(r, r) for r in rates]


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
    inputs = keras.Input((None, None, 5))
    layer = ASPP(filters=8, dilation_rates=(6, 12, 18))
    outputs = layer(inputs)
    assert tuple(outputs.shape) == (None, None, None, 8)
    model = keras.Model(inputs, outputs)
    for size in [(33, 47), (20, 13), (1, 1)]:
        x = random_input((1, *size, 5), seed=size[0])
        y = model.predict(x, verbose=0)
        assert y.shape == (1, *size, 8)
        np.testing.assert_allclose(y, numpy_aspp_reference(layer, x), rtol=1e-4, atol=1e-5)


# ------------------------------------------------------------- serialization
def test_get_config_from_config_round_trip():
    layer = ASPP(filters=8, branch_filters=4, dilation_rates=(6, 12, 18), dropout=0.3,
                 align_corners=False, name="aspp_rt")
    x = random_input((2, 9, 10, 5))
    y = layer(x, training=False)
    config = layer.get_config()
    assert config["dilation_rates"] == [6, 12, 18]
    clone = ASPP.from_config(config)
    assert clone.get_config() == config
    clone.build((None, None, None, 5))
    clone.set_weights(layer.get_weights())
    np.testing.assert_array_equal(clone(x, training=False), y)


def test_keras_save_load_round_trip(tmp_path):
    layer, fixture = loaded_fixture_aspp()
    inputs = keras.Input((None, None, 64))
    model = keras.Model(inputs, layer(inputs))
    path = tmp_path / "aspp.keras"
    model.save(path)
    restored = keras.saving.load_model(path)
    restored_layer = restored.layers[-1]
    assert isinstance(restored_layer, ASPP)
    assert restored_layer.get_config() == layer.get_config()
    for x, _ in fixture.cases:
        np.testing.assert_array_equal(
            restored.predict(x, verbose=0), model.predict(x, verbose=0)
        )


# ------------------------------------------------------------------ training
def gradients(layer, x, jit_compile):
    """d(random projection of the output)/d(trainable weights), training=True."""

    def step(x):
        with tf.GradientTape() as tape:
            y = tf.cast(layer(x, training=True), tf.float32)
            weights = tf.random.stateless_normal(tf.shape(y), seed=(1, 2))
            loss = tf.reduce_sum(y * weights)
        return tape.gradient(loss, layer.trainable_weights)

    if jit_compile:
        step = tf.function(step, jit_compile=True)
    return step(tf.constant(x))


def test_gradients_reach_every_trainable_weight():
    # XLA, as `model.fit` uses by default (jit_compile="auto").
    layer = ASPP(filters=6, branch_filters=4, dilation_rates=(1, 2, 3))
    grads = gradients(layer, random_input((2, 9, 11, 4)), jit_compile=True)
    # 6 (conv, BN) pairs: conv kernel, BN gamma, BN beta each
    assert len(layer.trainable_weights) == 3 * 6
    for weight, grad in zip(layer.trainable_weights, grads):
        assert grad is not None, weight.path
        assert float(tf.reduce_max(tf.abs(grad))) > 0.0, weight.path


def test_gradients_without_xla():
    layer = ASPP(filters=6, branch_filters=4, dilation_rates=(1, 2, 3))
    grads = gradients(layer, random_input((2, 9, 11, 4)), jit_compile=False)
    for weight, grad in zip(layer.trainable_weights, grads):
        assert grad is not None, weight.path
        assert float(tf.reduce_max(tf.abs(grad))) > 0.0, weight.path


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
    inputs = keras.Input((None, None, 64))
    model = keras.Model(inputs, layer(inputs))
    assert model.predict(fixture.cases[1][0], verbose=0).shape == (1, 21, 29, 64)
    grads = gradients(layer, fixture.cases[0][0], jit_compile=True)
    for weight, grad in zip(layer.trainable_weights, grads):
        assert grad is not None and grad.dtype == tf.float32, weight.path
        assert np.isfinite(grad.numpy()).all(), weight.path


# -------------------------------------------------------------------- errors
def test_bad_inputs_raise_clear_errors():
    with pytest.raises(ValueError, match="4D NHWC"):
        ASPP(filters=4)(tf.zeros((2, 8, 3)))
    with pytest.raises(ValueError, match="4D NHWC"):
        ASPP(filters=4).compute_output_shape((8, 3))
    with pytest.raises(ValueError, match="channel dimension"):
        ASPP(filters=4).build((None, 8, 8, None))
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
