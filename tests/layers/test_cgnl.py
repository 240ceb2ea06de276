import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_gald.convert.official_cgnl_ldv1 import load_official_cgnl
from keras_gald.convert.torch_weights import StateDict
from keras_gald.layers.cgnl import CGNL
from tests.conftest import OfficialFixture
from tests.harness import assert_close_relative
from tests.layers._helpers import (
    assert_cases_close, assert_gradients, assert_keras_round_trip, bfloat16_twin,
    config_round_trip, functional_model, global_policy, load_fixture_into, projected_gradients,
    random_input_legacy, randomize_weights
)


def to_numpy(value):
    """A variable or tensor of any backend as a NumPy array."""
    return keras.ops.convert_to_numpy(value)


def numpy_cgnl(x, t_k, p_k, g_k, z_k, gamma, beta, groups, use_scale, eps=1e-5):
    """Float64 NumPy reference of SpatialCGNL in NHWC (kernels in Keras HWIO)."""
    x = x.astype(np.float64)
    n, h, w, channels = x.shape
    t = x @ t_k[0, 0].astype(np.float64)
    p = x @ p_k[0, 0].astype(np.float64)
    g = x @ g_k[0, 0].astype(np.float64)
    planes = t.shape[-1]
    c = planes // groups
    outs = []
    for i in range(groups):
        sl = slice(i * c, (i + 1) * c)
        att = np.sum(p[..., sl] * g[..., sl], axis=(1, 2, 3))  # (N,)
        if use_scale:
            att = att / np.sqrt(c * h * w)
        outs.append(att[:, None, None, None] * t[..., sl])
    y = np.concatenate(outs, axis=-1)
    zc = channels // groups
    z = np.concatenate(
        [y[..., i * c:(i + 1) * c] @ z_k[0, 0][:, i * zc:(i + 1) * zc] for i in range(groups)],
        axis=-1,
    )
    zg = z.reshape(n, h, w, groups, zc)
    mean = zg.mean(axis=(1, 2, 4), keepdims=True)
    var = zg.var(axis=(1, 2, 4), keepdims=True)
    zn = ((zg - mean) / np.sqrt(var + eps)).reshape(n, h, w, channels)
    return zn * gamma + beta + x


def reference_of(layer, x):
    return numpy_cgnl(
        x,
        to_numpy(layer.t.kernel),
        to_numpy(layer.p.kernel),
        to_numpy(layer.g.kernel),
        to_numpy(layer.z.kernel),
        to_numpy(layer.gn.gamma),
        to_numpy(layer.gn.beta),
        layer.groups,
        layer.use_scale,
    )


@pytest.fixture
def bf16_policy():
    with global_policy("mixed_bfloat16"):
        yield


# ----------------------------------------------------------------- parity
@pytest.mark.jax
def test_fixture_parity_every_case():
    layer = CGNL(32, groups=8, use_scale=False)
    fixture = load_fixture_into("ga_SpatialCGNL", layer, load_official_cgnl)
    assert fixture.meta.get("module", "").endswith("groups=8)")
    assert len(fixture.cases) == 2
    assert_cases_close(lambda x: keras.ops.convert_to_numpy(layer(x)), fixture.cases, rtol=1e-4)


def test_converter_with_prefix_and_checks():
    fixture = OfficialFixture("ga_SpatialCGNL")
    prefixed = {f"head.a2block.long_relation.{k}": v for k, v in fixture.state_dict.items()}
    layer = CGNL(32)
    sd = load_official_cgnl(layer, StateDict(prefixed), prefix="head.a2block.long_relation")
    assert sd.unused() == []
    x, expected = fixture.cases[1]
    assert_close_relative(layer(x).numpy(), expected, rtol=1e-4)
    with pytest.raises(ValueError, match="planes"):
        load_official_cgnl(CGNL(16, groups=8), StateDict(fixture.state_dict))
    with pytest.raises(ValueError, match="groups"):
        load_official_cgnl(CGNL(32, groups=4), StateDict(fixture.state_dict))


# ------------------------------------------------------------- semantics
@pytest.mark.parametrize("use_scale", [False, True])
def test_matches_numpy_reference_odd_size(use_scale):
    layer = CGNL(8, groups=4, use_scale=use_scale)
    x = random_input_legacy((2, 33, 47, 16))
    layer.build(x.shape)
    randomize_weights(layer, seed=3)
    # Small p/g weights keep |att| near sqrt(eps), where scaling is visible.
    layer.p.kernel.assign(layer.p.kernel * 1e-3)
    y = layer(x).numpy()
    assert y.shape == (2, 33, 47, 16)
    assert_close_relative(y, reference_of(layer, x), rtol=1e-4)


@pytest.mark.jax
@pytest.mark.parametrize("use_scale", [False, True])
def test_forward_matches_numpy_reference_on_every_backend(use_scale):
    keras.utils.set_random_seed(5)
    layer = CGNL(8, groups=4, use_scale=use_scale)
    layer.build((None, None, None, 8))
    randomize_weights(layer, seed=6)
    layer.p.kernel.assign(layer.p.kernel * 1e-3)  # |att| near sqrt(eps): scaling shows
    x = random_input_legacy((2, 5, 7, 8), seed=7)
    assert_close_relative(to_numpy(layer(x)), reference_of(layer, x), rtol=1e-4)


def test_use_scale_changes_output_when_affinity_is_small():
    x = random_input_legacy((1, 9, 13, 16))
    a, b = CGNL(8, groups=4), CGNL(8, groups=4, use_scale=True)
    a.build(x.shape)
    b.build(x.shape)
    randomize_weights(a, seed=4)
    a.p.kernel.assign(a.p.kernel * 1e-3)
    b.set_weights(a.get_weights())
    assert np.abs(a(x).numpy() - b(x).numpy()).max() > 1e-2


def test_groupnorm_normalizes_affinity_scale_away():
    """Documented property of the authors' design: z/gn groups coincide."""
    x = random_input_legacy((1, 10, 14, 16))
    layer = CGNL(8, groups=4)
    layer.build(x.shape)
    randomize_weights(layer, seed=5)
    before = layer(x).numpy()
    layer.p.kernel.assign(layer.p.kernel * 7.0)  # att -> 7 * att
    after = layer(x).numpy()
    assert_close_relative(after, before, rtol=1e-4)


def test_invalid_configuration():
    with pytest.raises(ValueError, match="divisible"):
        CGNL(10, groups=4)
    with pytest.raises(ValueError, match="divisible"):
        CGNL(8, groups=4).build((None, None, None, 10))


def test_dynamic_shape_functional_model():
    layer = CGNL(8, groups=4)
    model = functional_model(layer, 16, out_channels=16)
    randomize_weights(layer, seed=6)
    for shape in [(1, 33, 47, 16), (2, 5, 3, 16)]:
        x = random_input_legacy(shape)
        y = model.predict(x, verbose=0)
        assert y.shape == shape
        assert_close_relative(y, reference_of(layer, x), rtol=1e-4)


# ---------------------------------------------------------- serialization
def test_config_and_keras_file_round_trip(tmp_path):
    layer = CGNL(8, groups=4, use_scale=True, name="cgnl")
    clone = config_round_trip(layer)
    assert (clone.planes, clone.groups, clone.use_scale) == (8, 4, True)

    model = functional_model(layer, 16)
    randomize_weights(layer, seed=7)
    x = random_input_legacy((1, 11, 7, 16))
    assert_keras_round_trip(model, tmp_path / "cgnl.keras", [x], CGNL, layer_name="cgnl")


# -------------------------------------------------------------- gradients
def test_gradients_reach_every_trainable_weight():
    layer = CGNL(8, groups=4)
    x = tf.constant(random_input_legacy((2, 9, 13, 16)))
    layer.build(x.shape)
    randomize_weights(layer, seed=8)
    grads = projected_gradients(layer, x, random_input_legacy(x.shape, seed=9), training=True)
    assert len(layer.trainable_weights) == 6  # t, p, g, z kernels; gn gamma, beta
    assert_gradients(layer.trainable_weights, grads, finite=True)


# ---------------------------------------------------------- mixed bf16
def test_mixed_bfloat16(bf16_policy):
    x = random_input_legacy((2, 9, 13, 16)) * 10.0  # large |att|: sum of 117*2 products
    layer, expected = bfloat16_twin(lambda: CGNL(8, groups=4), x, seed=10)
    for sub in (layer.t, layer.p, layer.g, layer.z, layer.gn):
        assert sub.dtype_policy.name == "mixed_bfloat16"
    y = layer(x)
    assert y.dtype == tf.bfloat16
    assert layer.t.kernel.dtype == "float32"
    y = tf.cast(y, tf.float32).numpy()
    assert np.isfinite(y).all()
    assert_close_relative(y, expected, rtol=5e-2)

    model = functional_model(layer, 16)
    assert model.predict(x[:1, :5, :7], verbose=0).shape == (1, 5, 7, 16)
