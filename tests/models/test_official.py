"""The authors' GALD_res50/101 in Keras: structure against their key lists, sizes, outputs."""

import json
import os
import re

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_gald.layers.gald_block import GALDBlockV1
from keras_gald.ops.resize import resize_bilinear
from keras_gald.models.official import (
    build_gald_head,
    gald_head,
    min_input_size,
    official_feature_size,
    official_gald_v1,
)
from keras_gald.models.segmenter import Segmenter
from tests.conftest import OFFICIAL_DIR, require_shared

SIZES = {(769, 769): (97, 97), (832, 832): (105, 105), (1024, 2048): (129, 257), (160, 224): (21, 29)}

# Independent of keras_gald.convert: the authors' module -> the Keras layer name.
STEM = {
    "conv1.0": "stem_conv1",
    "conv1.1": "stem_bn1",
    "conv1.3": "stem_conv2",
    "conv1.4": "stem_bn2",
    "conv1.6": "stem_conv3",
    "bn1": "stem_bn3",
}
HEAD = {
    "head.conva.0": "head_conva_conv",
    "head.conva.1": "head_conva_bn",
    "head.convb.0": "head_convb_conv",
    "head.convb.1": "head_convb_bn",
    "head.bottleneck.0": "head_bottleneck_conv",
    "head.bottleneck.1": "head_bottleneck_bn",
    "head.bottleneck.3": "head_classifier",
    "dsn.0": "dsn_conv",
    "dsn.1": "dsn_bn",
    "dsn.4": "dsn_classifier",
}
NORM_ATTR = {"weight": "gamma", "bias": "beta", "running_mean": "moving_mean", "running_var": "moving_variance"}


def official_keys(depth):
    """[(key, shape)] of the authors' GALD_res{depth}(19) state_dict, and the JSON."""
    path = require_shared(OFFICIAL_DIR / f"keys_GALD_res{depth}_19cls.json")
    spec = json.loads(path.read_text())
    return [(k, tuple(s)) for k, s, _ in spec["keys"]], spec


def _a2block_sublayer(block, module):
    m = re.fullmatch(r"down\.([01])", module)
    if m:
        return block.down_conv if m[1] == "0" else block.down_bn
    m = re.fullmatch(r"long_relation\.(t|p|g|z|gn)", module)
    if m:
        return getattr(block.long_relation, m[1])
    m = re.fullmatch(r"local_attention\.dconv(\d)\.([01])", module)
    if m:
        ld = block.local_attention
        return (ld.dconv_convs if m[2] == "0" else ld.dconv_bns)[int(m[1]) - 1]
    raise KeyError(module)


def keras_variable_for_key(model, key, depth=None):
    """The Keras variable an authors' key belongs to (whole network or bare head model)."""
    module, param = key.rsplit(".", 1)
    if module.startswith(("a2block.", "conva.", "convb.", "bottleneck.")):
        module = "head." + module  # a bare GALDHead checkpoint
    if module.startswith("head.a2block."):
        layer = _a2block_sublayer(model.get_layer("head_a2block"), module[len("head.a2block."):])
    elif module in HEAD:
        layer = model.get_layer(HEAD[module])
    else:
        backbone = model.get_layer(f"backbone_resnet{depth}")
        m = re.fullmatch(r"layer([1-4])\.(\d+)\.(conv[123]|bn[123]|downsample\.[01])", module)
        if m:
            part = {"downsample.0": "downsample_conv", "downsample.1": "downsample_bn"}.get(m[3], m[3])
            name = f"layer{m[1]}_block{m[2]}_{part}"
        else:
            name = STEM[module]
        layer = backbone.get_layer(f"backbone_{name}")
    if hasattr(layer, "kernel"):
        return {"weight": layer.kernel, "bias": layer.bias}[param]
    return getattr(layer, NORM_ATTR[param])


def to_keras_layout(value, variable):
    """PyTorch layout -> the Keras variable's layout (OIHW -> HWIO; (C,1,3,3) -> (3,3,C,1))."""
    value = np.asarray(value)
    if value.ndim == 4:
        if value.shape[1] == 1 and variable.shape[-1] == 1 and value.shape[0] == variable.shape[2]:
            return value.transpose(2, 3, 0, 1)
        return value.transpose(2, 3, 1, 0)
    return value


def assert_structure_matches_keys(model, depth):
    keys, spec = official_keys(depth)
    seen = {}
    for key, shape in keys:
        if key.endswith("num_batches_tracked"):
            continue
        variable = keras_variable_for_key(model, key, depth)
        assert id(variable) not in seen, (key, seen.get(id(variable)))
        seen[id(variable)] = key
        expected = to_keras_layout(np.zeros(shape, np.float32), variable).shape
        assert tuple(variable.shape) == expected, (key, shape, variable.path, variable.shape)
    assert set(seen) == {id(v) for v in model.weights}, "Keras weights without an authors' key"
    total = sum(int(np.prod(s)) for k, s in keys if not k.endswith("num_batches_tracked"))
    assert model.count_params() == total
    trainable = sum(int(np.prod(v.shape)) for v in model.trainable_weights)
    assert trainable == spec["n_parameters"]
    return len(seen)


@pytest.fixture(scope="module")
def r50():
    return official_gald_v1(50, num_classes=19)


def test_r50_every_key_maps_to_one_weight(r50):
    assert assert_structure_matches_keys(r50, 50) == 330
    assert r50.count_params() == 52_464_358


def test_r101_every_key_maps_to_one_weight():
    model = official_gald_v1(101, num_classes=19)
    assert assert_structure_matches_keys(model, 101) == 585
    backbone = model.get_layer("backbone_resnet101")
    dilations = [backbone.get_layer(f"backbone_layer4_block{b}_conv2").dilation_rate[0] for b in range(3)]
    assert dilations == [4, 8, 16]
    assert {backbone.get_layer(f"backbone_layer3_block{b}_conv2").dilation_rate[0] for b in range(23)} == {2}


def test_head_and_dsn_layers(r50):
    names = [layer.name for layer in r50.layers]
    for name in ("head_conva_conv", "head_conva_bn", "head_a2block", "head_convb_conv", "head_convb_bn",
                 "head_concat", "head_bottleneck_conv", "head_bottleneck_bn", "head_classifier",
                 "dsn_conv", "dsn_bn", "dsn_dropout", "dsn_classifier", "logits", "aux_logits"):
        assert name in names, name
    assert not any("dropout" in n for n in names if n.startswith("head_"))  # the authors' head has none
    assert r50.get_layer("head_conva_conv").use_bias is False
    assert r50.get_layer("head_classifier").use_bias is True
    assert r50.get_layer("dsn_conv").use_bias is True
    assert isinstance(r50.get_layer("dsn_dropout"), keras.layers.SpatialDropout2D)
    block = r50.get_layer("head_a2block")
    assert isinstance(block, GALDBlockV1)
    assert (block.planes, block.groups, block.use_scale, block.down_padding, block.align_corners) == (
        256, 8, False, "valid", True
    )
    assert (block.ld_padding, block.ld_mask_activation, block.ld_align_corners) == ("valid", "relu_sigmoid", True)
    pool = r50.get_layer("backbone_resnet50").get_layer("backbone_stem_pool")
    assert pool.ceil_mode is True


@pytest.mark.parametrize("size,expected", sorted(SIZES.items()))
def test_feature_sizes_follow_pytorch(r50, size, expected):
    assert official_feature_size(*size) == expected
    shape = (1, *size, 3)
    assert r50.inference_model().compute_output_shape(shape) == (1, *expected, 19)
    stage3, stage4 = r50.get_layer("backbone_resnet50").compute_output_shape(shape)
    assert stage3 == (1, *expected, 1024) and stage4 == (1, *expected, 2048)


def test_min_input_size():
    assert min_input_size() == 111
    assert official_feature_size(111) == (15, 15) and official_feature_size(110) == (14, 14)


def test_forward_training_and_inference(r50):
    x = np.random.default_rng(0).normal(size=(1, 113, 121, 3)).astype("float32")
    logits = r50(x)
    assert logits.dtype == tf.float32 and logits.shape == (1, *official_feature_size(113, 121), 19)
    assert np.isfinite(logits.numpy()).all()
    np.testing.assert_allclose(r50.predict(x, verbose=0), logits.numpy(), rtol=0, atol=1e-5)
    assert not any(layer.name.startswith("dsn_") for layer in r50.inference_model().layers)
    train = r50(x, training=True)  # (updates the BatchNorm statistics)
    assert set(train) == {"logits", "aux_logits"}
    assert train["aux_logits"].shape == (1, 15, 16, 19) and train["aux_logits"].dtype == tf.float32
    with pytest.raises(ValueError, match="minimum height and width is 111"):
        r50(x[:, :100])


def test_upsample_logits_is_the_same_network_resized_with_align_corners(r50):
    up = official_gald_v1(50, num_classes=19, upsample_logits=True, aux_head=False)
    assert "upsample_logits" in [layer.name for layer in up.layers]
    by_name = {layer.name: layer for layer in r50.layers}
    for layer in up.layers:
        if layer.weights:
            layer.set_weights(by_name[layer.name].get_weights())
    x = np.random.default_rng(1).normal(size=(1, 121, 113, 3)).astype("float32")
    small = r50(x)
    expected = resize_bilinear(small, (121, 113), align_corners=True)
    out = up(x)
    assert out.shape == (1, 121, 113, 19) and out.dtype == tf.float32
    np.testing.assert_allclose(out.numpy(), expected.numpy(), rtol=0, atol=1e-5)
    assert set(up(x, training=True)) == {"logits"}


def test_gald_head_takes_any_channel_count():
    head = build_gald_head(64, num_classes=19)
    assert head(np.zeros((1, 33, 33, 64), "float32")).shape == (1, 33, 33, 19)
    assert head.count_params() == build_gald_head(64, 19).count_params()
    x = keras.Input((None, None, 40))
    other = keras.Model(x, gald_head(x, 5, interplanes=64, name="head"))
    y = other(np.random.default_rng(2).normal(size=(2, 17, 19, 40)).astype("float32"))
    assert y.shape == (2, 17, 19, 5)
    assert other.get_layer("head_bottleneck_conv").kernel.shape == (3, 3, 40 + 64, 64)
    assert other.get_layer("head_a2block").planes == 32


def test_head_serialization_round_trip(tmp_path):
    head = build_gald_head(16, num_classes=3, interplanes=32)
    x = np.random.default_rng(3).normal(size=(1, 16, 18, 16)).astype("float32")
    path = tmp_path / "head.keras"
    head.save(path)
    restored = keras.models.load_model(path)
    np.testing.assert_array_equal(restored(x).numpy(), head(x).numpy())
    clone = keras.Model.from_config(head.get_config())
    assert [layer.name for layer in clone.layers] == [layer.name for layer in head.layers]


def test_head_mixed_bfloat16_gives_float32_logits():
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        head = build_gald_head(16, num_classes=3, interplanes=32)
        y = head(np.random.default_rng(4).normal(size=(1, 16, 16, 16)).astype("float32"))
        assert y.dtype == tf.float32 and np.isfinite(y.numpy()).all()
    finally:
        keras.mixed_precision.set_global_policy("float32")


def test_segmenter_and_argument_errors(r50):
    assert isinstance(r50, Segmenter) and r50.name == "official_gald_v1_res50"
    assert r50.has_aux_head and r50.num_classes == 19
    with pytest.raises(ValueError, match="depth must be one of"):
        official_gald_v1(34)
    with pytest.raises(ValueError, match=r"\(H, W, 3\)"):
        official_gald_v1(50, input_shape=(None, None, 4))
    with pytest.raises(ValueError, match="num_classes"):
        official_gald_v1(50, num_classes=0)
    with pytest.raises(ValueError, match="111"):
        official_gald_v1(50, input_shape=(96, 128, 3))
