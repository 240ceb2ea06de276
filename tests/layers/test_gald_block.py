import numpy as np
import pytest
import keras
import tensorflow as tf

from keras_gald.convert.official_cgnl_ldv1 import load_official_gald_block
from keras_gald.convert.torch_weights import StateDict
from keras_gald.layers.cgnl import CGNL
from keras_gald.layers.gald_block import GALDBlockV1
from keras_gald.layers.ldv1 import LDv1
from tests.conftest import OfficialFixture, assert_close_relative

SMALL_MAP_OPTIONS = {"down_padding": "symmetric", "ld_padding": "symmetric"}


def randomize_weights(layer, seed=0):
    """Assigns random values to every weight (positive for scales/variances)."""
    rng = np.random.RandomState(seed)
    for w in layer.weights:
        shape = tuple(w.shape)
        if w.path.endswith(("gamma", "moving_variance")):
            value = rng.uniform(0.5, 1.5, shape)
        else:
            value = rng.normal(0.0, 0.3, shape)
        w.assign(value.astype("float32"))


def _random_input(shape, seed=1):
    return np.random.RandomState(seed).normal(size=shape).astype("float32")


@pytest.fixture
def bf16_policy():
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy("float32")


def _authors_block():
    fixture = OfficialFixture("ga_ld_GALDBlock")
    block = GALDBlockV1(32, groups=8)
    sd = load_official_gald_block(block, StateDict(fixture.state_dict))
    assert sd.unused() == []
    return fixture, block


# ----------------------------------------------------------------- parity
def test_fixture_parity_every_case():
    fixture, block = _authors_block()
    assert len(fixture.cases) == 2
    for x, expected in fixture.cases:
        assert_close_relative(block(x).numpy(), expected, rtol=1e-4)


def test_head_a2block_keys_load_without_leftovers():
    fixture = OfficialFixture("head_GALDHead")
    sd = StateDict(fixture.state_dict)
    block = GALDBlockV1(256, groups=8)  # authors' GALDBlock(512, 256)
    assert not block.built
    load_official_gald_block(block, sd, prefix="a2block")
    a2_keys = [k for k in fixture.state_dict if k.startswith("a2block.")]
    assert len(a2_keys) == 34
    assert [k for k in sd.unused() if k.startswith("a2block.")] == []
    assert sd.unused() == sorted(k for k in fixture.state_dict if not k.startswith("a2block."))
    np.testing.assert_array_equal(
        block.long_relation.z.kernel.numpy()[0, 0],
        fixture.state_dict["a2block.long_relation.z.weight"][:, :, 0, 0].T,
    )
    y = block(_random_input((1, 15, 17, 512)))
    assert y.shape == (1, 15, 17, 512) and np.isfinite(y.numpy()).all()


def test_block_is_2u_plus_u_times_mask():
    fixture, block = _authors_block()
    x = fixture.cases[1][0]
    u = block._global(tf.constant(x)).numpy()
    mask = block.compute_mask_map(x).numpy()
    assert mask.shape == x.shape
    assert mask.min() >= 0.5 and mask.max() < 1.0  # authors' ReLU-then-sigmoid LD
    np.testing.assert_allclose(block(x).numpy(), 2 * u + u * mask, rtol=1e-5, atol=1e-5)


def test_defaults_are_the_authors():
    block = GALDBlockV1(32)
    ld = block.local_attention
    assert (block.down_padding, block.align_corners, block.long_relation.use_scale) == (
        "valid", True, False)
    assert (ld.downsample_rate, ld.padding, ld.mask_activation, ld.align_corners) == (
        8, "valid", "relu_sigmoid", True)
    assert isinstance(block.long_relation, CGNL) and isinstance(ld, LDv1)
    with pytest.raises(ValueError):
        GALDBlockV1(32, down_padding="same")


# ------------------------------------------------------------------ shapes
def test_odd_sizes_and_small_maps():
    block = GALDBlockV1(8, groups=4)
    x = _random_input((2, 33, 47, 16))
    assert block(x).shape == (2, 33, 47, 16)
    # Authors' LD needs >= 15x15; a 9x13 map (1/8 of 65x97) raises clearly ...
    with pytest.raises(ValueError, match="at least 15x15"):
        GALDBlockV1(8, groups=4)(_random_input((1, 9, 13, 16)))
    # ... and works with the symmetric-padding options.
    small = GALDBlockV1(8, groups=4, **SMALL_MAP_OPTIONS)
    for shape in [(1, 9, 13, 16), (1, 2, 3, 16)]:
        y = small(_random_input(shape))
        assert y.shape == shape and np.isfinite(y.numpy()).all()


def test_dynamic_shape_functional_model():
    block = GALDBlockV1(8, groups=4)
    inputs = keras.Input((None, None, 16))
    outputs = block(inputs)
    assert tuple(outputs.shape) == (None, None, None, 16)
    model = keras.Model(inputs, outputs)
    randomize_weights(block, seed=2)
    for shape in [(1, 33, 47, 16), (2, 16, 21, 16)]:
        x = _random_input(shape)
        y = model.predict(x, verbose=0)
        assert y.shape == shape
        assert_close_relative(y, block(x).numpy(), rtol=1e-5)


# ---------------------------------------------------------- serialization
def test_config_and_keras_file_round_trip(tmp_path):
    block = GALDBlockV1(8, groups=4, use_scale=True, ld_mask_activation="sigmoid",
                        ld_downsample_rate=4, **SMALL_MAP_OPTIONS, name="gald")
    config = block.get_config()
    clone = GALDBlockV1.from_config(config)
    assert clone.get_config() == config
    assert clone.local_attention.downsample_rate == 4
    assert clone.local_attention.mask_activation == "sigmoid"

    inputs = keras.Input((None, None, 16))
    model = keras.Model(inputs, block(inputs))
    randomize_weights(block, seed=3)
    path = tmp_path / "gald.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    assert isinstance(loaded.get_layer("gald"), GALDBlockV1)
    x = _random_input((1, 9, 13, 16))
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), model.predict(x, verbose=0))


# -------------------------------------------------------------- gradients
def test_gradients_reach_every_trainable_weight():
    block = GALDBlockV1(8, groups=4)
    x = tf.constant(_random_input((2, 17, 19, 16)))
    block.build(x.shape)
    randomize_weights(block, seed=4)
    for w in block.weights:  # keep the ReLUs mostly active
        if w.path.endswith("beta"):
            w.assign(tf.abs(w) + 0.5)
    r = np.random.RandomState(5).normal(size=x.shape).astype("float32")
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(block(x, training=False) * r)
    grads = tape.gradient(loss, block.trainable_weights)
    # down: 4; CGNL: 6; LDv1: 3 * 4
    assert len(block.trainable_weights) == 22
    for w, grad in zip(block.trainable_weights, grads):
        assert grad is not None, w.path
        assert np.isfinite(grad.numpy()).all() and np.abs(grad.numpy()).max() > 0, w.path
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(block(x, training=True) * r)
    for w, grad in zip(block.trainable_weights, tape.gradient(loss, block.trainable_weights)):
        assert grad is not None and np.isfinite(grad.numpy()).all(), w.path


# ---------------------------------------------------------- mixed bf16
def test_mixed_bfloat16(bf16_policy):
    x = _random_input((1, 17, 19, 16))
    keras.mixed_precision.set_global_policy("float32")
    ref = GALDBlockV1(8, groups=4)
    ref.build(x.shape)
    randomize_weights(ref, seed=6)
    expected = ref(x).numpy()

    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    block = GALDBlockV1(8, groups=4)
    block.build(x.shape)
    block.set_weights(ref.get_weights())
    for sub in (block.down_conv, block.down_bn, block.long_relation, block.local_attention,
                block.long_relation.z, block.local_attention.dconv_convs[0]):
        assert sub.dtype_policy.name == "mixed_bfloat16"
    y = block(x)
    assert y.dtype == tf.bfloat16
    assert_close_relative(tf.cast(y, tf.float32).numpy(), expected, rtol=5e-2)

    inputs = keras.Input((None, None, 16))
    model = keras.Model(inputs, block(inputs))
    assert model.predict(x[:, :16, :15], verbose=0).shape == (1, 16, 15, 16)
