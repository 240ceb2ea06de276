"""keras_gald.ops.adaptive_pool: PyTorch's adaptive average-pool bins, on every backend."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from keras_gald.ops.adaptive_pool import (  # noqa: E402
    adaptive_average_pool2d, adaptive_average_pool2d_reference
)

ON_TF = keras.backend.backend() == "tensorflow"


def torch_adaptive_avg_pool(x, bins_h, bins_w):
    """Float64 loop over PyTorch's bins: bin i of b over length L is
    [floor(i * L / b), ceil((i + 1) * L / b))."""
    x = np.asarray(x, np.float64)
    n, h, w, c = x.shape
    out = np.zeros((n, bins_h, bins_w, c))
    for i in range(bins_h):
        rows = slice(int(np.floor(i * h / bins_h)), int(np.ceil((i + 1) * h / bins_h)))
        for j in range(bins_w):
            cols = slice(int(np.floor(j * w / bins_w)), int(np.ceil((j + 1) * w / bins_w)))
            out[:, i, j] = x[:, rows, cols].mean(axis=(1, 2))
    return out


def to_numpy(value):
    return keras.ops.convert_to_numpy(value)


@pytest.mark.jax
def test_hand_values_overlapping_bins():
    # 5 rows in 2 bins: [0, 3) and [2, 5) overlap on row 2; 2 columns in 3 bins:
    # [0, 1), [0, 2), [1, 2) (more bins than columns).
    x = np.arange(10, dtype=np.float32).reshape(1, 5, 2, 1)  # x[r, c] = 2 r + c
    y = to_numpy(adaptive_average_pool2d(x, (2, 3)))[0, :, :, 0]
    np.testing.assert_allclose(y, [[2.0, 2.5, 3.0], [6.0, 6.5, 7.0]], rtol=1e-6)


@pytest.mark.jax
@pytest.mark.parametrize("size,bins", [((7, 5), (3, 2)), ((2, 3), (6, 6)), ((6, 9), 1)])
def test_matches_pytorch_bins(size, bins):
    x = np.random.default_rng(sum(size)).standard_normal((2, *size, 3)).astype(np.float32)
    bins_h, bins_w = (bins, bins) if isinstance(bins, int) else bins
    expected = torch_adaptive_avg_pool(x, bins_h, bins_w)
    np.testing.assert_allclose(to_numpy(adaptive_average_pool2d(x, bins)), expected,
                               rtol=1e-5, atol=1e-6)
    # The backend-neutral reference computes the same bins.
    np.testing.assert_allclose(to_numpy(adaptive_average_pool2d_reference(x, bins)), expected,
                               rtol=1e-5, atol=1e-6)


@pytest.mark.jax
def test_keeps_dtype_and_rejects_empty_output():
    x = keras.ops.cast(np.ones((1, 4, 4, 2), np.float32), "bfloat16")
    y = adaptive_average_pool2d(x, 3)
    assert keras.backend.standardize_dtype(y.dtype) == "bfloat16"
    np.testing.assert_array_equal(to_numpy(keras.ops.cast(y, "float32")), np.ones((1, 3, 3, 2)))
    with pytest.raises(ValueError, match="output_size must be positive"):
        adaptive_average_pool2d(x, (2, 0))


@pytest.mark.skipif(not ON_TF, reason="the TensorFlow path's graph")
def test_tensorflow_path_serves_every_size_with_portable_ops():
    import tensorflow as tf

    @tf.function(input_signature=[tf.TensorSpec((None, None, None, 3), tf.float32)])
    def pool(x):
        return adaptive_average_pool2d(x, (2, 3))

    concrete = pool.get_concrete_function()
    op_types = {op.type for op in concrete.graph.get_operations()}
    # Bin matrices built in the graph (Range, comparisons), pooled by Einsum; no
    # function call that XLA would have to compile (exports need plain ops).
    assert {"Range", "Einsum"} <= op_types
    assert not op_types & {"PartitionedCall", "StatefulPartitionedCall", "XlaCallModule"}
    for size in [(5, 7), (1, 2), (11, 4)]:
        x = np.random.default_rng(size[0]).standard_normal((1, *size, 3)).astype(np.float32)
        np.testing.assert_allclose(pool(x).numpy(), torch_adaptive_avg_pool(x, 2, 3),
                                   rtol=1e-5, atol=1e-6)
