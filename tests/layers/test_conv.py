"""Conv2D (and its former name DilatedConv2D): same outputs and gradients as Keras' Conv2D,
with and without XLA; weight files from before the rename."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_gald.ops import conv as conv_module
from keras_gald.ops import Policy
from keras_gald.layers.conv import Conv2D, DilatedConv2D
from keras_gald.ops.conv import (
    dilated_conv2d,
    pointwise_conv2d,
    same_padding_taps,
    taps_fraction,
)
from tests.layers._helpers import assert_keras_round_trip, conv_loss_and_grads, random_input


_SIZES_RATES = [((13, 17), 2), ((33, 47), 6), ((9, 9), 4), ((9, 9), 12)]
# "taps" is SAME-only (test_taps_errors); VALID needs a non-empty output.
_CASES = [
    (method, padding, size, rate)
    for method in ("conv", "taps", "auto")
    for padding in ("SAME", "VALID")
    for size, rate in _SIZES_RATES
    if padding == "SAME" or (method != "taps" and min(size) > 2 * rate)
]


@pytest.mark.parametrize("method,padding,size,rate", _CASES)
@pytest.mark.parametrize("jit", [False, True])
def test_custom_gradient_matches_tf_convolution(method, padding, size, rate, jit):
    rng = np.random.default_rng(0)
    x = tf.constant(rng.normal(size=(2, *size, 5)).astype("float32"))
    k = tf.constant(rng.normal(size=(3, 3, 5, 7)).astype("float32"))

    def fast(x, k):
        return conv_loss_and_grads(
            lambda a, b: dilated_conv2d(a, b, (rate, rate), padding, method=method), x, k)

    if jit:
        fast = tf.function(fast, jit_compile=True)
    ours = fast(x, k)
    ref = conv_loss_and_grads(lambda a, b: tf.nn.convolution(a, b, padding=padding, dilations=rate), x, k)
    for a, b in zip(ours, ref):
        scale = float(tf.reduce_max(tf.abs(b)))
        assert float(tf.reduce_max(tf.abs(a - b))) <= 1e-5 * scale


def _assert_close_to(ours, ref, tolerance=1e-5):
    for a, b in zip(ours, ref):
        scale = float(tf.reduce_max(tf.abs(b)))
        assert float(tf.reduce_max(tf.abs(a - b))) <= tolerance * scale


@pytest.mark.parametrize("padding", ["SAME", "VALID"])
@pytest.mark.parametrize("tf_filter_grad", [True, False])
@pytest.mark.parametrize("jit", [False, True])
def test_rate_one_kernel_gradient_both_ways(kernel_policy, padding, tf_filter_grad, jit):
    # Small kernels take TF's Conv2DBackpropFilter, large ones the window matmuls.
    kernel_policy(tf_filter_grad_max_weights=10**9 if tf_filter_grad else 0)
    rng = np.random.default_rng(3)
    x = tf.constant(rng.normal(size=(2, 11, 14, 5)).astype("float32"))
    k = tf.constant(rng.normal(size=(3, 3, 5, 7)).astype("float32"))

    def fast(x, k):
        return conv_loss_and_grads(lambda a, b: dilated_conv2d(a, b, (1, 1), padding, method="conv"), x, k)

    ours = (tf.function(fast, jit_compile=True) if jit else fast)(x, k)
    ref = conv_loss_and_grads(lambda a, b: tf.nn.convolution(a, b, padding=padding), x, k)
    _assert_close_to(ours, ref)


@pytest.mark.parametrize("c_in,c_out", [(11, 4), (4, 11), (12, 12)])
@pytest.mark.parametrize("padding,rate", [("SAME", 1), ("VALID", 1), ("SAME", 3)])
@pytest.mark.parametrize("jit", [False, True])
def test_wide_kernels_run_over_channel_slices(kernel_policy, c_in, c_out, padding, rate, jit):
    # Slices of 3 with an uneven last one; input-channel slices are summed,
    # output-channel slices concatenated (the input gradient of a wide-output conv).
    kernel_policy(conv_slices=True, slice_min_channels=8, channel_slice=3)
    rng = np.random.default_rng(5)
    x = tf.constant(rng.normal(size=(2, 12, 13, c_in)).astype("float32"))
    k = tf.constant(rng.normal(size=(3, 3, c_in, c_out)).astype("float32"))

    def fast(x, k):
        return conv_loss_and_grads(
            lambda a, b: dilated_conv2d(a, b, (rate, rate), padding, method="conv"), x, k)

    ours = (tf.function(fast, jit_compile=True) if jit else fast)(x, k)
    ref = conv_loss_and_grads(lambda a, b: tf.nn.convolution(a, b, padding=padding, dilations=rate),
                          x, k)
    _assert_close_to(ours, ref)
    graph = tf.function(lambda a: conv_module.conv2d_sliced(a, k, padding, [1, rate, rate, 1]))
    convs = [op for op in graph.get_concrete_function(x).graph.get_operations()
             if op.type == "Conv2D"]
    assert len(convs) == 4  # ceil(max(c_in, c_out) / 3) slices
    # bfloat16 kernels (and narrow ones) stay one convolution.
    for kernel in (tf.cast(k, tf.bfloat16), k[:, :, :4, :4]):
        assert conv_module._sliced_channels(kernel) is None


@pytest.mark.parametrize("jit", [False, True])
def test_pointwise_conv2d_matches_tf_convolution(jit):
    rng = np.random.default_rng(4)
    x = tf.constant(rng.normal(size=(3, 7, 10, 6)).astype("float32"))
    k = tf.constant(rng.normal(size=(1, 1, 6, 9)).astype("float32"))

    def fast(x, k):
        return conv_loss_and_grads(pointwise_conv2d, x, k)

    ours = (tf.function(fast, jit_compile=True) if jit else fast)(x, k)
    _assert_close_to(ours, conv_loss_and_grads(lambda a, b: tf.nn.convolution(a, b), x, k))
    dynamic = tf.TensorSpec((None, None, None, 6), tf.float32)
    graph = tf.function(lambda t: conv_loss_and_grads(pointwise_conv2d, t, k)).get_concrete_function(dynamic)
    _assert_close_to(graph(x), conv_loss_and_grads(lambda a, b: tf.nn.convolution(a, b), x, k))


def test_taps_geometry():
    # Rate 36 on a 64-pixel side: the outer taps read 28 of 64 rows / columns.
    taps = same_padding_taps(64, 64, (3, 3), (36, 36))
    assert len(taps) == 9
    assert taps[0] == (0, 0, 36, 64, 36, 64, -36, -36)
    assert taps[4] == (1, 1, 0, 64, 0, 64, 0, 0)
    assert taps_fraction(64, 64, (3, 3), (36, 36)) == pytest.approx((64 + 2 * 28) ** 2 / (9 * 64**2))
    # Rate >= the side: only the centre tap reads the image.
    assert [t[:2] for t in same_padding_taps(9, 9, (3, 3), (12, 12))] == [(1, 1)]
    assert taps_fraction(128, 128, (3, 3), (2, 2)) > Policy().taps_max_fraction  # backbone: conv


def _ops(fn, *args):
    return {op.type for op in tf.function(fn).get_concrete_function(*args).graph.get_operations()}


def test_auto_picks_taps_only_where_most_taps_read_padding():
    k = tf.zeros((3, 3, 4, 6))
    small = tf.TensorSpec((1, 32, 32, 4), tf.float32)  # fractions 0.56 and 0.92
    assert "Conv2D" not in _ops(lambda x: dilated_conv2d(x, k, (12, 12), "SAME"), small)
    assert "Conv2D" in _ops(lambda x: dilated_conv2d(x, k, (2, 2), "SAME"), small)
    dynamic = tf.TensorSpec((1, None, None, 4), tf.float32)
    assert "Conv2D" in _ops(lambda x: dilated_conv2d(x, k, (12, 12), "SAME"), dynamic)


@pytest.mark.parametrize("direct_forward", [True, False])
def test_bfloat16_taps_forward_by_the_direct_conv(kernel_policy, direct_forward):
    # bfloat16 on CPU: the taps path's forward is one dilated tf.nn.conv2d,
    # its gradient still the per-tap matmuls; both agree with float64.
    kernel_policy(taps_direct_forward_bf16=direct_forward)
    rng = np.random.default_rng(6)
    x64 = rng.normal(size=(2, 9, 11, 8))
    k64 = rng.normal(size=(3, 3, 8, 6)) / np.sqrt(72)
    x, k = tf.constant(x64, tf.bfloat16), tf.constant(k64, tf.bfloat16)

    def forward(a, b):
        return dilated_conv2d(a, b, (6, 6), "SAME", method="taps")

    graph = tf.function(forward).get_concrete_function(x, k).graph
    forward_ops = [op.type for op in graph.get_operations()]
    assert ("Conv2D" in forward_ops) == direct_forward
    assert ("MatMul" in forward_ops) != direct_forward
    # Only the centre tap reads a 9x11 map at rate 12: one matmul, no direct conv.
    centre_only = tf.function(lambda a, b: dilated_conv2d(a, b, (12, 12), "SAME", method="taps"))
    assert "Conv2D" not in [op.type for op in
                            centre_only.get_concrete_function(x, k).graph.get_operations()]
    ours = tf.function(lambda a, b: conv_loss_and_grads(forward, a, b))(x, k)
    exact = conv_loss_and_grads(
        lambda a, b: tf.nn.convolution(a, b, padding="SAME", dilations=6),
        tf.cast(x, tf.float64), tf.cast(k, tf.float64))
    for name, a, e in zip(("values", "d/dx", "d/dk"), ours, exact):
        assert a.dtype == tf.bfloat16, name
        a, e = a.numpy().astype(np.float64), e.numpy()
        assert np.abs(a - e).max() <= 2e-2 * np.abs(e).max(), name


def test_taps_errors():
    x, k = tf.zeros((1, 9, 9, 2)), tf.zeros((3, 3, 2, 2))
    with pytest.raises(ValueError, match='needs padding="SAME"'):
        dilated_conv2d(x, k, (2, 2), "VALID", method="taps")
    with pytest.raises(ValueError, match="method must be one of"):
        dilated_conv2d(x, k, (2, 2), "SAME", method="fast")
    dynamic = tf.TensorSpec((1, None, None, 2), tf.float32)
    with pytest.raises(ValueError, match="static H, W"):
        tf.function(lambda t: dilated_conv2d(t, k, (2, 2), "SAME", method="taps")
                    ).get_concrete_function(dynamic)


@pytest.mark.parametrize(
    "kernel_size,rate,padding,strides",
    [(3, 2, "same", 1), (3, 1, "same", 1), (1, 1, "valid", 1), (1, 1, "same", 1),
     (1, 1, "valid", 2), (3, 1, "valid", 2), (3, 3, "valid", 1), (2, 2, "same", 1)],
)
def test_layer_matches_keras_conv2d(kernel_size, rate, padding, strides):
    x = tf.constant(random_input((2, 15, 21, 4), seed=1))
    kwargs = dict(padding=padding, dilation_rate=rate, strides=strides)
    ours = Conv2D(6, kernel_size, **kwargs)
    ref = keras.layers.Conv2D(6, kernel_size, **kwargs)
    ours.build(x.shape)
    ref.build(x.shape)
    ref.set_weights(ours.get_weights())
    np.testing.assert_allclose(ours(x), ref(x), atol=1e-5)
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(x)
        a = tf.reduce_sum(ours(x) ** 2)
        b = tf.reduce_sum(ref(x) ** 2)
    grads_a = tape.gradient(a, [x, *ours.trainable_weights])
    grads_b = tape.gradient(b, [x, *ref.trainable_weights])
    for ga, gb in zip(grads_a, grads_b):
        np.testing.assert_allclose(ga, gb, rtol=1e-4, atol=1e-3)


def test_serialization_round_trip(tmp_path):
    inputs = keras.Input((None, None, 3))
    model = keras.Model(inputs, DilatedConv2D(4, 3, padding="same", dilation_rate=3)(inputs))
    x = random_input((1, 11, 13, 3), seed=2)
    assert_keras_round_trip(model, tmp_path / "m.keras", [x], DilatedConv2D, predict=False)


@pytest.mark.parametrize("kernel_size,rate", [(3, 2), (3, 1), (1, 1)])
def test_bfloat16(kernel_size, rate):
    # Every gradient path (window matmuls, TF's filter gradient, pointwise matmuls).
    layer = DilatedConv2D(4, kernel_size, padding="same", dilation_rate=rate,
                          dtype="mixed_bfloat16")
    ref = keras.layers.Conv2D(4, kernel_size, padding="same", dilation_rate=rate)
    x = tf.random.normal((1, 9, 9, 3), seed=5)
    layer.build(x.shape)
    ref.build(x.shape)
    ref.set_weights(layer.get_weights())
    with tf.GradientTape(persistent=True) as tape:
        y = layer(x)
        loss = tf.reduce_sum(tf.cast(y, tf.float32) ** 2)
        loss_ref = tf.reduce_sum(ref(x) ** 2)
    assert y.dtype == tf.bfloat16
    grads = tape.gradient(loss, layer.trainable_weights)
    for g, g_ref in zip(grads, tape.gradient(loss_ref, ref.trainable_weights)):
        assert g.dtype == tf.float32
        np.testing.assert_allclose(g, g_ref, rtol=0.05, atol=0.05 * float(tf.reduce_max(tf.abs(g_ref))))


def numpy_conv_same_or_valid(x, k, stride, padding, rate):
    """Float64 conv with TF's padding ("same": any odd row/column at the end)."""
    x, k = np.asarray(x, np.float64), np.asarray(k, np.float64)
    kh, kw = k.shape[:2]
    pads = []
    for n, kk in zip(x.shape[1:3], (kh, kw)):
        out = -(-n // stride)
        total = max((out - 1) * stride + (kk - 1) * rate + 1 - n, 0) if padding == "same" else 0
        pads.append((total // 2, total - total // 2))
    xp = np.pad(x, [(0, 0), *pads, (0, 0)])
    oh = (xp.shape[1] - (kh - 1) * rate - 1) // stride + 1
    ow = (xp.shape[2] - (kw - 1) * rate - 1) // stride + 1
    return sum(
        xp[:, i * rate:i * rate + (oh - 1) * stride + 1:stride,
           j * rate:j * rate + (ow - 1) * stride + 1:stride] @ k[i, j]
        for i in range(kh) for j in range(kw)
    )


@pytest.mark.jax
@pytest.mark.parametrize(
    "cls,kernel_size,rate,padding,stride",
    [(Conv2D, 3, 2, "same", 1), (Conv2D, 3, 1, "same", 2), (DilatedConv2D, 1, 1, "valid", 1)],
    ids=["dilated", "strided", "pointwise_old_name"],
)
def test_layer_matches_float64_on_every_backend(cls, kernel_size, rate, padding, stride):
    x = random_input((1, 9, 10, 3), seed=6)
    layer = cls(4, kernel_size, padding=padding, dilation_rate=rate, strides=stride)
    y = keras.ops.convert_to_numpy(layer(x))
    kernel, bias = (np.asarray(keras.ops.convert_to_numpy(w), np.float64) for w in layer.weights)
    expected = numpy_conv_same_or_valid(x, kernel, stride, padding, rate) + bias
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.jax
def test_registered_names_and_round_trip(tmp_path):
    assert keras.saving.get_registered_name(Conv2D) == "keras_gald>Conv2D"
    assert keras.saving.get_registered_name(DilatedConv2D) == "keras_gald>DilatedConv2D"
    assert issubclass(DilatedConv2D, Conv2D) and issubclass(Conv2D, keras.layers.Conv2D)
    inputs = keras.Input((None, None, 3))
    y = Conv2D(4, 3, padding="same", dilation_rate=2, name="new")(inputs)
    y = DilatedConv2D(2, 1, name="old")(y)
    model = keras.Model(inputs, y)
    model.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras")
    assert type(loaded.get_layer("new")) is Conv2D
    assert type(loaded.get_layer("old")) is DilatedConv2D
    x = random_input((1, 7, 8, 3), seed=7)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(loaded(x)),
                                  keras.ops.convert_to_numpy(model(x)))


def _mixed_model(conv_class, seed):
    # Keras' Conv2D between ours, as in the heads: weight files key convs on the
    # class name and its rank among the model's layers of that name.
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((None, None, 3))
    y = conv_class(4, 3, padding="same", dilation_rate=2)(inputs)
    y = keras.layers.Conv2D(5, 1)(y)
    y = conv_class(2, 3, padding="same")(y)
    return keras.Model(inputs, y)


@pytest.mark.jax
def test_weight_files_saved_before_the_rename_load_into_conv2d_models(tmp_path):
    old = _mixed_model(DilatedConv2D, seed=1)
    new = _mixed_model(Conv2D, seed=2)
    x = random_input((1, 6, 7, 3), seed=8)
    old.save_weights(tmp_path / "old.weights.h5")
    new.load_weights(tmp_path / "old.weights.h5")
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(new(x)),
                                  keras.ops.convert_to_numpy(old(x)))
    assert Conv2D(1, 1).name.startswith("dilated_conv2d")  # unnamed layers keep their names
