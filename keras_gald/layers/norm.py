"""Normalization factories shared by every block.

All BatchNorms use PyTorch's defaults (eps 1e-5, momentum 0.1, i.e. Keras
momentum 0.9) so weights ported from the authors' code reproduce their numbers.
`batch_norm()` returns `FusedBatchNormalization` (Keras' layer with TF's fused
training kernel); `synchronized=True` gives cross-replica (Sync) BatchNorm
under a `tf.distribute` strategy, via `SyncBatchNormalization`.
"""

import keras

from keras_gald.ops import norm as norm_ops

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
    computes in float32, as Keras does for float16/bfloat16 inputs). The
    fused kernel is TensorFlow's (`keras_gald.ops.norm`): on JAX and other
    backends this layer is Keras' BatchNormalization (XLA fuses its ops).

    Input shape: any; output shape: the input shape.

    Example:
    >>> bn = FusedBatchNormalization(epsilon=1e-5, momentum=0.9)
    >>> tuple(bn(keras.ops.ones((2, 4, 4, 8)), training=True).shape)
    (2, 4, 4, 8)
    """

    def _fusable(self, inputs, mask):
        # TF only: on other backends this is Keras' own BatchNormalization.
        return mask is None and not self.renorm and norm_ops.fusable(inputs, self._reduction_axes)

    def _affine(self):
        return (self.gamma if self.scale else None), (self.beta if self.center else None)

    def call(self, inputs, training=None, mask=None):
        if not self._fusable(inputs, mask):
            return super().call(inputs, training=training, mask=mask)
        gamma, beta = self._affine()
        dtypes = dict(dtype=norm_ops.kernel_dtype(self.compute_dtype),
                      compute_dtype=self.compute_dtype)
        if not (training and self.trainable):
            return norm_ops.fused_batch_norm(
                inputs, gamma, beta, self.epsilon,
                mean=self.moving_mean, variance=self.moving_variance, **dtypes,
            )
        y, mean, variance = norm_ops.fused_batch_norm(inputs, gamma, beta, self.epsilon, **dtypes)
        # Keras' moving average, with the batch's biased variance.
        momentum = self.momentum
        self.moving_mean.assign(
            self.moving_mean * momentum
            + keras.ops.cast(mean, self.moving_mean.dtype) * (1.0 - momentum)
        )
        self.moving_variance.assign(
            self.moving_variance * momentum
            + keras.ops.cast(variance, self.moving_variance.dtype) * (1.0 - momentum)
        )
        return y


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
    `FusedBatchNormalization`. Cross-replica statistics are TensorFlow-only
    (`tf.distribute`, kernels in `keras_gald.ops.norm`): on JAX, where a model
    runs on one device, it is plain `FusedBatchNormalization` (Keras'
    BatchNormalization there), with the same config (`synchronized: True`).
    Args, shapes and weights are those of `keras.layers.BatchNormalization`
    (`synchronized` is always True).

    Example:
    >>> bn = SyncBatchNormalization(epsilon=1e-5, momentum=0.9)
    >>> tuple(bn(keras.ops.ones((2, 4, 4, 8)), training=True).shape)
    (2, 4, 4, 8)
    """

    def __init__(self, **kwargs):
        # Keras refuses synchronized=True off TensorFlow; there this layer is
        # plain BatchNorm (`_moments` never reads the flag), and its config
        # still says synchronized, as on TensorFlow.
        kwargs["synchronized"] = keras.backend.backend() == "tensorflow"
        super().__init__(**kwargs)
        self.synchronized = True

    def call(self, inputs, training=None, mask=None):
        if training and self.trainable and norm_ops.replicas_in_sync() > 1:
            # Keras' BatchNormalization, with the global moments of `_moments`.
            return keras.layers.BatchNormalization.call(self, inputs, training=training, mask=mask)
        return super().call(inputs, training=training, mask=mask)

    def _moments(self, inputs, mask):
        if mask is None and norm_ops.replicas_in_sync() > 1:
            return norm_ops.cross_replica_moments(inputs, self._reduction_axes)
        if mask is None:
            return norm_ops.moments(inputs, self._reduction_axes)
        return super()._moments(inputs, mask)


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
