"""Dilated ResNet backbones: geometry, layout, PyTorch pooling/padding, serialization."""

import os
import warnings

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_gald.backbones import (
    BACKBONES,
    TorchMaxPool2D,
    available_backbones,
    backbone_channels,
    build_resnet,
)
from keras_gald.backbones import resnet as resnet_module
from keras_gald.layers.conv import Conv2D

TINY = "resnet_tiny"


# ----------------------------------------------------------------------------
# NumPy references of PyTorch's operators (written from PyTorch's kernels).


def torch_pool_out(n, k, s, p, ceil_mode):
    """aten pooling_output_shape (dilation 1)."""
    if ceil_mode:
        out = -(-(n + 2 * p - k) // s) + 1
        if (out - 1) * s >= n + p:
            out -= 1
    else:
        out = (n + 2 * p - k) // s + 1
    return out


def np_max_pool(x, k, s, p, ceil_mode):
    """PyTorch max_pool2d on NHWC, window clipped to the input (padding never wins)."""
    n, h, w, c = x.shape
    oh, ow = torch_pool_out(h, k, s, p, ceil_mode), torch_pool_out(w, k, s, p, ceil_mode)
    y = np.empty((n, oh, ow, c), x.dtype)
    for i in range(oh):
        h0 = i * s - p
        h1 = min(h0 + k, h)
        h0 = max(h0, 0)
        for j in range(ow):
            w0 = j * s - p
            w1 = min(w0 + k, w)
            w0 = max(w0, 0)
            y[:, i, j, :] = x[:, h0:h1, w0:w1, :].max(axis=(1, 2))
    return y


def np_conv(x, kernel, stride=1, pad=0, dilation=1):
    """PyTorch conv2d (symmetric zero padding) on NHWC with an HWIO kernel."""
    kh, kw, _, cout = kernel.shape
    x = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    n, h, w, _ = x.shape
    oh = (h - dilation * (kh - 1) - 1) // stride + 1
    ow = (w - dilation * (kw - 1) - 1) // stride + 1
    y = np.zeros((n, oh, ow, cout), np.float64)
    for a in range(kh):
        for b in range(kw):
            patch = x[
                :,
                a * dilation : a * dilation + stride * (oh - 1) + 1 : stride,
                b * dilation : b * dilation + stride * (ow - 1) + 1 : stride,
                :,
            ]
            y += patch @ kernel[a, b]
    return y


def np_bn(x, layer):
    gamma, beta, mean, var = (np.asarray(v, np.float64) for v in layer.get_weights())
    return (x - mean) / np.sqrt(var + 1e-5) * gamma + beta


def np_resnet(model, x, stem, blocks, strides, dilations):
    """Eval-mode forward of the authors' ResNet, reading weights by layer name."""

    def conv(name, x, stride=1, pad=0, dilation=1):
        return np_conv(x, model.get_layer(name).get_weights()[0], stride, pad, dilation)

    def bn(name, x):
        return np_bn(x, model.get_layer(name))

    relu = lambda v: np.maximum(v, 0)
    x = x.astype(np.float64)
    if stem == "deep":
        x = relu(bn("stem_bn1", conv("stem_conv1", x, 2, 1)))
        x = relu(bn("stem_bn2", conv("stem_conv2", x, 1, 1)))
        x = relu(bn("stem_bn3", conv("stem_conv3", x, 1, 1)))
        x = np_max_pool(x, 3, 2, 1, ceil_mode=True)
    else:
        x = relu(bn("stem_bn1", conv("stem_conv1", x, 2, 3)))
        x = np_max_pool(x, 3, 2, 1, ceil_mode=False)
    outs = []
    for stage in range(4):
        for b in range(blocks[stage]):
            name = f"layer{stage + 1}_block{b}"
            stride = strides[stage] if b == 0 else 1
            d = dilations[stage][b]
            out = relu(bn(f"{name}_bn1", conv(f"{name}_conv1", x)))
            out = relu(bn(f"{name}_bn2", conv(f"{name}_conv2", out, stride, d, d)))
            out = bn(f"{name}_bn3", conv(f"{name}_conv3", out))
            try:
                model.get_layer(f"{name}_downsample_conv")
                short = bn(f"{name}_downsample_bn", conv(f"{name}_downsample_conv", x, stride))
            except ValueError:
                short = x
            x = relu(out + short)
        outs.append(x)
    return outs[2], outs[3]


def randomize_bn(model, seed=0):
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            c = layer.gamma.shape[0]
            layer.set_weights(
                [
                    rng.uniform(0.5, 1.5, c),
                    rng.normal(0, 0.1, c),
                    rng.normal(0, 0.1, c),
                    rng.uniform(0.5, 2.0, c),
                ]
            )


def pytorch_feature_size(n, output_stride, stem="deep"):
    """Spatial size of layer4 from PyTorch's conv / pool formulas."""
    if stem == "deep":
        n = (n + 2 - 3) // 2 + 1
        n = torch_pool_out(n, 3, 2, 1, ceil_mode=True)
    else:
        n = (n + 6 - 7) // 2 + 1
        n = torch_pool_out(n, 3, 2, 1, ceil_mode=False)
    for _ in range({8: 1, 16: 2, 32: 3}[output_stride]):
        n = (n + 2 - 3) // 2 + 1
    return n


# ----------------------------------------------------------------------------
# Registry and argument errors.


def test_registry_and_channels():
    assert {"resnet50", "resnet101", "resnet_tiny", "resnet_small"} <= set(available_backbones())
    assert available_backbones() == sorted(BACKBONES)
    assert backbone_channels("resnet50") == (1024, 2048)
    assert backbone_channels("resnet101") == (1024, 2048)
    assert backbone_channels("resnet_tiny") == (64, 128)
    assert backbone_channels("resnet50", stages=(1, 2, 3, 4)) == (256, 512, 1024, 2048)
    assert BACKBONES["resnet50"].blocks == (3, 4, 6, 3)
    assert BACKBONES["resnet101"].blocks == (3, 4, 23, 3)


def test_unknown_name_lists_valid_choices():
    with pytest.raises(ValueError, match=r"unknown backbone 'resnet1000'; valid choices: .*resnet101.*resnet50"):
        build_resnet("resnet1000")
    with pytest.raises(ValueError, match="unknown backbone"):
        backbone_channels("vgg16")


@pytest.mark.parametrize("output_stride", [4, 12, 64, "8"])
def test_bad_output_stride(output_stride):
    with pytest.raises(ValueError, match=r"output_stride must be one of \(8, 16, 32\), got"):
        build_resnet(TINY, output_stride=output_stride)


def test_bad_stem_multi_grid_stages():
    with pytest.raises(ValueError, match="stem must be one of"):
        build_resnet(TINY, stem="wide")
    with pytest.raises(ValueError, match="multi_grid"):
        build_resnet(TINY, multi_grid=(1, 0, 2))
    with pytest.raises(ValueError, match="multi_grid"):
        build_resnet(TINY, multi_grid=())
    with pytest.raises(ValueError, match="output_stages"):
        build_resnet(TINY, output_stages=(3, 5))


def test_weights_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found.*nothing is downloaded"):
        build_resnet(TINY, weights="imagenet")
    with pytest.raises(FileNotFoundError, match="not found"):
        build_resnet(TINY, weights=tmp_path / "missing.weights.h5")
    npz = tmp_path / "resnet.npz"
    np.savez(npz, x=np.zeros(1))
    # formats: keras_gald.backbones.pretrained (tests/backbones/test_pretrained.py)
    with pytest.raises(ValueError, match=r"resnet\.npz: not a ResNet state dict"):
        build_resnet(TINY, weights=npz)
    other = tmp_path / "resnet.txt"
    other.write_text("x")
    with pytest.raises(ValueError, match=r"unsupported weights file .*resnet\.txt"):
        build_resnet(TINY, weights=other)


# ----------------------------------------------------------------------------
# Geometry.


@pytest.mark.parametrize("stem", ["deep", "classic"])
@pytest.mark.parametrize("output_stride", [8, 16, 32])
def test_output_shapes_and_channels(output_stride, stem):
    h, w = 65, 97
    model = build_resnet(TINY, output_stride=output_stride, stem=stem, input_shape=(h, w, 3))
    s3, s4 = model(np.random.default_rng(0).normal(size=(2, h, w, 3)).astype("float32"))
    fh, fw = pytorch_feature_size(h, output_stride, stem), pytorch_feature_size(w, output_stride, stem)
    l3h, l3w = (
        (pytorch_feature_size(h, 16, stem), pytorch_feature_size(w, 16, stem))
        if output_stride == 32
        else (fh, fw)
    )
    assert tuple(s3.shape) == (2, l3h, l3w, 64)
    assert tuple(s4.shape) == (2, fh, fw, 128)
    # Static shapes agree with run time.
    assert tuple(model.outputs[0].shape) == (None, l3h, l3w, 64)
    assert tuple(model.outputs[1].shape) == (None, fh, fw, 128)


def test_authors_feature_sizes_static():
    # Sizes depend only on strides: check the symbolic shapes of the tiny network.
    expected = {(769, 769): (97, 97), (832, 832): (105, 105), (1024, 2048): (129, 257), (160, 224): (21, 29)}
    for (h, w), (fh, fw) in expected.items():
        model = build_resnet(TINY, output_stride=8, multi_grid=(1, 2, 4), input_shape=(h, w, 3))
        assert [tuple(o.shape[1:3]) for o in model.outputs] == [(fh, fw), (fh, fw)], (h, w)
        assert (pytorch_feature_size(h, 8), pytorch_feature_size(w, 8)) == (fh, fw)


def test_authors_feature_sizes_runtime_dynamic():
    model = build_resnet(TINY, output_stride=8, multi_grid=(1, 2, 4))
    assert tuple(model.input_shape) == (None, None, None, 3)
    s3, s4 = model.predict(np.zeros((1, 769, 832, 3), "float32"), verbose=0)
    assert s3.shape == (1, 97, 105, 64) and s4.shape == (1, 97, 105, 128)
    s3, s4 = model(np.zeros((1, 160, 224, 3), "float32"))
    assert tuple(s4.shape) == (1, 21, 29, 128)


def test_dynamic_input_shape_in_tf_function():
    model = build_resnet(TINY, output_stride=16)

    @tf.function(input_signature=[tf.TensorSpec((None, None, None, 3), tf.float32)])
    def forward(x):
        return model(x, training=False)

    for h, w in [(33, 47), (64, 64), (17, 90)]:
        s3, s4 = forward(tf.zeros((1, h, w, 3)))
        size = (pytorch_feature_size(h, 16), pytorch_feature_size(w, 16))
        assert tuple(s4.shape) == (1, *size, 128)
        assert tuple(s3.shape) == (1, *size, 64)


@pytest.mark.parametrize(
    "output_stride, strides, base",
    [(8, (1, 2, 1, 1), (1, 1, 2, 4)), (16, (1, 2, 2, 1), (1, 1, 1, 2)), (32, (1, 2, 2, 2), (1, 1, 1, 1))],
)
def test_stride_dilation_layout(output_stride, strides, base):
    model = build_resnet("resnet_small", output_stride=output_stride, multi_grid=(1, 2, 4))
    blocks = BACKBONES["resnet_small"].blocks
    for stage in range(1, 5):
        for b in range(blocks[stage - 1]):
            conv2 = model.get_layer(f"layer{stage}_block{b}_conv2")
            grid = (1, 2, 4)[b % 3] if stage == 4 else 1
            assert conv2.dilation_rate == (base[stage - 1] * grid,) * 2, conv2.name
            stride = strides[stage - 1] if b == 0 else 1
            assert conv2.strides == (stride, stride), conv2.name
            if stride == 2:
                assert conv2.padding == "valid"
                assert model.get_layer(f"layer{stage}_block{b}_pad2").padding == ((1, 1), (1, 1))
    for layer in model.layers:
        if isinstance(layer, keras.layers.Conv2D):
            assert isinstance(layer, Conv2D), layer.name
            assert not layer.use_bias, layer.name
            assert not (layer.strides != (1, 1) and layer.padding == "same"), layer.name
        if isinstance(layer, keras.layers.BatchNormalization):
            assert layer.epsilon == 1e-5 and layer.momentum == 0.9 and not layer.synchronized


def test_layer_names_and_prefix_and_sync_bn():
    model = build_resnet(TINY, name_prefix="bb_", sync_bn=True, stem="deep")
    names = {layer.name for layer in model.layers}
    assert model.name == "bb_resnet_tiny"
    assert all(n.startswith("bb_") for n in names)
    for n in ["stem_pad1", "stem_conv1", "stem_bn1", "stem_conv2", "stem_bn2", "stem_conv3",
              "stem_bn3", "stem_pool", "layer1_block0_conv1", "layer1_block0_downsample_conv",
              "layer1_block0_downsample_bn", "layer2_block0_pad2", "layer3_block0_bn3",
              "layer4_block0_out"]:
        assert f"bb_{n}" in names, n
    assert all(
        layer.synchronized for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)
    )
    classic = build_resnet(TINY, stem="classic")
    assert classic.get_layer("stem_conv1").kernel.shape == (7, 7, 3, 4)
    assert classic.get_layer("stem_pad1").padding == ((3, 3), (3, 3))
    assert "stem_conv2" not in {layer.name for layer in classic.layers}


def test_output_stages():
    model = build_resnet(TINY, output_stages=(1, 2, 3, 4), input_shape=(65, 97, 3))
    shapes = [tuple(o.shape) for o in model.outputs]
    assert shapes == [(None, 17, 25, 16), (None, 9, 13, 32), (None, 9, 13, 64), (None, 9, 13, 128)]


# ----------------------------------------------------------------------------
# PyTorch-exact operators.


@pytest.mark.parametrize(
    "k, s, p, ceil_mode",
    [(3, 2, 1, True), (3, 2, 1, False), (2, 3, 1, True), (3, 3, 1, True), (4, 3, 2, True), (2, 2, 0, True)],
)
def test_torch_max_pool_matches_numpy_reference(k, s, p, ceil_mode):
    rng = np.random.default_rng(k * 100 + s * 10 + p)
    pool = TorchMaxPool2D(k, s, p, ceil_mode=ceil_mode)
    dynamic = tf.function(pool, input_signature=[tf.TensorSpec((None, None, None, 2), tf.float32)])
    rule_fired = 0
    for h in range(max(1, k - 2 * p), 14):
        w = 5 + (h * 7) % 9
        # Negative inputs: padding must never win.
        x = rng.normal(size=(1, h, w, 2)).astype("float32") - 3.0
        expected = np_max_pool(x, k, s, p, ceil_mode)
        np.testing.assert_array_equal(pool(x).numpy(), expected)
        np.testing.assert_array_equal(dynamic(x).numpy(), expected)
        assert pool.compute_output_shape((1, h, w, 2)) == expected.shape
        naive = -(-(h + 2 * p - k) // s) + 1
        rule_fired += ceil_mode and naive != expected.shape[1]
    if (k, s, p) == (2, 3, 1):
        assert rule_fired > 0  # the "last window starts inside input + left pad" rule was exercised


def test_torch_max_pool_config_and_errors():
    pool = TorchMaxPool2D(3, 2, 1, ceil_mode=False, name="p")
    clone = TorchMaxPool2D.from_config(pool.get_config())
    assert (clone.pool_size, clone.strides, clone.padding, clone.ceil_mode) == ((3, 3), (2, 2), (1, 1), False)
    with pytest.raises(ValueError, match="at most half"):
        TorchMaxPool2D(3, 2, 2)
    assert pool.compute_output_shape((None, None, 10, 4)) == (None, None, 5, 4)


def test_stride2_and_dilated_convs_pad_like_pytorch():
    model = build_resnet(TINY, output_stride=8, multi_grid=(2, 1, 1))
    rng = np.random.default_rng(1)
    x = rng.normal(size=(1, 6, 8, 3)).astype("float32")  # even sizes: TF "same" would differ
    y = model.get_layer("stem_conv1")(model.get_layer("stem_pad1")(x))
    ref = np_conv(x, model.get_layer("stem_conv1").kernel.numpy(), stride=2, pad=1)
    np.testing.assert_allclose(y.numpy(), ref, rtol=1e-5, atol=1e-5)
    conv = model.get_layer("layer4_block0_conv2")
    assert conv.dilation_rate == (8, 8)
    x = rng.normal(size=(1, 11, 20, conv.kernel.shape[2])).astype("float32")
    ref = np_conv(x, conv.kernel.numpy(), stride=1, pad=8, dilation=8)
    np.testing.assert_allclose(conv(x).numpy(), ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "stem, output_stride, strides, dilations",
    [
        ("deep", 8, (1, 2, 1, 1), ((1, 1), (1, 1), (2, 2), (4, 8, 16))),
        ("classic", 16, (1, 2, 2, 1), ((1, 1), (1, 1), (1, 1), (2, 4, 8))),
    ],
)
def test_forward_matches_numpy_reference(stem, output_stride, strides, dilations):
    name = "resnet_small"
    model = build_resnet(name, output_stride=output_stride, multi_grid=(1, 2, 4), stem=stem)
    randomize_bn(model)
    x = np.random.default_rng(2).normal(size=(1, 38, 45, 3)).astype("float32")
    s3, s4 = model(x, training=False)
    r3, r4 = np_resnet(model, x, stem, BACKBONES[name].blocks, strides, dilations)
    for actual, expected in [(s3, r3), (s4, r4)]:
        assert actual.shape == expected.shape
        err = np.abs(actual.numpy() - expected).max()
        assert err <= 1e-4 * np.abs(expected).max(), err


# ----------------------------------------------------------------------------
# Serialization, weights, gradients.


def test_keras_serialization_round_trip(tmp_path):
    model = build_resnet(TINY, output_stride=8, multi_grid=(1, 2, 4))
    randomize_bn(model)
    x = np.random.default_rng(3).normal(size=(1, 37, 45, 3)).astype("float32")
    expected = model(x, training=False)
    path = tmp_path / "tiny.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    actual = loaded(x, training=False)
    for a, e in zip(actual, expected):
        np.testing.assert_array_equal(a.numpy(), e.numpy())
    assert isinstance(loaded.get_layer("stem_pool"), TorchMaxPool2D)
    assert loaded.get_layer("stem_pool").ceil_mode
    assert isinstance(loaded.get_layer("layer4_block0_conv2"), Conv2D)
    clone = keras.Model.from_config(model.get_config())
    assert [tuple(o.shape) for o in clone(x)] == [tuple(o.shape) for o in expected]


def test_weights_file_round_trip(tmp_path):
    model = build_resnet(TINY, output_stride=16, multi_grid=(1, 2, 4))
    randomize_bn(model, seed=5)
    path = tmp_path / "tiny.weights.h5"
    model.save_weights(path)
    x = np.random.default_rng(4).normal(size=(1, 33, 41, 3)).astype("float32")
    fresh = build_resnet(TINY, output_stride=16, multi_grid=(1, 2, 4))
    assert not np.allclose(fresh(x)[1].numpy(), model(x)[1].numpy())
    reloaded = build_resnet(TINY, output_stride=16, multi_grid=(1, 2, 4), weights=str(path))
    for a, e in zip(reloaded(x), model(x)):
        np.testing.assert_array_equal(a.numpy(), e.numpy())
    with warnings.catch_warnings(), pytest.raises(ValueError):
        warnings.simplefilter("ignore")
        build_resnet("resnet_small", weights=path)  # different architecture


def _assert_gradients_reach_all_trainable_weights(model, jit_compile):
    rng = np.random.default_rng(6)
    x = tf.constant(rng.normal(size=(2, 33, 41, 3)).astype("float32"))
    s3, s4 = model(x, training=False)
    r3 = tf.constant(rng.normal(size=s3.shape).astype("float32"))
    r4 = tf.constant(rng.normal(size=s4.shape).astype("float32"))

    @tf.function(jit_compile=jit_compile)
    def gradients(x):
        with tf.GradientTape() as tape:
            s3, s4 = model(x, training=True)
            loss = tf.reduce_sum(s3 * r3) + tf.reduce_sum(s4 * r4)
        return tape.gradient(loss, model.trainable_weights)

    grads = gradients(x) if jit_compile else gradients.python_function(x)
    assert len(grads) == len(model.trainable_weights) > 0
    for var, grad in zip(model.trainable_weights, grads):
        assert grad is not None, var.path
        g = grad.numpy()
        assert np.all(np.isfinite(g)) and np.abs(g).max() > 0, var.path


def test_gradients_reach_all_trainable_weights_xla_dilated():
    # TF's CPU Conv2DBackpropInput/Filter kernels reject dilations > 1 outside XLA
    # (a limitation of DilatedConv2D's tf.nn.conv2d path); XLA and GPUs support them.
    model = build_resnet(TINY, output_stride=8, multi_grid=(1, 2, 4))
    _assert_gradients_reach_all_trainable_weights(model, jit_compile=True)


def test_gradients_reach_all_trainable_weights_eager_undilated():
    model = build_resnet(TINY, output_stride=32, stem="classic")
    _assert_gradients_reach_all_trainable_weights(model, jit_compile=False)


def test_mixed_bfloat16_policy():
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        model = build_resnet(TINY, output_stride=8, multi_grid=(1, 2, 4))
    finally:
        keras.mixed_precision.set_global_policy(previous)
    s3, s4 = model(np.random.default_rng(8).normal(size=(1, 33, 41, 3)).astype("float32"))
    assert s3.dtype == tf.bfloat16 and s4.dtype == tf.bfloat16
    assert tuple(s4.shape) == (1, 5, 6, 128)
    assert model.get_layer("stem_pool").compute_dtype == "bfloat16"
    assert np.all(np.isfinite(tf.cast(s4, tf.float32).numpy()))


@pytest.mark.jax
def test_tiny_forward_on_every_backend(monkeypatch):
    # The whole backbone through keras_gald.ops on the running backend (lax on JAX).
    # Zero-initialised kernels, then random weights set from NumPy: on JAX each random
    # initialiser is an XLA compile per weight shape (about 40 s for the 19 convs on a
    # busy 2-core machine), which this test does not need.
    monkeypatch.setattr(resnet_module, "_kernel_initializer", lambda: "zeros")
    model = build_resnet(TINY, output_stride=8, multi_grid=(1, 2, 4))
    rng = np.random.default_rng(10)
    model.set_weights([rng.normal(0, np.sqrt(2 / np.prod(w.shape[:-1])), w.shape)
                       if len(w.shape) == 4 else w for w in model.get_weights()])
    randomize_bn(model)
    x = np.random.default_rng(9).normal(size=(1, 33, 41, 3)).astype("float32")
    if keras.backend.backend() == "jax":
        import jax

        forward = jax.jit(lambda *state: model.stateless_call(*state, training=False)[0])
        outputs = forward([v.value for v in model.trainable_variables],
                          [v.value for v in model.non_trainable_variables], x)
    else:
        outputs = model(x, training=False)
    expected = np_resnet(model, x, "deep", BACKBONES[TINY].blocks, (1, 2, 1, 1),
                         ((1,), (1,), (2,), (4,)))
    for actual, ref in zip(outputs, expected):
        actual = keras.ops.convert_to_numpy(actual)
        assert actual.shape == ref.shape
        err = np.abs(actual - ref).max()
        assert err <= 1e-4 * np.abs(ref).max(), err
