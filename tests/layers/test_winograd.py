"""Winograd F(2x2, 3x3): values and gradients against a float64 conv, the choice
`dilated_conv2d(method="auto")` makes, and the plain-TF paths it leaves alone."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_gald.ops.portable import portable_ops
from keras_gald.layers.conv import DilatedConv2D
from keras_gald.ops.conv import (
    dilated_conv2d,
    winograd_fraction,
    winograd_input_bytes,
)
from keras_gald.ops.winograd import extended_size, winograd_conv3x3
from tests.harness import assert_close_relative
from tests.layers._helpers import (
    bf16_matmul_error,
    conv_loss_and_grads,
    numpy_conv_loss_and_grads,
    random_input,
    xla_calls,
)


# (N, H, W, C_in, C_out, rate): even and odd sizes, maps not a multiple of 2r
# (zero-extended), rates past the map (only the centre tap reads the image).
_CASES = [
    (1, 8, 8, 3, 5, 1),
    (2, 7, 11, 4, 6, 1),
    (1, 13, 10, 3, 4, 2),
    (2, 9, 9, 2, 3, 4),
    (1, 6, 17, 3, 2, 3),
    (1, 5, 5, 2, 2, 12),
]


@pytest.mark.parametrize("case", _CASES)
@pytest.mark.parametrize("mode", ["eager", "graph", "xla"])
def test_matches_float64_conv_values_and_gradients(case, mode):
    # The reference is float64 NumPy, not tf.nn.conv2d(dilations=r): TF's CPU
    # backprop kernels take dilations only when oneDNN is on (AVX-512-class CPUs
    # by default), so a TF reference would pass or fail with the machine.
    n, h, w, c_in, c_out, rate = case
    x = tf.constant(random_input((n, h, w, c_in), seed=1))
    k = tf.constant(random_input((3, 3, c_in, c_out), seed=2))

    def winograd(x, k):
        return winograd_conv3x3(x, k, rate)

    if mode != "eager":
        winograd = tf.function(winograd, jit_compile=mode == "xla")
        if mode == "graph":  # the transforms are XLA-compiled calls inside the graph
            assert xla_calls(winograd.get_concrete_function(x, k))
    expected = numpy_conv_loss_and_grads(x.numpy(), k.numpy(), rate)
    got = conv_loss_and_grads(winograd, x, k)
    for a, b in zip(got, expected):
        assert a.shape == b.shape
        assert_close_relative(a.numpy(), b, rtol=1e-5)


def _rms_error(actual, expected):
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    return np.sqrt(np.mean((actual - expected) ** 2) / np.mean(expected**2))


@pytest.mark.parametrize("rate", [1, 3])
@pytest.mark.parametrize("mode", ["eager", "graph"])
def test_bfloat16_rounds_about_as_much_as_the_machines_bf16_kernels(rate, mode):
    # How much a bf16 conv rounds depends on the CPU: oneDNN's kernels round once,
    # TF's Eigen kernels (oneDNN off: AVX2-only CPUs by default) round partial
    # sums too. So the bound is measured here, on this machine: Winograd rounds
    # three tensors of about the output's scale to bf16 (the input tiles, the
    # transformed kernel, the matmul results; the transforms add in float32)
    # where the direct conv rounds one, and its matmuls round as this machine's
    # bf16 matmul does. Errors adding linearly in the worst case, it stays below
    # 3x the larger of the direct bf16 conv's and the bf16 matmul's own error
    # against float64. With the transforms adding in bf16 it fails where oneDNN
    # is on (checked); Eigen's bf16 kernels round too coarsely to tell.
    x64 = np.maximum(random_input((2, 12, 10, 32), seed=5), 0).astype(np.float64)
    k64 = random_input((3, 3, 32, 24), seed=6).astype(np.float64) / np.sqrt(9 * 32)
    x, k = tf.constant(x64, tf.bfloat16), tf.constant(k64, tf.bfloat16)

    def direct(x, k):
        # Space-to-batch for rate > 1: TF's CPU bf16 backprop kernels take no dilation.
        return tf.nn.convolution(x, k, padding="SAME", dilations=rate)

    def winograd(x, k):
        return winograd_conv3x3(x, k, rate)

    if mode == "graph":
        winograd = tf.function(winograd)
        assert xla_calls(winograd.get_concrete_function(x, k))
    # The float64 reference at the bf16-rounded inputs: both paths see those.
    x_rounded = tf.cast(x, tf.float64).numpy()
    exact = numpy_conv_loss_and_grads(x_rounded, tf.cast(k, tf.float64).numpy(), rate)
    err_matmul = bf16_matmul_error(x_rounded.reshape(-1, 32), k64[1, 1])
    reference = conv_loss_and_grads(direct, x, k)
    got = conv_loss_and_grads(winograd, x, k)
    for name, a, b, e in zip(("values", "d/dx", "d/dk"), got, reference, exact):
        assert a.dtype == tf.bfloat16, name
        err = _rms_error(a.numpy().astype(np.float64), e)
        err_direct = _rms_error(b.numpy().astype(np.float64), e)
        assert err < 3 * max(err_direct, err_matmul), (name, err, err_direct, err_matmul)


def test_tile_geometry():
    assert [extended_size(s, r) for s, r in [(64, 1), (65, 1), (64, 12), (64, 24), (64, 36)]] == [
        64, 66, 72, 96, 72]
    assert winograd_fraction(64, 64, 1) == pytest.approx(4 / 9)
    assert winograd_fraction(64, 64, 24) == pytest.approx(4 / 9 * (96 / 64) ** 2)


def test_winograd_errors():
    x = tf.zeros((1, 9, 9, 2))
    with pytest.raises(ValueError, match="needs a 3x3 kernel"):
        dilated_conv2d(x, tf.zeros((5, 5, 2, 2)), (1, 1), "SAME", method="winograd")
    with pytest.raises(ValueError, match="equal rates"):
        dilated_conv2d(x, tf.zeros((3, 3, 2, 2)), (1, 2), "SAME", method="winograd")
    with pytest.raises(ValueError, match='padding="SAME"'):
        dilated_conv2d(x, tf.zeros((3, 3, 2, 2)), (2, 2), "VALID", method="winograd")
    dynamic = tf.TensorSpec((1, None, None, 2), tf.float32)
    with pytest.raises(ValueError, match="static H, W"):
        tf.function(lambda t: dilated_conv2d(t, tf.zeros((3, 3, 2, 2)), (2, 2), "SAME",
                                             method="winograd")).get_concrete_function(dynamic)


def _ops(fn, spec):
    concrete = tf.function(fn).get_concrete_function(spec)
    return {op.type for op in concrete.graph.get_operations()}, bool(xla_calls(concrete))


def test_auto_choice(kernel_policy):
    k = tf.zeros((3, 3, 16, 16))  # 256 weights per tap
    spec = tf.TensorSpec((1, 32, 32, 16), tf.float32)

    def conv(rate, kernel=k):
        return lambda x: dilated_conv2d(x, kernel, (rate, rate), "SAME")

    # Below WINOGRAD_MIN_WEIGHTS: the direct conv.
    ops, xla = _ops(conv(1), spec)
    assert "Conv2D" in ops and not xla
    kernel_policy(winograd=True, winograd_min_weights=16 * 16, winograd_min_pixels=512)
    for rate in (1, 2, 8):  # 4/9 of the work on a 32x32 map (1.3 * 0.44 < 1)
        ops, xla = _ops(conv(rate), spec)
        assert "Conv2D" not in ops and "BatchMatMulV2" in ops and xla, rate
    # Rate 12 on 32x32: the taps read 0.56 of the dense work, Winograd would
    # do 4/9 of a 48x48 extension (1.0): the taps stay.
    ops, xla = _ops(conv(12), spec)
    assert not xla and "Conv2D" not in ops
    # bfloat16 has its own threshold; float16 never takes Winograd on CPU.
    for dtype in (tf.bfloat16, tf.float16):
        ops, xla = _ops(conv(1, tf.cast(k, dtype)), tf.TensorSpec((1, 32, 32, 16), dtype))
        assert "Conv2D" in ops and not xla, dtype
    kernel_policy(winograd_bf16=True, winograd_min_weights_bf16=16 * 16)
    ops, xla = _ops(conv(1, tf.cast(k, tf.bfloat16)), tf.TensorSpec((1, 32, 32, 16), tf.bfloat16))
    assert "Conv2D" not in ops and "BatchMatMulV2" in ops and xla
    ops, xla = _ops(conv(1, tf.cast(k, tf.float16)), tf.TensorSpec((1, 32, 32, 16), tf.float16))
    assert "Conv2D" in ops and not xla
    # On 32x32 the taps read 0.84 of the dense work at rate 4 and 0.69 at rate
    # 8: bf16's cost per multiply-add (1.8 * 4/9 = 0.8) wins only at rate 4,
    # float32's (1.3 * 4/9 = 0.58) at both (above).
    for rate, expected in ((4, True), (8, False)):
        ops, xla = _ops(conv(rate, tf.cast(k, tf.bfloat16)),
                        tf.TensorSpec((1, 32, 32, 16), tf.bfloat16))
        assert xla == expected, rate
    # Not for 5x5 kernels, a dynamic size, eager calls or exports.
    ops, xla = _ops(conv(1, tf.zeros((5, 5, 16, 16))), spec)
    assert not xla
    ops, xla = _ops(conv(1), tf.TensorSpec((1, None, None, 16), tf.float32))
    assert "Conv2D" in ops and not xla
    with portable_ops():
        ops, xla = _ops(conv(1), spec)
    assert "Conv2D" in ops and not xla
    # Not inside a whole-function XLA compile (nested functions included).
    inner = tf.function(conv(1))
    for fn, functions in ((conv(1), 0), (lambda x: inner(x), 1)):
        graph = tf.function(fn, jit_compile=True).get_concrete_function(spec).graph
        nested = [graph] + [f.graph for f in getattr(graph, "_functions", {}).values()
                            if hasattr(f, "graph")]
        assert len(nested) > functions  # the nested function's own ops are looked at
        ops = {op.type for g in nested for op in g.get_operations()}
        assert "Conv2D" in ops and "BatchMatMulV2" not in ops, ops
    x = tf.constant(random_input((1, 32, 32, 16)))
    kernel = tf.constant(random_input((3, 3, 16, 16), seed=3))
    eager = dilated_conv2d(x, kernel, (1, 1), "SAME")
    np.testing.assert_array_equal(eager.numpy(), tf.nn.conv2d(x, kernel, 1, "SAME").numpy())


def test_auto_keeps_the_direct_conv_above_the_memory_cap(kernel_policy):
    kernel_policy(winograd=True, winograd_min_weights=1, winograd_min_pixels=512)
    assert winograd_input_bytes(1, 32, 30, 16, 1) == 16 * 16 * 15 * 16 * 4
    assert winograd_input_bytes(1, 32, 30, 16, 1, itemsize=2) == 16 * 16 * 15 * 16 * 2
    kernel_policy(winograd_max_bytes=winograd_input_bytes(1, 32, 32, 16, 1))
    k = tf.zeros((3, 3, 16, 16))

    def conv(x):
        return dilated_conv2d(x, k, (1, 1), "SAME")

    assert _ops(conv, tf.TensorSpec((1, 32, 32, 16), tf.float32))[1]
    ops, xla = _ops(conv, tf.TensorSpec((2, 32, 32, 16), tf.float32))
    assert "Conv2D" in ops and not xla
    # bfloat16 tiles take half the bytes: twice the batch fits.
    kernel_policy(winograd_bf16=True, winograd_min_weights_bf16=1)

    def conv_bf16(x):
        return dilated_conv2d(x, tf.cast(k, tf.bfloat16), (1, 1), "SAME")

    assert _ops(conv_bf16, tf.TensorSpec((2, 32, 32, 16), tf.bfloat16))[1]
    ops, xla = _ops(conv_bf16, tf.TensorSpec((3, 32, 32, 16), tf.bfloat16))
    assert "Conv2D" in ops and not xla


def test_auto_keeps_the_direct_conv_on_small_maps(kernel_policy):
    kernel_policy(winograd=True, winograd_min_weights=1, winograd_min_pixels=512)
    k = tf.zeros((3, 3, 16, 16))

    def conv(x):
        return dilated_conv2d(x, k, (1, 1), "SAME")

    assert _ops(conv, tf.TensorSpec((2, 16, 16, 16), tf.float32))[1]  # 512 pixels
    for shape in [(1, 16, 16, 16), (None, 16, 16, 16)]:  # unknown batch counts as 1
        ops, xla = _ops(conv, tf.TensorSpec(shape, tf.float32))
        assert "Conv2D" in ops and not xla, shape


def test_layer_on_winograd_matches_keras_conv2d(kernel_policy):
    kernel_policy(winograd=True, winograd_min_weights=1, winograd_min_pixels=512)
    keras.utils.set_random_seed(0)
    inputs = keras.Input((20, 14, 6))
    ours = DilatedConv2D(8, 3, padding="same", dilation_rate=2, use_bias=True)
    stock = keras.layers.Conv2D(8, 3, padding="same", dilation_rate=2, use_bias=True)
    model_ours, model_stock = keras.Model(inputs, ours(inputs)), keras.Model(inputs, stock(inputs))
    stock.set_weights([w + 0.1 for w in ours.get_weights()])
    ours.set_weights(stock.get_weights())
    x = random_input((3, 20, 14, 6), seed=4)
    step = tf.function(lambda t: model_ours(t))
    assert xla_calls(step.get_concrete_function(tf.TensorSpec((3, 20, 14, 6))))
    assert_close_relative(step(x).numpy(), model_stock(x).numpy(), rtol=1e-5)
    assert_close_relative(model_ours.predict(x, verbose=0), model_stock.predict(x, verbose=0),
                          rtol=1e-5)
