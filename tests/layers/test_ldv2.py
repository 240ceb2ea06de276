"""Tests for keras_gald.layers.ldv2 (the paper's dynamic local distribution)."""

import math
import threading

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_gald.layers.ldv2 import LDv2
from keras_gald.ops.local_attention import local_aggregate, local_logits, neighbour_offsets
from keras_gald.ops.portable import portable_ops
from keras_gald.ops import Policy
from tests.harness import assert_close_relative
from tests.layers._helpers import (
    assert_clone_matches,
    assert_keras_round_trip,
    global_policy,
    xla_calls,
)

CG, CL = 3, 5  # tiny X_g / X_l widths
SMALL = dict(key_channels=4, value_channels=6, out_channels=5)


def _inputs(batch, height, width, seed=0):
    rng = np.random.default_rng(seed)
    xg = rng.standard_normal((batch, height, width, CG)).astype("float32")
    xl = rng.standard_normal((batch, height, width, CL)).astype("float32")
    return xg, xl


def _randomize(layer, seed=1):
    """Random weights (incl. BN statistics) with a scale that keeps softmax non-trivial."""
    rng = np.random.default_rng(seed)
    values = []
    for w in layer.weights:
        shape = tuple(w.shape)
        if "moving_variance" in w.path:
            values.append(rng.uniform(0.5, 2.0, shape).astype("float32"))
        else:
            values.append(rng.standard_normal(shape).astype("float32") * 0.7)
    layer.set_weights(values)


def _pair(shape_hw, batch=2, **kwargs):
    """Built (slices, patches) layers with identical random weights."""
    xg, xl = _inputs(batch, *shape_hw)
    slices = LDv2(impl="slices", **{**SMALL, **kwargs})
    slices([xg, xl])
    _randomize(slices)
    config = slices.get_config()
    config.update(impl="patches", name="patches")
    patches = LDv2.from_config(config)
    patches([xg, xl])
    patches.set_weights(slices.get_weights())
    return slices, patches, (xg, xl)


def _values_and_grads(layer, xg, xl, cotangent, training=False):
    xg, xl = tf.constant(xg), tf.constant(xl)
    with tf.GradientTape() as tape:
        tape.watch([xg, xl])
        out = layer([xg, xl], training=training)
        loss = tf.reduce_sum(out * cotangent)
    grads = tape.gradient(loss, [xg, xl] + layer.trainable_weights)
    return out, grads


# ---------------------------------------------------------------- equivalence


@pytest.mark.parametrize("padding", ["zeros", "mask"])
@pytest.mark.parametrize("num_heads", [1, 2])
@pytest.mark.parametrize("size", [(9, 13), (5, 7)])  # odd; 5x7 < 13x13 extent (k=5, r=3)
def test_patches_and_slices_agree_values_and_gradients(padding, num_heads, size):
    slices, patches, (xg, xl) = _pair(size, padding=padding, num_heads=num_heads)
    out_shape = slices.compute_output_shape([xg.shape, xl.shape])
    cotangent = tf.constant(np.random.default_rng(2).standard_normal(out_shape), tf.float32)
    y_s, g_s = _values_and_grads(slices, xg, xl, cotangent, training=True)
    y_p, g_p = _values_and_grads(patches, xg, xl, cotangent, training=True)
    np.testing.assert_allclose(y_s.numpy(), y_p.numpy(), rtol=1e-5, atol=1e-5)
    names = ["x_global", "x_local"] + [w.path for w in slices.trainable_weights]
    assert len(g_s) == len(g_p) == 2 + 9
    for name, a, b in zip(names, g_s, g_p):
        assert a is not None and b is not None, name
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5, atol=1e-5, err_msg=name)
    np.testing.assert_allclose(
        slices.attention_weights([xg, xl]).numpy(),
        patches.attention_weights([xg, xl]).numpy(),
        rtol=1e-5,
        atol=1e-6,
    )


@pytest.mark.parametrize("padding", ["zeros", "mask"])
@pytest.mark.parametrize("num_heads", [1, 2])
def test_folded_output_projection_matches_unfolded(padding, num_heads):
    """Folding W_o into W_v (fewer channels summed) gives Eq. (8)'s numbers and
    the gradients of both kernels, per head."""
    kwargs = dict(key_channels=4, value_channels=12, out_channels=5, num_heads=num_heads)
    xg, xl = _inputs(2, 9, 13)
    folded = LDv2(padding=padding, kernel_size=3, dilation_rate=2, **kwargs)
    folded([xg, xl])
    _randomize(folded)
    unfolded = LDv2.from_config(folded.get_config())
    unfolded([xg, xl])
    unfolded.set_weights(folded.get_weights())
    cotangent = tf.constant(np.random.default_rng(2).standard_normal((2, 9, 13, 5 + CL)), tf.float32)
    assert folded.folds_output_projection
    y_f, g_f = _values_and_grads(folded, xg, xl, cotangent, training=True)
    with Policy.current().replace(ldv2_fold=False):
        assert not unfolded.folds_output_projection
        y_u, g_u = _values_and_grads(unfolded, xg, xl, cotangent, training=True)
    assert_close_relative(y_f.numpy(), y_u.numpy(), rtol=1e-5)
    names = ["x_global", "x_local"] + [w.path for w in folded.trainable_weights]
    for name, a, b in zip(names, g_f, g_u):
        assert a is not None and b is not None, name
        if padding == "mask" and name.endswith(("key_conv/bias", "value_conv/bias")):
            # Zero up to rounding on both sides: the key bias cancels in the
            # softmax; with weights summing to 1 the value bias is a constant
            # per channel that the training-mode BN subtracts.
            assert float(tf.norm(a)) < 1e-4 and float(tf.norm(b)) < 1e-4
            continue
        assert_close_relative(a.numpy(), b.numpy(), rtol=1e-5, err_msg=name)
    # Moving statistics of the output BN see the same batch either way.
    for a, b in zip(folded.non_trainable_weights, unfolded.non_trainable_weights):
        assert_close_relative(a.numpy(), b.numpy(), rtol=1e-5, err_msg=a.path)


@pytest.mark.parametrize(
    "kwargs, folds",
    [
        (dict(), True),  # 2304 -> 512 -> 256 by default: folded to 256
        (dict(impl="patches"), False),  # the reference keeps Eq. (8) literally
        (dict(output_projection=False), False),
        (dict(out_channels=512), False),  # would not narrow the values
        (dict(num_heads=2, out_channels=256), False),  # 2 x 256 = 512 values
        (dict(num_heads=2, out_channels=128), True),
    ],
)
def test_when_the_output_projection_is_folded(kwargs, folds):
    layer = LDv2(**kwargs)
    layer.build([(None, None, None, 256), (None, None, None, 2048)])
    assert layer.folds_output_projection is folds


def test_bigger_odd_map_default_geometry():
    """33x47 with the paper's k=5, r=3 and 2 heads, both impls."""
    slices, patches, (xg, xl) = _pair((33, 47), batch=1, num_heads=2)
    np.testing.assert_allclose(
        slices([xg, xl]).numpy(), patches([xg, xl]).numpy(), rtol=1e-5, atol=1e-5
    )


# ---------------------------------------------------------- NumPy reference


def _numpy_ldv2(layer, xg, xl):
    """Eq. (8) written out with loops, plus the output conv/BN(inference)/ReLU and concat."""
    w = {v.path.split("/", 1)[1]: keras.ops.convert_to_numpy(v) for v in layer.weights}
    x = np.concatenate([xg, xl], -1).astype(np.float64)
    proj = lambda name: x @ w[f"{name}/kernel"][0, 0] + w[f"{name}/bias"]
    q, k, v = proj("query_conv"), proj("key_conv"), proj("value_conv")
    n_b, height, width, _ = x.shape
    heads, ks, r = layer.num_heads, layer.kernel_size, layer.dilation_rate
    dk, dv = layer.key_channels // heads, layer.value_channels // heads
    half = (ks - 1) // 2
    att = np.zeros((n_b, height, width, heads, ks * ks))
    out = np.zeros((n_b, height, width, layer.value_channels))
    for b in range(n_b):
        for y in range(height):
            for xx in range(width):
                for h in range(heads):
                    qv = q[b, y, xx, h * dk : (h + 1) * dk]
                    logits, values, valid = [], [], []
                    for i in range(ks):
                        for j in range(ks):
                            yy, xc = y + (i - half) * r, xx + (j - half) * r
                            inside = 0 <= yy < height and 0 <= xc < width
                            kn = k[b, yy, xc, h * dk : (h + 1) * dk] if inside else np.zeros(dk)
                            vn = v[b, yy, xc, h * dv : (h + 1) * dv] if inside else np.zeros(dv)
                            logits.append(qv @ kn / math.sqrt(dk))
                            values.append(vn)
                            valid.append(inside)
                    logits = np.array(logits)
                    if layer.padding == "mask":
                        logits = np.where(valid, logits, -np.inf)
                    e = np.exp(logits - logits.max())
                    a = e / e.sum()
                    att[b, y, xx, h] = a
                    out[b, y, xx, h * dv : (h + 1) * dv] = a @ np.array(values)
    z = out @ w["out_conv/kernel"][0, 0]
    z = (z - w["out_bn/moving_mean"]) / np.sqrt(w["out_bn/moving_variance"] + 1e-5)
    z = np.maximum(z * w["out_bn/gamma"] + w["out_bn/beta"], 0.0)
    return np.concatenate([z, xl], -1), att


@pytest.mark.parametrize("padding", ["zeros", "mask"])
@pytest.mark.parametrize("impl", ["slices", "patches"])
@pytest.mark.parametrize("num_heads", [1, 2])
def test_matches_numpy_reference_of_eq8(padding, impl, num_heads):
    # 4x5 map with k=3, r=3: the dilated extent (7) exceeds both sides.
    xg, xl = _inputs(2, 4, 5, seed=3)
    layer = LDv2(
        kernel_size=3, dilation_rate=3, padding=padding, impl=impl, num_heads=num_heads, **SMALL
    )
    layer([xg, xl])
    _randomize(layer, seed=4)
    expected, expected_att = _numpy_ldv2(layer, xg, xl)
    got = layer([xg, xl], training=False).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    att = layer.attention_weights([xg, xl]).numpy()
    assert att.shape == (2, 4, 5, num_heads, 9) and att.dtype == np.float32
    np.testing.assert_allclose(att, expected_att, rtol=1e-5, atol=1e-6)
    # Corner (0, 0): only neighbours with offsets >= 0 lie inside the image.
    offsets = neighbour_offsets(3, 3)
    outside = [n for n, (dy, dx) in enumerate(offsets) if dy < 0 or dx < 0]
    if padding == "mask":
        assert np.all(att[:, 0, 0, :, outside] == 0.0)
    else:
        assert np.all(att[:, 0, 0, :, outside] > 0.0)


@pytest.mark.jax
# 12 values over 2 heads: the slices fold the output conv into the value
# projection (2 x 5 < 12); 6 values: Eq. (8) literally.
@pytest.mark.parametrize("padding, value_channels", [("zeros", 12), ("mask", 6)])
def test_slices_and_patches_match_eq8_on_every_backend(padding, value_channels):
    """On TF and on JAX: both impls equal the NumPy Eq. (8), outputs and affinities."""
    xg, xl = _inputs(2, 5, 7, seed=3)
    layer = LDv2(kernel_size=3, dilation_rate=2, padding=padding, num_heads=2,
                 **{**SMALL, "value_channels": value_channels})
    layer([xg, xl])
    _randomize(layer, seed=4)
    assert layer.folds_output_projection is (value_channels == 12)
    patches = LDv2.from_config({**layer.get_config(), "impl": "patches", "name": "patches"})
    patches([xg, xl])
    patches.set_weights(layer.get_weights())
    expected, expected_att = _numpy_ldv2(layer, xg, xl)
    for impl in (layer, patches):
        got = keras.ops.convert_to_numpy(impl([xg, xl], training=False))
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5, err_msg=impl.impl)
        att = keras.ops.convert_to_numpy(impl.attention_weights([xg, xl]))
        np.testing.assert_allclose(att, expected_att, rtol=1e-5, atol=1e-6, err_msg=impl.impl)


def _input_gradients(layer, xg, xl, cotangent):
    """d sum(layer([xg, xl]) * cotangent) / d(xg, xl), on the current backend."""
    if keras.backend.backend() == "jax":
        import jax

        loss = lambda a, b: keras.ops.sum(layer([a, b], training=False) * cotangent)  # noqa: E731
        return jax.jit(jax.grad(loss, argnums=(0, 1)))(xg, xl)
    _, grads = _values_and_grads(layer, xg, xl, tf.constant(cotangent))
    return grads[:2]


@pytest.mark.jax
def test_slices_and_patches_input_gradients_agree_on_every_backend():
    """Gradients through the whole layer (folded output conv, masked softmax):
    the slices' (TF: custom; JAX: autodiff of the scan) equal the reference's."""
    slices, patches, (xg, xl) = _pair((5, 7), padding="mask", num_heads=2, value_channels=12)
    assert slices.folds_output_projection
    cotangent = np.random.default_rng(2).standard_normal((2, 5, 7, 5 + CL)).astype("float32")
    got = _input_gradients(slices, xg, xl, cotangent)
    want = _input_gradients(patches, xg, xl, cotangent)
    for name, a, b in zip(("x_global", "x_local"), got, want):
        assert_close_relative(keras.ops.convert_to_numpy(a), keras.ops.convert_to_numpy(b),
                              rtol=1e-5, err_msg=name)


def test_zero_padding_neighbours_have_zero_logit():
    """padding="zeros": out-of-image neighbours share one weight exp(0)/Z per position."""
    xg, xl = _inputs(1, 2, 2, seed=5)
    layer = LDv2(kernel_size=3, dilation_rate=2, **SMALL)
    layer([xg, xl])
    _randomize(layer)
    att = layer.attention_weights([xg, xl]).numpy()[0, 0, 0, 0]
    # 2x2 map, r=2: only the centre (n=4) is inside, the other 8 are padding.
    centre = att[4]
    np.testing.assert_allclose(att[[0, 1, 2, 3, 5, 6, 7, 8]], (1 - centre) / 8, rtol=1e-6)


# --------------------------------------------------- memory of the slices grad


def _largest_op_footprint(graph):
    """max over ops of max(output elements, summed input elements)."""
    def size(t):
        return t.shape.num_elements() or 0
    best = 0
    for op in graph.get_operations():
        ins = sum(size(t) for t in op.inputs if t.dtype == tf.float32)
        outs = max([size(t) for t in op.outputs] or [0])
        best = max(best, ins, outs)
    return best


@pytest.mark.parametrize("impl", ["slices", "patches"])
def test_slices_never_builds_n_k2_c_tensors(impl):
    """Forward + backward graph: no op holds (or sums) k^2 feature-sized tensors."""
    n, height, width, heads, d = 1, 16, 16, 1, 32
    ks, r = 5, 1
    offsets, pad = neighbour_offsets(ks, r), (ks - 1) // 2 * r
    spec = tf.TensorSpec((n, height, width, heads, d), tf.float32)
    layer = LDv2(kernel_size=ks, dilation_rate=r, impl="patches", key_channels=d, value_channels=d)

    @tf.function(input_signature=[spec] * 3)
    def fwd_bwd(q, k, v):
        with tf.GradientTape() as tape:
            tape.watch([q, k, v])
            if impl == "slices":
                w = tf.nn.softmax(local_logits(q, k, offsets, pad))
                out = local_aggregate(w, v, offsets, pad)
            else:
                w = tf.nn.softmax(layer._logits(q, k))
                out = layer._aggregate(w, v)
            loss = tf.reduce_sum(out * out)
        return tape.gradient(loss, [q, k, v])

    graph = fwd_bwd.get_concrete_function().graph
    n_k2_c = n * height * width * ks * ks * d
    footprint = _largest_op_footprint(graph)
    if impl == "slices":
        assert footprint < n_k2_c // 4, footprint
    else:  # the check itself can fail: the reference does materialise them
        assert footprint >= n_k2_c


def test_slices_products_run_one_at_a_time():
    """Each feature-sized neighbour product waits (control edge) for the previous
    neighbour's sum, so TF's executor never holds many of them at once (the memory
    figures in the README); only the first product of each loop starts freely."""
    n, height, width, heads, d = 1, 8, 8, 1, 16
    ks, r = 5, 1
    offsets, pad = neighbour_offsets(ks, r), (ks - 1) // 2 * r
    spec = tf.TensorSpec((n, height, width, heads, d), tf.float32)

    @tf.function(input_signature=[spec] * 3)
    def fwd_bwd(q, k, v):
        with tf.GradientTape() as tape:
            tape.watch([q, k, v])
            w = tf.nn.softmax(local_logits(q, k, offsets, pad))
            loss = tf.reduce_sum(local_aggregate(w, v, offsets, pad))
        return tape.gradient(loss, [q, k, v])

    products = [op for op in fwd_bwd.get_concrete_function().graph.get_operations()
                if op.type == "Mul" and op.outputs[0].shape.num_elements() == n * height * width * d]
    def waits(op, depth=4):
        # TF puts the control edge on the ops made in the context that have no
        # ordered input (here the slice bounds), so look a few data hops up.
        if op.control_inputs:
            return True
        return depth > 0 and any(waits(t.op, depth - 1) for t in op.inputs)

    ordered = [op for op in products if waits(op)]
    loops = 6  # forward: logits, aggregate; backward: 2 per primitive
    assert len(products) >= loops * ks * ks
    assert len(ordered) >= len(products) - loops - 2, (len(ordered), len(products))


# ------------------------------------------------------------ model features


def test_dynamic_shape_functional_model():
    gi, li = keras.Input((None, None, CG)), keras.Input((None, None, CL))
    layer = LDv2(**SMALL)
    out = layer([gi, li])
    assert tuple(out.shape) == (None, None, None, 5 + CL)
    model = keras.Model([gi, li], out)
    _randomize(layer)
    for batch, size in [(1, (33, 47)), (3, (5, 7)), (2, (1, 1))]:
        xg, xl = _inputs(batch, *size)
        y = model([xg, xl])
        assert tuple(y.shape) == (batch, *size, 5 + CL)
        np.testing.assert_allclose(y.numpy(), layer([xg, xl]).numpy(), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize(
    "kwargs, channels",
    [
        ({}, 5 + CL),
        ({"combine": "none"}, 5),
        ({"out_channels": None}, CG + CL),
        ({"output_projection": False, "out_channels": None, "combine": "none"}, 6),
    ],
)
def test_output_channels_and_compute_output_shape(kwargs, channels):
    xg, xl = _inputs(1, 7, 9)
    layer = LDv2(**{**SMALL, **kwargs})
    y = layer([xg, xl])
    assert tuple(y.shape) == (1, 7, 9, channels)
    shapes = [(None, 7, 9, CG), (None, 7, 9, CL)]
    assert layer.compute_output_shape(shapes) == (None, 7, 9, channels)


def test_combine_none_is_the_x_gald_part_of_concat():
    xg, xl = _inputs(2, 6, 5)
    cat = LDv2(**SMALL)
    cat([xg, xl])
    _randomize(cat)
    none = LDv2.from_config({**cat.get_config(), "combine": "none", "name": "n"})
    none([xg, xl])
    none.set_weights(cat.get_weights())
    y_cat, y_none = cat([xg, xl]).numpy(), none([xg, xl]).numpy()
    np.testing.assert_array_equal(y_cat[..., :5], y_none)
    np.testing.assert_array_equal(y_cat[..., 5:], xl)


def test_default_param_count_matches_docstring():
    layer = LDv2()
    layer.build([(None, None, None, 256), (None, None, None, 2048)])
    assert layer.count_params() == 2_492_416
    assert sum(int(np.prod(w.shape)) for w in layer.trainable_weights) == 2_491_904
    assert "2,492,416" in LDv2.__doc__


def test_get_config_and_keras_round_trip(tmp_path):
    gi, li = keras.Input((None, None, CG)), keras.Input((None, None, CL))
    layer = LDv2(num_heads=2, padding="mask", kernel_size=3, dilation_rate=2, **SMALL)
    model = keras.Model([gi, li], layer([gi, li]))
    _randomize(layer)
    xg, xl = _inputs(2, 9, 7)
    assert_clone_matches(layer, [xg, xl])
    assert_keras_round_trip(model, tmp_path / "ldv2.keras", [[xg, xl]], LDv2, layer=layer,
                            predict=False)


@pytest.mark.parametrize("padding", ["zeros", "mask"])
def test_gradients_reach_every_trainable_weight(padding):
    xg, xl = _inputs(2, 7, 9)
    layer = LDv2(padding=padding, **SMALL)
    cotangent = tf.constant(np.random.default_rng(0).standard_normal((2, 7, 9, 5 + CL)), tf.float32)
    _, grads = _values_and_grads(layer, xg, xl, cotangent, training=True)
    assert len(layer.trainable_weights) == 9
    for w, g in zip(layer.trainable_weights, grads[2:]):
        assert g is not None, w.path
        norm = float(tf.norm(g))
        if padding == "mask" and w.path.endswith("key_conv/bias"):
            # q . b_k is the same for every neighbour: it cancels in the softmax.
            assert norm < 1e-5, (w.path, norm)
        else:
            assert norm > 1e-6, (w.path, norm)


@pytest.fixture
def bfloat16_policy():
    with global_policy("mixed_bfloat16"):
        yield


@pytest.mark.parametrize("impl", ["slices", "patches"])
def test_mixed_bfloat16(bfloat16_policy, impl):
    xg, xl = _inputs(2, 9, 7)
    layer = LDv2(impl=impl, num_heads=2, **SMALL)
    y = layer([xg, xl])
    assert layer.compute_dtype == "bfloat16"
    assert y.dtype == tf.bfloat16
    assert all(w.dtype == "float32" for w in layer.weights)
    for sub in (layer.query_conv, layer.key_conv, layer.value_conv, layer.out_conv, layer.out_bn):
        assert sub.dtype_policy.name == "mixed_bfloat16"
    att = layer.attention_weights([xg, xl])
    assert att.dtype == tf.float32
    np.testing.assert_allclose(att.numpy().sum(-1), 1.0, rtol=1e-6)
    _randomize(layer)
    weights = layer.get_weights()
    keras.mixed_precision.set_global_policy("float32")
    ref = LDv2(impl=impl, num_heads=2, **SMALL)
    ref([xg, xl])
    ref.set_weights(weights)
    expected = ref([xg, xl]).numpy()
    got = layer([xg, xl]).numpy().astype("float32")
    assert np.all(np.isfinite(got))
    np.testing.assert_allclose(got, expected, rtol=0.1, atol=0.1 * np.abs(expected).max())
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(tf.cast(layer([xg, xl], training=True), tf.float32))
    grads = tape.gradient(loss, layer.trainable_weights)
    assert all(g is not None and np.all(np.isfinite(g.numpy())) for g in grads)


def _step_fn(layer, cot):
    """`(x_global, x_local) -> [y, d/dx_global, d/dx_local, d/dweights...]` of sum(y * cot)."""

    def step(a, b):
        with tf.GradientTape() as tape:
            tape.watch([a, b])
            y = layer([a, b], training=False)
            loss = tf.reduce_sum(y * cot)
        return [y] + tape.gradient(loss, [a, b] + layer.trainable_weights)

    return step


@pytest.mark.parametrize("impl", ["slices", "patches"])
def test_jit_compile_matches_eager(impl):
    xg, xl = _inputs(2, 9, 7)
    # padding="zeros": under "mask" the key-bias gradient is exactly 0 and only rounding noise.
    layer = LDv2(impl=impl, num_heads=2, padding="zeros", **SMALL)
    layer([xg, xl])
    _randomize(layer)
    cot = tf.constant(np.random.default_rng(3).standard_normal((2, 9, 7, 5 + CL)), tf.float32)
    step = _step_fn(layer, cot)
    eager = step(tf.constant(xg), tf.constant(xl))
    jitted = tf.function(step, jit_compile=True)(tf.constant(xg), tf.constant(xl))
    assert len(eager) == len(jitted) == 1 + 2 + 9
    for a, b in zip(eager, jitted):
        # XLA re-associates float32 sums: equal up to rounding, relative to each tensor's scale.
        assert_close_relative(b.numpy(), a.numpy(), rtol=1e-5)


def _graph_step(layer, cot):
    return tf.function(_step_fn(layer, cot))


@pytest.mark.parametrize("padding", ["zeros", "mask"])
def test_jit_slices_matches_plain_graph_and_reference(padding):
    """jit_slices=True (XLA-compiled primitives inside an ordinary graph) gives the
    values and gradients of the plain slices graph and of the patches reference."""
    slices, patches, (xg, xl) = _pair((9, 11), num_heads=2, padding=padding)
    plain = LDv2.from_config({**slices.get_config(), "jit_slices": False, "name": "plain"})
    plain([xg, xl])
    plain.set_weights(slices.get_weights())
    assert slices.jit_slices is None and Policy.current().jit_slices and plain.jit_slices is False
    cot = tf.constant(np.random.default_rng(4).standard_normal((2, 9, 11, 5 + CL)), tf.float32)
    args = (tf.constant(xg), tf.constant(xl))

    jit_step = _graph_step(slices, cot)
    assert len(xla_calls(jit_step.get_concrete_function(*args))) >= 2  # logits, aggregate
    got = jit_step(*args)
    names = ["y", "d_xg", "d_xl"] + [w.path for w in slices.trainable_weights]
    for layer in (plain, patches):
        step = _graph_step(layer, cot)
        assert not xla_calls(step.get_concrete_function(*args))
        want = step(*args)
        assert len(got) == len(want) == len(names) == 1 + 2 + 9
        for name, a, b in zip(names, got, want):
            if padding == "mask" and "key_conv/bias" in name:
                # The key bias cancels in a masked softmax: its gradient is 0 up
                # to rounding noise, which has no scale to compare relative to.
                assert np.abs(a.numpy()).max() < 1e-5
                continue
            assert_close_relative(a.numpy(), b.numpy(), rtol=1e-5)


def test_portable_ops_traces_plain_graph():
    """Graphs traced under portable_ops() (the exporters) hold no XLA-compiled call."""
    xg, xl = _inputs(1, 6, 7)
    layer = LDv2(**SMALL)
    layer([xg, xl])
    fn = tf.function(lambda a, b: layer([a, b], training=False))
    args = (tf.constant(xg), tf.constant(xl))
    assert xla_calls(fn.get_concrete_function(*args))
    with portable_ops():
        fresh = tf.function(lambda a, b: layer([a, b], training=False))
        assert not xla_calls(fresh.get_concrete_function(*args))
    np.testing.assert_allclose(fresh(*args).numpy(), fn(*args).numpy(), rtol=1e-5, atol=1e-6)

    # The context is per thread: another thread tracing meanwhile keeps XLA.
    result = {}

    def trace_elsewhere():
        other = tf.function(lambda a, b: layer([a, b], training=False))
        result["xla_calls"] = xla_calls(other.get_concrete_function(*args))

    with portable_ops():
        worker = threading.Thread(target=trace_elsewhere)
        worker.start()
        worker.join()
    assert result["xla_calls"]


def test_onnx_export_dynamic_batch_and_size(tmp_path):
    import onnxruntime as ort  # the [test] extra installs both
    import tf2onnx

    gi, li = keras.Input((None, None, CG)), keras.Input((None, None, CL))
    layer = LDv2(num_heads=2, padding="mask", **SMALL)
    model = keras.Model([gi, li], layer([gi, li]))
    _randomize(layer)
    signature = [
        tf.TensorSpec((None, None, None, CG), tf.float32, name="x_global"),
        tf.TensorSpec((None, None, None, CL), tf.float32, name="x_local"),
    ]

    @tf.function(input_signature=signature)
    def serve(x_global, x_local):
        return model([x_global, x_local], training=False)

    path = tmp_path / "ldv2.onnx"
    # A converter needs every op inlined: trace without the XLA-compiled primitives.
    with portable_ops():
        tf2onnx.convert.from_function(serve, input_signature=signature, opset=17,
                                      output_path=str(path))
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    assert len(names) == 2
    for batch, size in [(1, (9, 13)), (3, (5, 6))]:
        xg, xl = _inputs(batch, *size, seed=batch)
        got = session.run(None, dict(zip(names, [xg, xl])))[0]
        np.testing.assert_allclose(got, model([xg, xl]).numpy(), rtol=1e-4, atol=1e-4)


# ------------------------------------------------------------------- errors


@pytest.mark.jax
def test_errors_for_wrong_inputs():
    xg, xl = _inputs(1, 6, 6)
    with pytest.raises(ValueError, match="list of two tensors"):
        LDv2(**SMALL)(xl)
    with pytest.raises(ValueError, match="list of two tensors"):
        LDv2(**SMALL)([xg, xl, xl])
    with pytest.raises(ValueError, match="rank 4"):
        LDv2(**SMALL)([xg[0], xl[0]])
    with pytest.raises(ValueError, match="must share H"):
        LDv2(**SMALL)([xg[:, :5], xl])
    with pytest.raises(ValueError, match="must share W"):
        LDv2(**SMALL)([xg, xl[:, :, :4]])
    gi, li = keras.Input((8, 8, CG)), keras.Input((8, 9, CL))
    with pytest.raises(ValueError, match="must share W"):
        LDv2(**SMALL)([gi, li])


def test_errors_for_mismatch_seen_at_run_time():
    """TensorFlow graphs with dynamic H, W: checked when they run."""
    xg, xl = _inputs(1, 6, 6)
    layer = LDv2(**SMALL)
    layer([xg, xl])
    fn = tf.function(
        lambda a, b: layer([a, b]),
        input_signature=[
            tf.TensorSpec((None, None, None, CG)),
            tf.TensorSpec((None, None, None, CL)),
        ],
    )
    with pytest.raises(tf.errors.InvalidArgumentError, match="must share H and W"):
        fn(xg[:, :5], xl)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"kernel_size": 4}, "odd"),
        ({"num_heads": 3}, "multiple of num_heads"),
        ({"padding": "reflect"}, "padding"),
        ({"combine": "add"}, "combine"),
        ({"impl": "unfold"}, "impl"),
        ({"output_projection": False, "out_channels": 8}, "output_projection"),
    ],
)
def test_constructor_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        LDv2(**{"key_channels": 4, "value_channels": 6, **kwargs})
