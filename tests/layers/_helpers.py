"""Helpers shared by the layer tests in `tests/layers` (not collected: no `test_` prefix).

Backend-neutral unless named otherwise (`xla_calls`, `conv_loss_and_grads` and
`bf16_matmul_error` look at TensorFlow graphs and kernels): the gradient helpers
use `tf.GradientTape` on TensorFlow and `jax.value_and_grad` over
`layer.stateless_call` on JAX, so the same test runs under `KERAS_BACKEND=jax`.
"""

import contextlib

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_gald.convert.torch_weights import StateDict
from tests.conftest import OfficialFixture
from tests.harness import assert_close_relative


# ------------------------------------------------------------------------ inputs
def random_input(shape, seed=0):
    """Standard-normal float32 array from `np.random.default_rng(seed)`."""
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def random_input_legacy(shape, seed=1):
    """Standard-normal float32 array from the legacy `np.random.RandomState(seed)`."""
    return np.random.RandomState(seed).normal(size=shape).astype("float32")


# ----------------------------------------------------------------- graphs, grads
def xla_calls(concrete):
    """Function-call ops of a traced graph that TF must compile with XLA."""
    return [op for op in concrete.graph.get_operations()
            if op.type in ("PartitionedCall", "StatefulPartitionedCall")
            and op.node_def.attr["_XlaMustCompile"].b]


def conv_loss_and_grads(fn, x, k):
    """`[fn(x, k), d/dx, d/dk]` of `sum(y * sin(y))`: every output element gets its
    own cotangent, so a wrong gradient cannot cancel out. (`jax.value_and_grad` on JAX.)"""
    if keras.backend.backend() == "jax":
        import jax

        def loss(x, k):
            y = fn(x, k)
            return keras.ops.sum(y * keras.ops.sin(y)), y

        (_, y), grads = jax.value_and_grad(loss, argnums=(0, 1), has_aux=True)(x, k)
        return [y, *grads]
    with tf.GradientTape() as tape:
        tape.watch([x, k])
        y = fn(x, k)
        loss = tf.reduce_sum(y * tf.sin(y))
    return [y, *tape.gradient(loss, [x, k])]


def numpy_conv2d_same(x, k, rate=1):
    """Float64 NumPy stride-1 "SAME" conv at dilation `rate` (odd square kernel): the sum
    over taps of shifted input windows times the tap's `(C_in, C_out)` matrix. A
    reference that exists on every CPU (TF's own CPU backprop kernels take no
    dilation unless oneDNN is on)."""
    x, k = np.asarray(x, np.float64), np.asarray(k, np.float64)
    size = k.shape[0]
    pad = rate * (size // 2)
    h, w = x.shape[1:3]
    xp = np.pad(x, [(0, 0), (pad, pad), (pad, pad), (0, 0)])
    y = np.zeros(x.shape[:3] + (k.shape[3],))
    for i in range(size):
        for j in range(size):
            y += xp[:, i * rate:i * rate + h, j * rate:j * rate + w] @ k[i, j]
    return y


def numpy_conv_loss_and_grads(x, k, rate=1):
    """Float64 `[y, d/dx, d/dk]` of `sum(y * sin(y))` for `numpy_conv2d_same` (the same
    loss as `conv_loss_and_grads`), the gradients written out: the input gradient
    scatters `dy @ k[tap]^T` back through each tap's shift, the kernel gradient of a
    tap is its input window's `x^T dy`."""
    x, k = np.asarray(x, np.float64), np.asarray(k, np.float64)
    size = k.shape[0]
    pad = rate * (size // 2)
    h, w = x.shape[1:3]
    y = numpy_conv2d_same(x, k, rate)
    dy = np.sin(y) + y * np.cos(y)
    xp = np.pad(x, [(0, 0), (pad, pad), (pad, pad), (0, 0)])
    dxp = np.zeros_like(xp)
    dk = np.zeros_like(k)
    for i in range(size):
        for j in range(size):
            window = (slice(None), slice(i * rate, i * rate + h), slice(j * rate, j * rate + w))
            dxp[window] += dy @ k[i, j].T
            dk[i, j] = np.einsum("nhwc,nhwd->cd", xp[window], dy)
    return [y, dxp[:, pad:pad + h, pad:pad + w], dk]


def bf16_matmul_error(a, b):
    """Relative rms error of this machine's bfloat16 `tf.matmul(a, b)` against float64
    at the same bf16-rounded inputs: how much the CPU's own bf16 kernels round (oneDNN
    rounds once, TF's Eigen kernels more)."""
    a, b = tf.constant(a, tf.bfloat16), tf.constant(b, tf.bfloat16)
    exact = tf.matmul(tf.cast(a, tf.float64), tf.cast(b, tf.float64)).numpy()
    got = tf.cast(tf.matmul(a, b), tf.float64).numpy()
    return float(np.sqrt(np.mean((got - exact) ** 2) / np.mean(exact**2)))


# ----------------------------------------------------------------------- weights
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


def randomize_batch_norms(layer, seed=0):
    """Random gamma, beta and moving statistics for every BatchNormalization below `layer`."""
    rng = np.random.default_rng(seed)
    for sub in layer._flatten_layers(include_self=False):
        if isinstance(sub, keras.layers.BatchNormalization):
            c = sub.gamma.shape[0]
            sub.gamma.assign(rng.uniform(0.5, 1.5, c).astype(np.float32))
            sub.beta.assign(rng.normal(0, 0.1, c).astype(np.float32))
            sub.moving_mean.assign(rng.normal(0, 0.1, c).astype(np.float32))
            sub.moving_variance.assign(rng.uniform(0.5, 1.5, c).astype(np.float32))


# ---------------------------------------------------------------------- fixtures
def load_fixture_into(fixture_name, layer, loader):
    """Loads the authors' fixture `fixture_name` into `layer` with `loader`.

    Skips (or fails) as `tests.conftest.require_shared` does when `../shared`
    lacks the fixture; asserts that the loader used every key. Returns the
    `OfficialFixture`.
    """
    fixture = OfficialFixture(fixture_name)
    state_dict = loader(layer, StateDict(fixture.state_dict))
    assert state_dict.unused() == [], state_dict.unused()
    return fixture


def assert_cases_close(predict, cases, rtol=1e-4):
    """`assert_close_relative(predict(x), expected, rtol)` for every `(x, expected)` case."""
    for x, expected in cases:
        assert_close_relative(predict(x), expected, rtol=rtol)


# ------------------------------------------------------------- models, policies
def functional_model(layer, channels, out_channels=None):
    """`keras.Model` of `layer` on an NHWC input of unknown batch, height and width.

    With `out_channels`, also asserts the symbolic output shape is
    `(None, None, None, out_channels)`.
    """
    inputs = keras.Input((None, None, channels))
    outputs = layer(inputs)
    if out_channels is not None:
        assert tuple(outputs.shape) == (None, None, None, out_channels), outputs.shape
    return keras.Model(inputs, outputs)


@contextlib.contextmanager
def global_policy(name):
    """Sets the global Keras dtype policy to `name`; restores "float32" on exit."""
    keras.mixed_precision.set_global_policy(name)
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy("float32")


def bfloat16_twin(make_layer, x, seed):
    """A float32 layer with `randomize_weights(seed)` and a mixed_bfloat16 copy of it.

    `make_layer()` builds a fresh layer under the global policy. Returns
    `(bfloat16_layer, float32_output_on_x)` and leaves the global policy at
    "mixed_bfloat16" (run inside `global_policy`, which restores it).
    """
    keras.mixed_precision.set_global_policy("float32")
    reference = make_layer()
    reference.build(x.shape)
    randomize_weights(reference, seed=seed)
    expected = np.asarray(reference(x))

    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    layer = make_layer()
    layer.build(x.shape)
    layer.set_weights(reference.get_weights())
    return layer, expected


# ----------------------------------------------------------------- serialization
def config_round_trip(layer):
    """`type(layer).from_config(layer.get_config())`, asserted to give back the same config."""
    config = layer.get_config()
    clone = type(layer).from_config(config)
    assert clone.get_config() == config
    return clone


def assert_clone_matches(layer, x, build_shape=None, **call_kwargs):
    """A `config_round_trip` clone with `layer`'s weights computes the same output, bit for bit.

    The clone is built with `build_shape`, or by calling it on `x` when that is
    None; `call_kwargs` (e.g. `training=False`) go to every call. Returns the clone.
    """
    expected = layer(x, **call_kwargs)
    clone = config_round_trip(layer)
    if build_shape is None:
        clone(x, **call_kwargs)
    else:
        clone.build(build_shape)
    clone.set_weights(layer.get_weights())
    np.testing.assert_array_equal(clone(x, **call_kwargs), expected)
    return clone


def assert_keras_round_trip(model, path, inputs, layer_type, layer=None, layer_name=None,
                            predict=True):
    """Saves `model` to the `.keras` file `path`, loads it back and compares.

    The restored layer (`layer_name`, else the model's last layer) must be a
    `layer_type`, with `layer`'s config when `layer` is given; for every `x` in
    `inputs` the restored model's output must equal the original's bit for bit
    (`model.predict`, or a plain call with `predict=False`). Returns the
    original model's outputs, in the order of `inputs`.
    """
    model.save(path)
    restored = keras.saving.load_model(path)
    restored_layer = restored.get_layer(layer_name) if layer_name else restored.layers[-1]
    assert isinstance(restored_layer, layer_type), type(restored_layer)
    if layer is not None:
        assert restored_layer.get_config() == layer.get_config()
    if predict:
        run = lambda m, x: m.predict(x, verbose=0)  # noqa: E731
    else:
        run = lambda m, x: m(x)  # noqa: E731
    outputs = []
    for x in inputs:
        expected = run(model, x)
        np.testing.assert_array_equal(run(restored, x), expected)
        outputs.append(expected)
    return outputs


# --------------------------------------------------------------------- gradients
def projected_gradients(layer, x, projection, training=True, jit_compile=False):
    """Gradients of `sum(float32(layer(x)) * projection)` w.r.t. `layer.trainable_weights`.

    `projection` is an array (or tensor), or a callable taking the float32
    output and returning one. With `jit_compile=True` the step is compiled with
    XLA, as `model.fit` does by default: `tf.function(jit_compile=True)` on
    TensorFlow, `jax.jit` on JAX. As in a training step, the layer's
    non-trainable state (BatchNorm statistics) is updated when `training=True`.
    """
    if keras.backend.backend() == "jax":
        return _jax_projected_gradients(layer, x, projection, training, jit_compile)

    def step(x):
        with tf.GradientTape() as tape:
            y = tf.cast(layer(x, training=training), tf.float32)
            weights = projection(y) if callable(projection) else projection
            loss = tf.reduce_sum(y * weights)
        return tape.gradient(loss, layer.trainable_weights)

    if jit_compile:
        step = tf.function(step, jit_compile=True)
    return step(tf.nest.map_structure(tf.convert_to_tensor, x))


def _jax_projected_gradients(layer, x, projection, training, jit_compile):
    """`projected_gradients` on JAX: `jax.value_and_grad` of the loss over
    `layer.stateless_call`, jitted when `jit_compile`; the new non-trainable values
    are assigned back as Keras' JAX trainer does after a step."""
    import jax

    trainable = [v.value for v in layer.trainable_variables]
    non_trainable = [v.value for v in layer.non_trainable_variables]

    # `layer(x, training=...)` drops `training` for layers whose `call` has none;
    # `stateless_call` forwards it as given.
    kwargs = {"training": training} if layer._call_has_training_arg else {}

    def loss_fn(trainable, non_trainable, x):
        y, non_trainable = layer.stateless_call(trainable, non_trainable, x, **kwargs)
        y = keras.ops.cast(y, "float32")
        weights = projection(y) if callable(projection) else projection
        return keras.ops.sum(y * weights), non_trainable

    step = jax.value_and_grad(loss_fn, has_aux=True)
    if jit_compile:
        step = jax.jit(step)
    (_, non_trainable), grads = step(trainable, non_trainable, x)
    for variable, value in zip(layer.non_trainable_variables, non_trainable):
        variable.assign(value)
    return grads


def assert_gradients(weights, grads, nonzero=True, finite=False, dtype=None):
    """Every weight has a gradient: not None, of `dtype` (if given), finite (`finite=True`)
    and not all zero (`nonzero=True`). Failures name the weight's path."""
    assert len(grads) == len(weights), (len(grads), len(weights))
    for weight, grad in zip(weights, grads):
        assert grad is not None, weight.path
        if dtype is not None:
            got = keras.backend.standardize_dtype(grad.dtype)
            assert got == keras.backend.standardize_dtype(dtype), (weight.path, got)
        value = np.asarray(grad)
        if finite:
            assert np.isfinite(value).all(), weight.path
        if nonzero:
            assert np.abs(value).max() > 0.0, weight.path


# ------------------------------------------------------------------------ errors
def assert_rejects_bad_nhwc(make_layer, bad_rank_shape=(2, 8, 8, 8, 3),
                            unknown_channels_shape=(None, 8, 8, None)):
    """A fresh `make_layer()` raises the library's clear ValueErrors for bad shapes.

    Calling on a 3D tensor and `compute_output_shape(bad_rank_shape)` must say
    "4D NHWC"; `build(unknown_channels_shape)` must name the "channel dimension".
    """
    with pytest.raises(ValueError, match="4D NHWC"):
        make_layer()(np.zeros((2, 8, 3), np.float32))
    with pytest.raises(ValueError, match="4D NHWC"):
        make_layer().compute_output_shape(bad_rank_shape)
    with pytest.raises(ValueError, match="channel dimension"):
        make_layer().build(unknown_channels_shape)


# ------------------------------------------------------------------ the contract
def _inputs_for(channels, batch, height, width, seed):
    """One NHWC array (int `channels`) or a list of them (a tuple of channel counts)."""
    if isinstance(channels, int):
        return random_input((batch, height, width, channels), seed=seed)
    return [random_input((batch, height, width, c), seed=seed + i) for i, c in enumerate(channels)]


def _symbolic_inputs(channels):
    if isinstance(channels, int):
        return keras.Input((None, None, channels))
    return [keras.Input((None, None, c)) for c in channels]


def _shapes(channels, batch, height, width):
    if isinstance(channels, int):
        return (batch, height, width, channels)
    return [(batch, height, width, c) for c in channels]


def run_layer_test(make_layer, input_channels, output_channels, tmp_path,
                   sizes=((2, 13, 17), (1, 6, 9)), bf16_rtol=5e-2, seed=0):
    """What every layer of the library must do, checked in one place.

    `make_layer()` returns a fresh, unbuilt layer taking NHWC inputs with
    `input_channels` channels (an int, or a tuple for a layer called on a list
    of tensors) and returning `output_channels` channels at the input's size.

    1. Built on `(None, None, None, C)` and given random weights, it is called on
       every `(batch, height, width)` of `sizes` (odd sizes): the output shape is
       `(batch, height, width, output_channels)` and equals `compute_output_shape`.
    2. A functional model with unknown batch, height and width (one graph for
       every size) returns the eager outputs (to float32 round-off).
    3. `get_config` / `from_config` gives a layer of the same config which, with
       the same weights, computes the same output bit for bit.
    4. A `.keras` file of the model loads back to the same config and outputs.
    5. Under XLA, as `model.fit` compiles it, `training=True` gradients of a
       random projection reach every trainable weight: present, finite, not all 0
       (`tf.GradientTape` in `tf.function(jit_compile=True)` on TensorFlow,
       `jax.jit(jax.value_and_grad(...))` over `stateless_call` on JAX).
    6. Under `mixed_bfloat16` the layer computes in bfloat16 with float32
       variables, stays within `bf16_rtol` (relative to the output's scale) of
       the float32 layer, and its gradients are float32 and finite.
    """
    layer = make_layer()
    layer.build(_shapes(input_channels, None, None, None))
    randomize_weights(layer, seed=seed)
    eager = []
    for i, (batch, height, width) in enumerate(sizes):
        x = _inputs_for(input_channels, batch, height, width, seed=seed + 10 * i)
        y = layer(x, training=False)
        expected_shape = (batch, height, width, output_channels)
        assert tuple(y.shape) == expected_shape, (tuple(y.shape), expected_shape)
        assert tuple(layer.compute_output_shape(
            _shapes(input_channels, batch, height, width))) == expected_shape
        eager.append((x, np.asarray(y)))

    inputs = _symbolic_inputs(input_channels)
    outputs = layer(inputs)
    assert tuple(outputs.shape) == (None, None, None, output_channels), outputs.shape
    model = keras.Model(inputs, outputs)
    for x, y in eager:
        assert_close_relative(model.predict(x, verbose=0), y, rtol=1e-5)

    assert_clone_matches(layer, eager[0][0], build_shape=_shapes(input_channels, None, None, None),
                         training=False)
    assert_keras_round_trip(model, tmp_path / "layer.keras", [x for x, _ in eager],
                            type(layer), layer=layer, predict=False)

    x, y = eager[0]
    projection = np.random.default_rng([seed, 7]).standard_normal(y.shape).astype(np.float32)
    grads = projected_gradients(layer, x, projection, training=True, jit_compile=True)
    assert_gradients(layer.trainable_weights, grads, finite=True)

    # (training=True above moved the BatchNorm statistics: a new float32 reference)
    expected = np.asarray(layer(x, training=False))
    with global_policy("mixed_bfloat16"):
        twin = make_layer()
        twin.build(_shapes(input_channels, None, None, None))
        twin.set_weights(layer.get_weights())
        assert twin.compute_dtype == "bfloat16"
        assert all(w.dtype == "float32" for w in twin.weights), [w.dtype for w in twin.weights]
        y = twin(x, training=False)
        assert keras.backend.standardize_dtype(y.dtype) == "bfloat16", y.dtype
        assert_close_relative(np.asarray(keras.ops.cast(y, "float32")), expected, rtol=bf16_rtol)
        grads = projected_gradients(twin, x, projection, training=True)
        assert_gradients(twin.trainable_weights, grads, nonzero=False, finite=True,
                         dtype="float32")
