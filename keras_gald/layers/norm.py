"""Normalization factories shared by every block.

All BatchNorms use PyTorch's defaults (eps 1e-5, momentum 0.1, i.e. Keras
momentum 0.9) so weights ported from the authors' code reproduce their numbers.
`batch_norm()` returns `FusedBatchNormalization` (Keras' layer with TF's fused
training kernel); `synchronized=True` gives cross-replica (Sync) BatchNorm
under a `tf.distribute` strategy, via `SyncBatchNormalization`.
"""

import keras
import tensorflow as tf

from keras_gald.ops.portable import gpu_visible

BN_EPSILON = 1e-5
BN_MOMENTUM = 0.9


@keras.saving.register_keras_serializable(package="keras_gald", name="FusedBatchNormalization")
class FusedBatchNormalization(keras.layers.BatchNormalization):
    """`keras.layers.BatchNormalization` that runs on TF's fused kernel.

    Keras 3 normalises a training batch with separate ops (moments, then the
    affine transform) and autodiff differentiates each of them; TF's
    `FusedBatchNormV3` does the forward in one kernel and has a one-kernel
    gradient. Same statistics, same moving-average update (Keras': the biased
    batch variance), same weights and config.

    Inference (and a frozen layer, `trainable=False`, which Keras normalises
    with its moving statistics) takes the same kernel with
    `is_training=False`: one op that reads the input in its compute dtype
    (float32 statistics inside), where Keras' path casts a bfloat16 input to
    float32, multiplies, adds and casts back, and one that oneDNN fuses with
    the following ReLU. Half-precision inputs go to the kernel as they are
    (no cast in and out). Why this path exists: under `mixed_bfloat16` the
    casts and element-wise ops of Keras' BatchNorm were a large share of the
    non-convolution time on CPU. The A/B against Keras' layer is
    `python benchmarks/library_vs_stock.py --changes batchnorm` (results:
    benchmarks/results/batchnorm_cpu.json, tables in benchmarks/README.md).

    Masks, renorm and inputs that are not `(N, H, W, C)` normalised over
    `N, H, W` take Keras' own path, and so do float64 inputs (the kernel
    computes in float32, as Keras does for float16/bfloat16 inputs).

    Input shape: any; output shape: the input shape.

    Example:
    >>> bn = FusedBatchNormalization(epsilon=1e-5, momentum=0.9)
    >>> bn(tf.ones((2, 4, 4, 8)), training=True).shape
    TensorShape([2, 4, 4, 8])
    """

    def _fusable(self, inputs, mask):
        return (
            mask is None
            and not self.renorm
            and keras.backend.backend() == "tensorflow"
            and len(inputs.shape) == 4
            and list(self._reduction_axes) == [0, 1, 2]
            # The kernel computes in float32: float64 keeps Keras' float64 path.
            and tf.as_dtype(inputs.dtype) in (tf.float16, tf.bfloat16, tf.float32)
        )

    def _kernel_dtype(self):
        # The kernel reads half-precision inputs itself (float32 statistics
        # inside), which saves a cast in and out of every BN. bfloat16 is
        # only known to run on TF's CPU kernels: with a GPU visible it is cast.
        dtype = tf.as_dtype(self.compute_dtype)
        if dtype == tf.bfloat16 and gpu_visible():
            return tf.float32
        return dtype

    def _affine(self, channels):
        gamma = tf.cast(self.gamma, "float32") if self.scale else tf.ones([channels])
        beta = tf.cast(self.beta, "float32") if self.center else tf.zeros([channels])
        return gamma, beta

    def call(self, inputs, training=None, mask=None):
        if not self._fusable(inputs, mask):
            return super().call(inputs, training=training, mask=mask)
        if not (training and self.trainable):
            return self._fused_inference(inputs)
        x = tf.cast(inputs, self._kernel_dtype())
        gamma, beta = self._affine(x.shape[-1])
        y, mean, variance = tf.compat.v1.nn.fused_batch_norm(
            x, gamma, beta, epsilon=self.epsilon, is_training=True
        )[:3]
        # The kernel returns the Bessel-corrected variance; Keras' moving
        # average uses the biased one (with one value per channel both are 0).
        count = tf.cast(tf.reduce_prod(tf.shape(x)[:3]), "float32")
        variance = variance * (count - 1.0) / tf.maximum(count, 1.0)
        momentum = self.momentum
        self.moving_mean.assign(
            self.moving_mean * momentum + tf.cast(mean, self.moving_mean.dtype) * (1.0 - momentum)
        )
        self.moving_variance.assign(
            self.moving_variance * momentum
            + tf.cast(variance, self.moving_variance.dtype) * (1.0 - momentum)
        )
        return tf.cast(y, self.compute_dtype)

    def _fused_inference(self, inputs):
        x = tf.cast(inputs, self._kernel_dtype())
        gamma, beta = self._affine(x.shape[-1])
        y = tf.compat.v1.nn.fused_batch_norm(
            x, gamma, beta,
            mean=tf.cast(self.moving_mean, "float32"),
            variance=tf.cast(self.moving_variance, "float32"),
            epsilon=self.epsilon, is_training=False,
        )[0]
        return tf.cast(y, self.compute_dtype)


@keras.saving.register_keras_serializable(package="keras_gald", name="SyncBatchNormalization")
class SyncBatchNormalization(FusedBatchNormalization):
    """Cross-replica BatchNorm with a two-pass (numerically stable) variance.

    Keras' own `BatchNormalization(synchronized=True)` all-reduces `sum(x)` and
    `sum(x^2)` and takes `E[x^2] - E[x]^2`, which cancels catastrophically in
    float32 when a channel's mean is large against its spread -- e.g. the ASPP
    image-pooling branch, normalised over only `N` pooled 1x1 vectors. There the
    clamped variance made one 2-replica SGD step differ from the single-device
    step by 60% in some gradients. This layer all-reduces the sum and count
    first, then `sum((x - mean)^2)`: two all-reduces, the same statistics as
    `tf.nn.moments` on the global batch up to summation order.

    Outside a replica context, or with one replica, it is exactly
    `FusedBatchNormalization`. Args, shapes and weights are those of
    `keras.layers.BatchNormalization` (`synchronized` is always True).

    Example:
    >>> bn = SyncBatchNormalization(epsilon=1e-5, momentum=0.9)
    >>> bn(tf.ones((2, 4, 4, 8)), training=True).shape
    TensorShape([2, 4, 4, 8])
    """

    def __init__(self, **kwargs):
        kwargs["synchronized"] = True
        super().__init__(**kwargs)

    def call(self, inputs, training=None, mask=None):
        replica = tf.distribute.get_replica_context()
        if training and self.trainable and replica is not None and (
            replica.num_replicas_in_sync > 1
        ):
            return keras.layers.BatchNormalization.call(self, inputs, training=training, mask=mask)
        return super().call(inputs, training=training, mask=mask)

    def _moments(self, inputs, mask):
        replica = tf.distribute.get_replica_context()
        if mask is not None or replica is None or replica.num_replicas_in_sync == 1:
            if mask is None:
                return tf.nn.moments(inputs, axes=self._reduction_axes)
            return super()._moments(inputs, mask)
        axes = self._reduction_axes
        local_count = tf.cast(tf.reduce_prod(tf.gather(tf.shape(inputs), axes)), inputs.dtype)
        count = replica.all_reduce(tf.distribute.ReduceOp.SUM, local_count)
        total = replica.all_reduce(tf.distribute.ReduceOp.SUM,
                                   tf.reduce_sum(inputs, axis=axes, keepdims=True))
        mean = tf.math.divide_no_nan(total, count)  # keepdims: broadcasts for any `axis`
        squares = replica.all_reduce(
            tf.distribute.ReduceOp.SUM, tf.reduce_sum(tf.square(inputs - mean), axis=axes)
        )
        return tf.squeeze(mean, axes), tf.math.divide_no_nan(squares, count)


# Keras names a layer's entry in `.weights.h5` / `.keras` files after the Python class
# (`batch_normalization`, ...). Sharing Keras' class name keeps weight files of a model
# built with SyncBN loadable into the same model built without it (train on replicas,
# serve on one device) and vice versa; the registered name below stays distinct.
for _cls in (FusedBatchNormalization, SyncBatchNormalization):
    _cls.__name__ = _cls.__qualname__ = "BatchNormalization"


def batch_norm(name=None, synchronized=False, dtype=None, gamma_initializer="ones"):
    """Returns the library's BatchNorm (eps 1e-5, momentum 0.9).

    `synchronized=True` gives `SyncBatchNormalization` (global batch statistics
    under a `tf.distribute` strategy); otherwise `FusedBatchNormalization`
    (Keras' BatchNormalization, fused training kernel).
    """
    kwargs = dict(epsilon=BN_EPSILON, momentum=BN_MOMENTUM, gamma_initializer=gamma_initializer,
                  name=name, dtype=dtype)
    if synchronized:
        return SyncBatchNormalization(**kwargs)
    return FusedBatchNormalization(**kwargs)
