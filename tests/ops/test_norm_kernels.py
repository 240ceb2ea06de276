"""BatchNorm on every backend against float64 NumPy, and TF's fused kernels in `keras_gald.ops.norm`.

On TensorFlow `FusedBatchNormalization` runs `keras_gald.ops.norm.fused_batch_norm`;
on JAX it is Keras' BatchNormalization, and `SyncBatchNormalization` plain BN.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np
import pytest

from keras_gald.layers.norm import FusedBatchNormalization, SyncBatchNormalization, batch_norm
from keras_gald.ops import norm as norm_ops

EPS = 1e-5


def numpy_batch_norm_train(x, gamma, beta, cotangent):
    """Float64 training BN over N, H, W: `y`, the batch mean and biased variance, and
    `dL/dx` of `L = sum(y * cotangent)` (`gamma / sigma * (g - mean(g) - xhat * mean(g * xhat))`)."""
    x = np.asarray(x, np.float64)
    mean, var = x.mean(axis=(0, 1, 2)), x.var(axis=(0, 1, 2))
    xhat = (x - mean) / np.sqrt(var + EPS)
    g = np.asarray(cotangent, np.float64) * gamma
    dx = (g - g.mean(axis=(0, 1, 2)) - xhat * (g * xhat).mean(axis=(0, 1, 2))) / np.sqrt(var + EPS)
    return xhat * gamma + beta, mean, var, dx


def bn_train_and_grad(layer, x, cotangent):
    """`[y, dL/dx]` of one training call, `L = sum(y * cotangent)`; updates the moving
    statistics. `tf.GradientTape` on TF, `jax.grad` of `stateless_call` on JAX."""
    if keras.backend.backend() == "jax":
        import jax
        import jax.numpy as jnp

        trainable = [v.value for v in layer.trainable_variables]
        non_trainable = [v.value for v in layer.non_trainable_variables]

        def loss(x):
            y, state = layer.stateless_call(trainable, non_trainable, x, training=True)
            return jnp.sum(y * cotangent), (y, state)

        (_, (y, state)), dx = jax.jit(jax.value_and_grad(loss, has_aux=True))(jnp.asarray(x))
        for variable, value in zip(layer.non_trainable_variables, state):
            variable.assign(value)
        return np.asarray(y), np.asarray(dx)
    import tensorflow as tf

    x = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = layer(x, training=True)
        loss = tf.reduce_sum(y * cotangent)
    return y.numpy(), tape.gradient(loss, x).numpy()


def make(cls, seed, channels):
    rng = np.random.default_rng(seed)
    layer = cls(epsilon=EPS, momentum=0.9)
    layer.build((None, None, None, channels))
    weights = [rng.uniform(0.5, 1.5, channels), rng.normal(0, 0.2, channels),
               rng.normal(0, 0.2, channels), rng.uniform(0.5, 2.0, channels)]
    layer.set_weights([w.astype("float32") for w in weights])
    return layer, [np.asarray(w, np.float64) for w in weights]


@pytest.mark.jax
@pytest.mark.parametrize("cls", [FusedBatchNormalization, SyncBatchNormalization],
                         ids=["fused", "sync"])
def test_training_step_matches_float64(cls):
    rng = np.random.default_rng(0)
    x = (rng.normal(size=(2, 5, 3, 4)) * 2 + 1).astype("float32")
    cotangent = rng.normal(size=x.shape).astype("float32")
    layer, (gamma, beta, moving_mean, moving_var) = make(cls, 1, 4)
    y, dx = bn_train_and_grad(layer, x, cotangent)
    y_ref, mean, var, dx_ref = numpy_batch_norm_train(x, gamma, beta, cotangent)
    np.testing.assert_allclose(y, y_ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(dx, dx_ref, rtol=1e-4, atol=1e-4)
    # Keras' moving average with the biased batch variance.
    np.testing.assert_allclose(keras.ops.convert_to_numpy(layer.moving_mean),
                               0.9 * moving_mean + 0.1 * mean, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(layer.moving_variance),
                               0.9 * moving_var + 0.1 * var, rtol=1e-5, atol=1e-6)


@pytest.mark.jax
def test_inference_and_frozen_layer_use_the_moving_statistics():
    x = np.random.default_rng(2).normal(size=(2, 3, 5, 4)).astype("float32")
    layer, (gamma, beta, mean, var) = make(FusedBatchNormalization, 3, 4)
    expected = (x - mean) / np.sqrt(var + EPS) * gamma + beta
    np.testing.assert_allclose(keras.ops.convert_to_numpy(layer(x, training=False)), expected,
                               rtol=1e-5, atol=1e-5)
    layer.trainable = False
    np.testing.assert_allclose(keras.ops.convert_to_numpy(layer(x, training=True)), expected,
                               rtol=1e-5, atol=1e-5)


@pytest.mark.jax
def test_sync_batch_norm_config_on_every_backend():
    layer = batch_norm(name="bn", synchronized=True)
    assert isinstance(layer, SyncBatchNormalization)
    config = layer.get_config()
    assert config["synchronized"] is True
    assert isinstance(SyncBatchNormalization.from_config(config), SyncBatchNormalization)
    # Cross-replica statistics are TensorFlow-only: elsewhere one replica.
    assert norm_ops.replicas_in_sync() == 1


@pytest.mark.jax
def test_fusable_only_on_tensorflow_for_nhwc_float32_and_half():
    on_tf = keras.backend.backend() == "tensorflow"
    x = keras.ops.zeros((2, 3, 3, 4))
    assert norm_ops.fusable(x, [0, 1, 2]) == on_tf
    assert not norm_ops.fusable(x, [0, 1])
    assert not norm_ops.fusable(keras.ops.zeros((2, 4)), [0])
    if on_tf:
        assert not norm_ops.fusable(keras.ops.zeros((2, 3, 3, 4), "float64"), [0, 1, 2])
        assert norm_ops.fusable(keras.ops.zeros((2, 3, 3, 4), "bfloat16"), [0, 1, 2])


def test_fused_kernel_returns_the_biased_variance():
    # TF's kernel returns the Bessel-corrected variance; `fused_batch_norm` undoes it.
    x = np.random.default_rng(4).normal(size=(3, 2, 5, 6)).astype("float32")
    y, mean, var = norm_ops.fused_batch_norm(x, None, None, EPS)
    np.testing.assert_allclose(mean.numpy(), x.mean(axis=(0, 1, 2)), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(var.numpy(), x.var(axis=(0, 1, 2)), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(y.numpy(), (x - x.mean(axis=(0, 1, 2))) / np.sqrt(x.var(axis=(0, 1, 2)) + EPS),
                               rtol=1e-4, atol=1e-4)
    # One value per channel: both variances are 0.
    _, _, var = norm_ops.fused_batch_norm(x[:1, :1, :1], None, None, EPS)
    np.testing.assert_array_equal(var.numpy(), 0.0)
    # Inference mode with given statistics and affine.
    g, b, m, v = (np.full(6, c, "float32") for c in (2.0, 0.5, 0.1, 4.0))
    y = norm_ops.fused_batch_norm(x, g, b, EPS, mean=m, variance=v)
    np.testing.assert_allclose(y.numpy(), (x - 0.1) / np.sqrt(4.0 + EPS) * 2.0 + 0.5, rtol=1e-5, atol=1e-5)
