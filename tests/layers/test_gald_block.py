import numpy as np
import pytest
import tensorflow as tf

from keras_gald.convert.official_cgnl_ldv1 import load_official_gald_block
from keras_gald.convert.torch_weights import StateDict
from keras_gald.layers.cgnl import CGNL
from keras_gald.layers.gald_block import GALDBlockV1
from keras_gald.layers.ldv1 import LDv1
from tests.conftest import OfficialFixture
from tests.harness import assert_close_relative
from tests.layers._helpers import (
    assert_cases_close, assert_gradients, assert_keras_round_trip, bfloat16_twin,
    config_round_trip, functional_model, global_policy, load_fixture_into, projected_gradients,
    random_input_legacy, randomize_weights
)

SMALL_MAP_OPTIONS = {"down_padding": "symmetric", "ld_padding": "symmetric"}


@pytest.fixture
def bf16_policy():
    with global_policy("mixed_bfloat16"):
        yield


def _authors_block():
    block = GALDBlockV1(32, groups=8)
    return load_fixture_into("ga_ld_GALDBlock", block, load_official_gald_block), block


# ----------------------------------------------------------------- parity
def test_fixture_parity_every_case():
    fixture, block = _authors_block()
    assert len(fixture.cases) == 2
    assert_cases_close(lambda x: block(x).numpy(), fixture.cases, rtol=1e-4)


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
    y = block(random_input_legacy((1, 15, 17, 512)))
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
    x = random_input_legacy((2, 33, 47, 16))
    assert block(x).shape == (2, 33, 47, 16)
    # Authors' LD needs >= 15x15; a 9x13 map (1/8 of 65x97) raises clearly ...
    with pytest.raises(ValueError, match="at least 15x15"):
        GALDBlockV1(8, groups=4)(random_input_legacy((1, 9, 13, 16)))
    # ... and works with the symmetric-padding options.
    small = GALDBlockV1(8, groups=4, **SMALL_MAP_OPTIONS)
    for shape in [(1, 9, 13, 16), (1, 2, 3, 16)]:
        y = small(random_input_legacy(shape))
        assert y.shape == shape and np.isfinite(y.numpy()).all()


def test_dynamic_shape_functional_model():
    block = GALDBlockV1(8, groups=4)
    model = functional_model(block, 16, out_channels=16)
    randomize_weights(block, seed=2)
    for shape in [(1, 33, 47, 16), (2, 16, 21, 16)]:
        x = random_input_legacy(shape)
        y = model.predict(x, verbose=0)
        assert y.shape == shape
        assert_close_relative(y, block(x).numpy(), rtol=1e-5)


# ---------------------------------------------------------- serialization
def test_config_and_keras_file_round_trip(tmp_path):
    block = GALDBlockV1(8, groups=4, use_scale=True, ld_mask_activation="sigmoid",
                        ld_downsample_rate=4, **SMALL_MAP_OPTIONS, name="gald")
    clone = config_round_trip(block)
    assert clone.local_attention.downsample_rate == 4
    assert clone.local_attention.mask_activation == "sigmoid"

    model = functional_model(block, 16)
    randomize_weights(block, seed=3)
    x = random_input_legacy((1, 9, 13, 16))
    assert_keras_round_trip(model, tmp_path / "gald.keras", [x], GALDBlockV1, layer_name="gald")


# -------------------------------------------------------------- gradients
def test_gradients_reach_every_trainable_weight():
    block = GALDBlockV1(8, groups=4)
    x = tf.constant(random_input_legacy((2, 17, 19, 16)))
    block.build(x.shape)
    randomize_weights(block, seed=4)
    for w in block.weights:  # keep the ReLUs mostly active
        if w.path.endswith("beta"):
            w.assign(tf.abs(w) + 0.5)
    r = random_input_legacy(x.shape, seed=5)
    grads = projected_gradients(block, x, r, training=False)
    # down: 4; CGNL: 6; LDv1: 3 * 4
    assert len(block.trainable_weights) == 22
    assert_gradients(block.trainable_weights, grads, finite=True)
    grads = projected_gradients(block, x, r, training=True)
    assert_gradients(block.trainable_weights, grads, nonzero=False, finite=True)


# ---------------------------------------------------------- mixed bf16
def test_mixed_bfloat16(bf16_policy):
    x = random_input_legacy((1, 17, 19, 16))
    block, expected = bfloat16_twin(lambda: GALDBlockV1(8, groups=4), x, seed=6)
    for sub in (block.down_conv, block.down_bn, block.long_relation, block.local_attention,
                block.long_relation.z, block.local_attention.dconv_convs[0]):
        assert sub.dtype_policy.name == "mixed_bfloat16"
    y = block(x)
    assert y.dtype == tf.bfloat16
    assert_close_relative(tf.cast(y, tf.float32).numpy(), expected, rtol=5e-2)

    model = functional_model(block, 16)
    assert model.predict(x[:, :16, :15], verbose=0).shape == (1, 16, 15, 16)
