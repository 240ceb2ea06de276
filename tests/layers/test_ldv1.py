import numpy as np
import pytest
import keras
import tensorflow as tf

from keras_gald.convert.official_cgnl_ldv1 import load_official_ldv1
from keras_gald.convert.torch_weights import StateDict
from keras_gald.layers.ldv1 import AUTHORS_LDV1_OPTIONS, LDv1, min_valid_size
from tests.conftest import OfficialFixture
from tests.harness import assert_close_relative
from tests.layers._helpers import (
    assert_cases_close, assert_gradients, assert_keras_round_trip, bfloat16_twin,
    config_round_trip, functional_model, global_policy, load_fixture_into, projected_gradients,
    random_input_legacy, randomize_weights
)


def _resize_axis(x, axis, out, align_corners):
    """PyTorch `F.interpolate(mode="bilinear")` along one axis, float64."""
    size = x.shape[axis]
    if align_corners:
        src = np.arange(out) * ((size - 1) / (out - 1) if out > 1 else 0.0)
    else:
        src = np.maximum((np.arange(out) + 0.5) * size / out - 0.5, 0.0)
    i0 = np.minimum(np.floor(src).astype(int), size - 1)
    i1 = np.minimum(i0 + 1, size - 1)
    frac = src - i0
    shape = [1] * x.ndim
    shape[axis] = out
    frac = frac.reshape(shape)
    return np.take(x, i0, axis=axis) * (1 - frac) + np.take(x, i1, axis=axis) * frac


def numpy_ldv1_mask(layer, x, pad):
    """Float64 NumPy reference of the LDv1 mask with PyTorch padding `pad`."""
    y = x.astype(np.float64)
    n_convs = len(layer.dconv_convs)
    value = keras.ops.convert_to_numpy
    for i, (conv, bn) in enumerate(zip(layer.dconv_convs, layer.dconv_bns)):
        k = value(conv.kernel)[:, :, :, 0].astype(np.float64)
        y = np.pad(y, [(0, 0), (pad, pad), (pad, pad), (0, 0)])
        h = (y.shape[1] - 3) // 2 + 1
        w = (y.shape[2] - 3) // 2 + 1
        out = np.zeros((y.shape[0], h, w, y.shape[3]))
        for a in range(3):
            for b in range(3):
                out += y[:, a:a + 2 * h:2, b:b + 2 * w:2, :] * k[a, b]
        out += value(conv.bias)
        out = (out - value(bn.moving_mean)) / np.sqrt(value(bn.moving_variance) + 1e-5)
        y = out * value(bn.gamma) + value(bn.beta)
        if i < n_convs - 1 or layer.mask_activation == "relu_sigmoid":
            y = np.maximum(y, 0)
    y = _resize_axis(y, 1, x.shape[1], layer.align_corners)
    y = _resize_axis(y, 2, x.shape[2], layer.align_corners)
    return 1.0 / (1.0 + np.exp(-y))


@pytest.fixture
def bf16_policy():
    with global_policy("mixed_bfloat16"):
        yield


def _authors_layer():
    layer = LDv1(**AUTHORS_LDV1_OPTIONS)
    return load_fixture_into("ldv1_LocalAttenModule", layer, load_official_ldv1), layer


# ----------------------------------------------------------------- parity
@pytest.mark.jax
def test_fixture_parity_every_case():
    fixture, layer = _authors_layer()
    assert len(fixture.cases) == 3
    assert_cases_close(lambda x: keras.ops.convert_to_numpy(layer(x)), fixture.cases, rtol=1e-4)


def test_authors_options_match_numpy_reference():
    fixture, layer = _authors_layer()
    x = fixture.cases[1][0]
    mask = layer.compute_mask_map(x).numpy()
    np.testing.assert_allclose(mask, numpy_ldv1_mask(layer, x, pad=0), atol=1e-5)


def test_converter_rejects_mismatched_depth():
    fixture = OfficialFixture("ldv1_LocalAttenModule")
    with pytest.raises(KeyError, match="dconv4"):  # rate 16 = four blocks
        load_official_ldv1(LDv1(downsample_rate=16), StateDict(fixture.state_dict))
    with pytest.raises(ValueError, match="dconv3"):
        load_official_ldv1(LDv1(downsample_rate=4), StateDict(fixture.state_dict))


# ------------------------------------------------- options and semantics
@pytest.mark.parametrize("align_corners", [False, True])
@pytest.mark.parametrize("shape", [(1, 9, 13, 8), (2, 10, 14, 8), (1, 33, 47, 8)])
def test_symmetric_padding_is_pytorch_padding_1(shape, align_corners):
    layer = LDv1(align_corners=align_corners)
    x = random_input_legacy(shape)
    layer.build(x.shape)
    randomize_weights(layer, seed=2)
    mask = layer.compute_mask_map(x).numpy()
    np.testing.assert_allclose(mask, numpy_ldv1_mask(layer, x, pad=1), atol=1e-5)
    out = layer(x).numpy()
    assert out.shape == shape
    np.testing.assert_allclose(out, x * mask + x, rtol=1e-5, atol=1e-5)


@pytest.mark.jax
@pytest.mark.parametrize(
    "options, shape, pad",
    [({}, (1, 9, 13, 8), 1), (AUTHORS_LDV1_OPTIONS, (2, 17, 19, 8), 0)],
)
def test_forward_matches_numpy_on_every_backend(options, shape, pad):
    """On TF and on JAX: the paper's defaults (symmetric padding, sigmoid,
    half-pixel upsampling) and the authors' options (valid, ReLU + sigmoid,
    align_corners), mask and output, against the float64 NumPy reference."""
    layer = LDv1(**options)
    x = random_input_legacy(shape)
    layer.build(x.shape)
    randomize_weights(layer, seed=2)
    mask = keras.ops.convert_to_numpy(layer.compute_mask_map(x))
    np.testing.assert_allclose(mask, numpy_ldv1_mask(layer, x, pad=pad), atol=1e-5)
    out = keras.ops.convert_to_numpy(layer(x))
    assert out.shape == shape
    np.testing.assert_allclose(out, x * mask + x, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="at least 15x15"):
        LDv1(padding="valid")(np.zeros((1, 9, 13, 4), "float32"))


def test_paper_default_vs_authors_mask_range():
    fixture = OfficialFixture("ldv1_LocalAttenModule")
    x = fixture.cases[0][0]
    _, authors = _authors_layer()
    paper = LDv1(padding="valid", align_corners=True)  # only the activation differs
    load_official_ldv1(paper, StateDict(fixture.state_dict))
    m_authors = authors.compute_mask_map(x).numpy()
    m_paper = paper.compute_mask_map(x).numpy()
    assert m_authors.min() >= 0.5 and m_authors.max() < 1.0
    assert m_paper.min() < 0.5 and m_paper.min() > 0.0
    # The ReLU acts before the upsampling, so the masks differ beyond a clip.
    assert np.mean(m_paper < 0.5) > 0.1
    assert np.abs(m_authors - m_paper).max() > 0.1
    np.testing.assert_allclose(m_paper, numpy_ldv1_mask(paper, x, pad=0), atol=1e-5)
    # Defaults are the paper's and the library's conventions.
    default = LDv1()
    assert (default.padding, default.mask_activation, default.align_corners) == (
        "symmetric", "sigmoid", False)
    assert default.downsample_rate == 8 and len(default.dconv_convs) == 3


def test_valid_padding_too_small_input_raises_clearly():
    layer = LDv1(padding="valid")
    with pytest.raises(ValueError, match=r"at least 15x15.*got 9x13"):
        layer(np.zeros((1, 9, 13, 4), "float32"))
    with pytest.raises(ValueError, match="at least 15x15"):
        LDv1(**AUTHORS_LDV1_OPTIONS)(keras.Input((14, None, 4)))
    ok = LDv1(padding="valid")
    assert ok(np.zeros((1, 15, 15, 4), "float32")).shape == (1, 15, 15, 4)
    # Shapes known only at run time: a graph-time assertion with the same text.
    fn = tf.function(
        ok.__call__, input_signature=[tf.TensorSpec((None, None, None, 4), tf.float32)]
    )
    assert fn(tf.zeros((1, 16, 21, 4))).shape == (1, 16, 21, 4)
    with pytest.raises(tf.errors.InvalidArgumentError, match="at least 15x15"):
        fn(tf.zeros((1, 16, 14, 4)))
    # The default symmetric padding accepts any size, down to 1x1.
    for shape in [(1, 9, 13, 4), (1, 1, 1, 4), (1, 2, 5, 4)]:
        assert LDv1()(np.ones(shape, "float32")).shape == shape


@pytest.mark.parametrize("rate,n_convs,minimum", [(2, 1, 3), (4, 2, 7), (8, 3, 15), (16, 4, 31)])
def test_downsample_rate(rate, n_convs, minimum):
    layer = LDv1(downsample_rate=rate, padding="valid")
    assert len(layer.dconv_convs) == n_convs == len(layer.dconv_bns)
    assert layer.min_input_size == minimum == min_valid_size(rate)
    assert layer(np.ones((1, minimum, minimum + 2, 4), "float32")).shape == (1, minimum, minimum + 2, 4)
    with pytest.raises(ValueError, match=f"at least {minimum}x{minimum}"):
        LDv1(downsample_rate=rate, padding="valid")(np.ones((1, minimum - 1, minimum, 4), "float32"))


def test_invalid_options():
    for kwargs in [{"downsample_rate": 6}, {"downsample_rate": 1}, {"padding": "same"},
                   {"mask_activation": "relu"}]:
        with pytest.raises(ValueError):
            LDv1(**kwargs)


def test_dynamic_shape_functional_model():
    layer = LDv1()
    model = functional_model(layer, 8, out_channels=8)
    randomize_weights(layer, seed=3)
    for shape in [(1, 33, 47, 8), (2, 9, 13, 8)]:
        x = random_input_legacy(shape)
        y = model.predict(x, verbose=0)
        mask = numpy_ldv1_mask(layer, x, pad=1)
        np.testing.assert_allclose(y, x * mask + x, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------- serialization
def test_config_and_keras_file_round_trip(tmp_path):
    layer = LDv1(downsample_rate=4, padding="valid", mask_activation="relu_sigmoid",
                 align_corners=True, name="ld")
    clone = config_round_trip(layer)
    assert (clone.downsample_rate, clone.padding, clone.mask_activation, clone.align_corners) == (
        4, "valid", "relu_sigmoid", True)

    model = functional_model(layer, 8)
    randomize_weights(layer, seed=4)
    x = random_input_legacy((1, 11, 17, 8))
    assert_keras_round_trip(model, tmp_path / "ldv1.keras", [x], LDv1, layer_name="ld")


# -------------------------------------------------------------- gradients
@pytest.mark.parametrize("options", [{}, AUTHORS_LDV1_OPTIONS])
def test_gradients_reach_every_trainable_weight(options):
    layer = LDv1(**options)
    x = tf.constant(random_input_legacy((2, 17, 19, 8)))
    layer.build(x.shape)
    randomize_weights(layer, seed=5)
    for w in layer.weights:  # keep the authors' last ReLU mostly active
        if w.path.endswith("beta"):
            w.assign(tf.abs(w) + 0.5)
    r = random_input_legacy(x.shape, seed=6)
    # Inference-mode BN: every weight, conv biases included, has a true gradient.
    grads = projected_gradients(layer, x, r, training=False)
    assert len(layer.trainable_weights) == 3 * 4  # kernel, bias, gamma, beta
    assert_gradients(layer.trainable_weights, grads, finite=True)
    # Training-mode BN: gradients exist and are finite.
    grads = projected_gradients(layer, x, r, training=True)
    assert_gradients(layer.trainable_weights, grads, nonzero=False, finite=True)


# ---------------------------------------------------------- mixed bf16
def test_mixed_bfloat16(bf16_policy):
    x = random_input_legacy((1, 9, 13, 8))
    layer, expected = bfloat16_twin(LDv1, x, seed=7)
    for sub in [*layer.dconv_convs, *layer.dconv_bns]:
        assert sub.dtype_policy.name == "mixed_bfloat16"
    y = layer(x)
    assert y.dtype == tf.bfloat16
    assert layer.compute_mask_map(x).dtype == tf.bfloat16
    assert_close_relative(tf.cast(y, tf.float32).numpy(), expected, rtol=3e-2)

    model = functional_model(layer, 8)
    assert model.predict(x[:, :5, :7], verbose=0).shape == (1, 5, 7, 8)
