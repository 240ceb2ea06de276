"""BatchNorm kernels: TF's fused BatchNorm and SyncBN's cross-replica moments.

`keras_gald.layers.norm` holds the weights and the moving averages; the
statistics and the normalisation it runs on TensorFlow are here. They are
TensorFlow kernels: on other backends the layers take Keras' own
BatchNormalization path, and `fusable` says so.

- `fused_batch_norm`: TF's `FusedBatchNormV3` (one kernel forward, one
  kernel gradient) in training or inference mode;
- `moments`: `tf.nn.moments` on TF (`keras.ops.moments` elsewhere);
- `replicas_in_sync` / `cross_replica_moments`: the global batch's mean and
  variance under a `tf.distribute` strategy, with a two-pass variance.
"""

import keras

from keras_gald.ops.portable import gpu_visible

# The dtypes the fused kernel reads as they are (statistics in float32 inside).
_FUSED_DTYPES = ("float16", "bfloat16", "float32")


def _tf():
    import tensorflow as tf  # only the TensorFlow paths need it

    return tf


def fusable(inputs, reduction_axes):
    """True when `fused_batch_norm` can normalise `inputs` over `reduction_axes`.

    On TensorFlow only, for `(N, H, W, C)` inputs normalised over `N, H, W`
    in float16, bfloat16 or float32 (the kernel computes in float32: float64
    keeps Keras' float64 path).
    """
    return (
        keras.backend.backend() == "tensorflow"
        and len(inputs.shape) == 4
        and list(reduction_axes) == [0, 1, 2]
        and keras.backend.standardize_dtype(inputs.dtype) in _FUSED_DTYPES
    )


def kernel_dtype(compute_dtype):
    """The dtype `fused_batch_norm` gets its input in, for a layer's compute dtype.

    The kernel reads half-precision inputs itself (float32 statistics inside),
    which saves a cast in and out of every BN. bfloat16 is only known to run
    on TF's CPU kernels: with a GPU visible it is cast to float32.
    """
    dtype = keras.backend.standardize_dtype(compute_dtype)
    if dtype == "bfloat16" and gpu_visible():
        return "float32"
    return dtype


def fused_batch_norm(inputs, gamma, beta, epsilon, mean=None, variance=None,
                     dtype=None, compute_dtype=None):
    """TF's fused BatchNorm over `N, H, W` (TensorFlow only).

    Training mode (no `mean`/`variance` given) normalises with the batch's
    statistics; inference mode with the given ones.

    Args:
        inputs: `(N, H, W, C)`.
        gamma, beta: `(C,)` scale and offset, or None for ones / zeros.
        epsilon: added to the variance.
        mean, variance: `(C,)` moving statistics for inference, or None.
        dtype: the dtype the kernel reads (`kernel_dtype(...)`); default the
            input's.
        compute_dtype: the output's dtype; default the input's.

    Returns:
        Inference: `y`. Training: `(y, mean, variance)` with the batch's
        float32 mean and biased variance (what Keras' moving average uses).
        `y` is `(N, H, W, C)` in `compute_dtype`.
    """
    tf = _tf()
    x = tf.cast(inputs, dtype or inputs.dtype)
    channels = x.shape[-1]
    gamma = tf.cast(gamma, "float32") if gamma is not None else tf.ones([channels])
    beta = tf.cast(beta, "float32") if beta is not None else tf.zeros([channels])
    compute_dtype = compute_dtype or inputs.dtype
    if mean is not None:
        y = tf.compat.v1.nn.fused_batch_norm(
            x, gamma, beta,
            mean=tf.cast(mean, "float32"),
            variance=tf.cast(variance, "float32"),
            epsilon=epsilon, is_training=False,
        )[0]
        return tf.cast(y, compute_dtype)
    y, mean, variance = tf.compat.v1.nn.fused_batch_norm(
        x, gamma, beta, epsilon=epsilon, is_training=True
    )[:3]
    # The kernel returns the Bessel-corrected variance; Keras' moving
    # average uses the biased one (with one value per channel both are 0).
    count = tf.cast(tf.reduce_prod(tf.shape(x)[:3]), "float32")
    variance = variance * (count - 1.0) / tf.maximum(count, 1.0)
    return tf.cast(y, compute_dtype), mean, variance


def moments(inputs, axes):
    """Mean and (biased) variance over `axes`: `tf.nn.moments` on TF,
    `keras.ops.moments` elsewhere."""
    if keras.backend.backend() == "tensorflow":
        return _tf().nn.moments(inputs, axes=axes)
    return keras.ops.moments(inputs, axes=axes)


def replicas_in_sync():
    """Replicas of the current `tf.distribute` replica context; 1 outside one
    and on other backends (cross-replica BatchNorm is TensorFlow-only)."""
    if keras.backend.backend() != "tensorflow":
        return 1
    replica = _tf().distribute.get_replica_context()
    return 1 if replica is None else replica.num_replicas_in_sync


def cross_replica_moments(inputs, axes):
    """The global batch's mean and variance over `axes`, in two passes.

    All-reduces the sum and count first, then `sum((x - mean)^2)`: two
    all-reduces, the same statistics as `tf.nn.moments` on the global batch up
    to summation order. (`E[x^2] - E[x]^2`, Keras' one-pass synchronized
    moments, cancels catastrophically in float32 when a channel's mean is large
    against its spread.) Call it in a replica context of a `tf.distribute`
    strategy (TensorFlow only).

    Args:
        inputs: a tensor.
        axes: the reduction axes.

    Returns:
        `(mean, variance)`, each of `inputs`' shape without `axes`.
    """
    tf = _tf()
    replica = tf.distribute.get_replica_context()
    local_count = tf.cast(tf.reduce_prod(tf.gather(tf.shape(inputs), axes)), inputs.dtype)
    count = replica.all_reduce(tf.distribute.ReduceOp.SUM, local_count)
    total = replica.all_reduce(tf.distribute.ReduceOp.SUM,
                               tf.reduce_sum(inputs, axis=axes, keepdims=True))
    mean = tf.math.divide_no_nan(total, count)  # keepdims: broadcasts for any `axis`
    squares = replica.all_reduce(
        tf.distribute.ReduceOp.SUM, tf.reduce_sum(tf.square(inputs - mean), axis=axes)
    )
    return tf.squeeze(mean, axes), tf.math.divide_no_nan(squares, count)
