"""Tests for keras_gald.ops.local_attention on every backend.

The shifted-slice kernels (`local_logits`, `local_aggregate`) and the
patches reference (`*_reference`) are checked against Eq. (8)'s neighbourhood
sums written out in float64 NumPy, and against each other for gradients.
Tests marked `jax` also run under `KERAS_BACKEND=jax`.
"""

import keras
import numpy as np
import pytest

from keras_gald.ops import local_attention as la

# (kernel_size, dilation_rate, (H, W)): odd sizes; the last map is smaller than
# the dilated extent (k - 1) * r + 1 = 9, so most neighbours read padding.
CASES = [(3, 2, (5, 7)), (5, 1, (4, 5)), (5, 2, (3, 5))]
HEADS, DEPTH = 2, 3


def _random(shape, seed):
    return np.random.default_rng(seed).standard_normal(shape).astype("float32")


def _numpy(x):
    return keras.ops.convert_to_numpy(x)


def _tensor(x):
    return keras.ops.convert_to_tensor(x)


def _np_neighbour(x, y, xx, dy, dx):
    """x[:, y + dy, xx + dx] (float64), zeros outside the image."""
    height, width = x.shape[1], x.shape[2]
    if 0 <= y + dy < height and 0 <= xx + dx < width:
        return x[:, y + dy, xx + dx].astype(np.float64)
    return np.zeros(x[:, 0, 0].shape)


def np_local_logits(q, k, kernel_size, rate):
    """Eq. (8)'s logits, `q(i) . k(i + d_n)` with zero padding, float64."""
    offsets = la.neighbour_offsets(kernel_size, rate)
    n, height, width, heads, _ = q.shape
    out = np.zeros((n, height, width, heads, len(offsets)))
    for y in range(height):
        for xx in range(width):
            for j, (dy, dx) in enumerate(offsets):
                out[:, y, xx, :, j] = np.sum(q[:, y, xx] * _np_neighbour(k, y, xx, dy, dx), -1)
    return out


def np_local_aggregate(w, v, kernel_size, rate):
    """Eq. (8)'s sum, `sum_n w_n(i) v(i + d_n)` with zero padding, float64."""
    offsets = la.neighbour_offsets(kernel_size, rate)
    out = np.zeros(v.shape)
    for y in range(v.shape[1]):
        for xx in range(v.shape[2]):
            for j, (dy, dx) in enumerate(offsets):
                out[:, y, xx] += w[:, y, xx, :, j, None] * _np_neighbour(v, y, xx, dy, dx)
    return out


def compiled(fn):
    """`jax.jit(fn)` on JAX (one compile instead of one per op: keeps the JAX
    pass short), `fn` itself on TensorFlow (eager, as users call it)."""
    if keras.backend.backend() == "jax":
        import jax

        return jax.jit(fn)
    return fn


def value_and_grads(fn, *args):
    """`fn(*args)` (a scalar) and its gradients w.r.t. every argument, on the
    current backend (`tf.GradientTape` on TensorFlow, `jax.grad` on JAX)."""
    if keras.backend.backend() == "jax":
        import jax

        return jax.jit(jax.value_and_grad(fn, argnums=tuple(range(len(args)))))(*args)
    import tensorflow as tf

    args = [tf.convert_to_tensor(a) for a in args]
    with tf.GradientTape() as tape:
        tape.watch(args)
        value = fn(*args)
    return value, tape.gradient(value, args)


def _slices(kernel_size, rate):
    offsets = la.neighbour_offsets(kernel_size, rate)
    pad = (kernel_size - 1) // 2 * rate
    logits = lambda q, k: la.local_logits(q, k, offsets, pad)  # noqa: E731
    aggregate = lambda w, v: la.local_aggregate(w, v, offsets, pad)  # noqa: E731
    return logits, aggregate


def _reference(kernel_size, rate):
    logits = lambda q, k: la.local_logits_reference(q, k, kernel_size, rate)  # noqa: E731
    aggregate = lambda w, v: la.local_aggregate_reference(w, v, kernel_size, rate)  # noqa: E731
    return logits, aggregate


@pytest.mark.jax
@pytest.mark.parametrize("impl", ["slices", "reference"])
@pytest.mark.parametrize("kernel_size, rate, size", CASES)
def test_values_match_numpy_eq8_sums(impl, kernel_size, rate, size):
    shape = (2, *size, HEADS, DEPTH)
    q, k, v = _random(shape, 0), _random(shape, 1), _random(shape, 2)
    w = _random((2, *size, HEADS, kernel_size**2), 3)
    logits, aggregate = (_slices if impl == "slices" else _reference)(kernel_size, rate)
    got_logits = _numpy(compiled(logits)(_tensor(q), _tensor(k)))
    got_sum = _numpy(compiled(aggregate)(_tensor(w), _tensor(v)))
    assert got_logits.shape == (2, *size, HEADS, kernel_size**2)
    assert got_sum.shape == shape
    np.testing.assert_allclose(got_logits, np_local_logits(q, k, kernel_size, rate),
                               rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got_sum, np_local_aggregate(w, v, kernel_size, rate),
                               rtol=1e-5, atol=1e-5)


@pytest.mark.jax
@pytest.mark.parametrize("kernel_size, rate, size", CASES[:2])
def test_gradients_of_slices_match_reference(kernel_size, rate, size):
    """d/dq, d/dk, d/dv of softmax attention: the slices' gradients (TF: custom;
    JAX: autodiff of the slices) equal those of the patches reference."""
    shape = (2, *size, HEADS, DEPTH)
    q, k, v = (_tensor(_random(shape, s)) for s in range(3))
    cot = _tensor(_random(shape, 3))
    ops = keras.ops
    results = []
    for make in (_slices, _reference):
        logits, aggregate = make(kernel_size, rate)

        def loss(q, k, v):
            w = ops.softmax(logits(q, k), axis=-1)
            return ops.sum(aggregate(w, v) * cot)

        results.append(value_and_grads(loss, q, k, v))
    (value_s, grads_s), (value_r, grads_r) = results
    np.testing.assert_allclose(_numpy(value_s), _numpy(value_r), rtol=1e-5)
    for name, a, b in zip("qkv", grads_s, grads_r):
        assert a is not None and b is not None, name
        np.testing.assert_allclose(_numpy(a), _numpy(b), rtol=1e-5, atol=1e-5, err_msg=name)


@pytest.mark.jax
def test_gradients_match_numpy_adjoint():
    """Both primitives are bilinear: d<cot, f(a, b)>/da is f with b fixed,
    applied as its adjoint. Checked against NumPy for the aggregate's weights
    and the logits' query (exact directional identities)."""
    kernel_size, rate, size = 3, 2, (5, 7)
    shape = (1, *size, HEADS, DEPTH)
    q, k, v = _random(shape, 0), _random(shape, 1), _random(shape, 2)
    w = _random((1, *size, HEADS, 9), 3)
    cot_l, cot_a = _random(w.shape, 4), _random(shape, 5)
    logits, aggregate = _slices(kernel_size, rate)
    ops = keras.ops
    _, (d_q, _) = value_and_grads(lambda a, b: ops.sum(logits(a, b) * cot_l), _tensor(q), _tensor(k))
    _, (d_w, _) = value_and_grads(lambda a, b: ops.sum(aggregate(a, b) * cot_a), _tensor(w), _tensor(v))
    # d/dq sum(cot * q . k_n) = sum_n cot_n k_n; d/dw_n sum(cot * w_n v_n) = cot . v_n.
    np.testing.assert_allclose(_numpy(d_q), np_local_aggregate(cot_l, k, kernel_size, rate),
                               rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(_numpy(d_w), np_local_logits(cot_a, v, kernel_size, rate),
                               rtol=1e-5, atol=1e-5)


@pytest.mark.jax
@pytest.mark.parametrize("kernel_size, rate, size", CASES[1:])
def test_valid_neighbours(kernel_size, rate, size):
    offsets = la.neighbour_offsets(kernel_size, rate)
    height, width = size
    expected = np.zeros((1, height, width, 1, len(offsets)), bool)
    for y in range(height):
        for x in range(width):
            for j, (dy, dx) in enumerate(offsets):
                expected[0, y, x, 0, j] = 0 <= y + dy < height and 0 <= x + dx < width
    got = np.asarray(_numpy(la.valid_neighbours(height, width, offsets)))
    ref = np.asarray(_numpy(la.valid_neighbours_reference(height, width, kernel_size, rate)))
    np.testing.assert_array_equal(got, expected)
    np.testing.assert_array_equal(ref, expected)


@pytest.mark.jax
def test_neighbour_order_is_row_major():
    """Neighbour n = i * k + j reads offset ((i - h) r, (j - h) r): the patches
    reference and the slices agree on it, position by position."""
    assert la.neighbour_offsets(3, 2) == [
        (-2, -2), (-2, 0), (-2, 2), (0, -2), (0, 0), (0, 2), (2, -2), (2, 0), (2, 2)
    ]
    # A map whose value is its own (y, x): neighbour n of the centre holds
    # the centre plus offset n.
    height, width = 5, 5
    ys, xs = np.meshgrid(np.arange(height), np.arange(width), indexing="ij")
    coords = np.stack([ys, xs], -1).astype("float32")[None, :, :, None, :]  # (1,H,W,1,2)
    patches = _numpy(la.neighbourhoods(_tensor(coords), 3, 2))  # (1,H,W,K,1,2)
    for n, (dy, dx) in enumerate(la.neighbour_offsets(3, 2)):
        np.testing.assert_array_equal(patches[0, 2, 2, n, 0], [2 + dy, 2 + dx])


@pytest.mark.jax
def test_same_height_width_check_static():
    ones = keras.ops.ones
    a, b = ones((1, 4, 5, 2)), ones((1, 4, 5, 3))
    assert la.assert_same_height_width(a, b, "must match") is b
    with pytest.raises(ValueError, match="must match"):
        la.assert_same_height_width(a, ones((1, 4, 6, 3)), "must match")
    x = ones((1, 4, 5, 2))
    assert la.assert_min_height_width(x, 15, "too small") is x  # static: the caller's check


def test_same_height_width_check_at_run_time_tensorflow():
    """TensorFlow graphs with dynamic H, W: an Assert with the message."""
    if keras.backend.backend() != "tensorflow":
        pytest.skip("dynamic shapes are TensorFlow's")
    import tensorflow as tf

    spec = tf.TensorSpec((None, None, None, 2))
    fn = tf.function(lambda a, b: la.assert_same_height_width(a, b, "must share H and W"),
                     input_signature=[spec, spec])
    assert fn(tf.ones((1, 4, 5, 2)), tf.ones((1, 4, 5, 2))).shape == (1, 4, 5, 2)
    with pytest.raises(tf.errors.InvalidArgumentError, match="must share H and W"):
        fn(tf.ones((1, 4, 5, 2)), tf.ones((1, 4, 6, 2)))
    small = tf.function(lambda x: la.assert_min_height_width(x, 7, "at least 7x7"),
                        input_signature=[spec])
    assert small(tf.ones((1, 7, 9, 2))).shape == (1, 7, 9, 2)
    with pytest.raises(tf.errors.InvalidArgumentError, match="at least 7x7"):
        small(tf.ones((1, 7, 6, 2)))


@pytest.mark.jax
def test_jax_slices_never_hold_k2_feature_maps():
    """JAX: the compiled forward + backward of the slices keeps less than half
    the `N x k^2 x C` neighbourhood tensor the reference builds (unrolled
    slices did not: XLA:CPU kept most of the k^2 products alive)."""
    if keras.backend.backend() != "jax":
        pytest.skip("XLA's buffer sizes are JAX's")
    import jax
    import jax.numpy as jnp

    kernel_size, rate = 5, 1
    n, height, width, depth = 1, 16, 16, 32
    spec = jax.ShapeDtypeStruct((n, height, width, 1, depth), jnp.float32)

    def temp_bytes(make):
        logits, aggregate = make(kernel_size, rate)

        def loss(q, k, v):
            out = aggregate(jax.nn.softmax(logits(q, k)), v)
            return jnp.sum(out * out)

        grad = jax.jit(jax.grad(loss, argnums=(0, 1, 2)))
        return grad.lower(spec, spec, spec).compile().memory_analysis().temp_size_in_bytes

    n_k2_c = n * height * width * kernel_size**2 * depth * 4
    slices, reference = temp_bytes(_slices), temp_bytes(_reference)
    assert reference >= n_k2_c  # the check can fail: the reference does build them
    assert slices < n_k2_c / 2, (slices, reference, n_k2_c)
