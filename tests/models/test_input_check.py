"""`InputCheck` and its size assertion (`keras_gald.ops.assertions`) on every backend."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np
import pytest

from keras_gald.models.input_check import InputCheck
from keras_gald.ops.assertions import assert_min_spatial_size

TOO_SMALL = "minimum height and width is 16 pixels"


@pytest.mark.jax
def test_static_sizes_and_channels_are_checked_when_called():
    check = InputCheck(channels=3, min_size=16)
    x = np.arange(2 * 16 * 20 * 3, dtype="float32").reshape(2, 16, 20, 3)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(check(x)), x)
    with pytest.raises(ValueError, match="images of size 15x20 are too small.*" + TOO_SMALL):
        check(np.zeros((1, 15, 20, 3), "float32"))
    with pytest.raises(ValueError, match="expected images with 3 channels"):
        check(np.zeros((1, 16, 16, 4), "float32"))
    clone = InputCheck.from_config(check.get_config())
    assert (clone.channels, clone.min_size) == (3, 16)


@pytest.mark.jax
def test_assertion_kernel_names_the_sizes():
    ok = np.zeros((1, 8, 9, 2), "float32")
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(assert_min_spatial_size(ok, 8, "m")), ok)
    small = np.zeros((1, 8, 7, 2), "float32")
    if keras.backend.backend() == "jax":
        import jax

        # Shapes are static when JAX traces: the check raises while tracing.
        with pytest.raises(ValueError, match="too small; got H, W = 8 7"):
            jax.jit(lambda v: assert_min_spatial_size(v, 8, "too small"))(small)
    else:
        import tensorflow as tf

        # Sizes unknown when traced: the assertion fires when the graph runs.
        fn = tf.function(lambda v: assert_min_spatial_size(v, 8, "too small"),
                         input_signature=[tf.TensorSpec((None, None, None, 2))])
        np.testing.assert_array_equal(fn(ok).numpy(), ok)
        with pytest.raises(tf.errors.InvalidArgumentError, match="too small; got H, W ="):
            fn(small)


def test_dynamic_sizes_are_checked_at_run_time_in_a_model():
    tf = pytest.importorskip("tensorflow")
    if keras.backend.backend() != "tensorflow":
        pytest.skip("dynamic spatial sizes are a TensorFlow graph feature")
    inputs = keras.Input((None, None, 3))
    model = keras.Model(inputs, InputCheck(channels=3, min_size=16)(inputs))
    fn = tf.function(model, input_signature=[tf.TensorSpec((None, None, None, 3))])
    assert fn(np.zeros((1, 16, 17, 3), "float32")).shape == (1, 16, 17, 3)
    with pytest.raises(tf.errors.InvalidArgumentError, match=TOO_SMALL + "; got H, W ="):
        fn(np.zeros((1, 17, 12, 3), "float32"))
