"""Normalization factories shared by every block.

All BatchNorms use PyTorch's defaults (eps 1e-5, momentum 0.1, i.e. Keras
momentum 0.9) so weights ported from the authors' code reproduce their numbers.
`synchronized=True` gives cross-replica (Sync) BatchNorm under a
`tf.distribute` strategy, via `SyncBatchNormalization`.
"""

import keras
import tensorflow as tf

BN_EPSILON = 1e-5
BN_MOMENTUM = 0.9


@keras.saving.register_keras_serializable(package="keras_gald", name="SyncBatchNormalization")
class SyncBatchNormalization(keras.layers.BatchNormalization):
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
    `keras.layers.BatchNormalization`. Args, shapes and weights are those of
    `keras.layers.BatchNormalization` (`synchronized` is always True).

    Example:
    >>> bn = SyncBatchNormalization(epsilon=1e-5, momentum=0.9)
    >>> bn(tf.ones((2, 4, 4, 8)), training=True).shape
    TensorShape([2, 4, 4, 8])
    """

    def __init__(self, **kwargs):
        kwargs["synchronized"] = True
        super().__init__(**kwargs)

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
SyncBatchNormalization.__name__ = "BatchNormalization"
SyncBatchNormalization.__qualname__ = "BatchNormalization"


def batch_norm(name=None, synchronized=False, dtype=None, gamma_initializer="ones"):
    """Returns the library's BatchNorm (eps 1e-5, momentum 0.9).

    `synchronized=True` gives `SyncBatchNormalization` (global batch statistics
    under a `tf.distribute` strategy); otherwise `keras.layers.BatchNormalization`.
    """
    kwargs = dict(epsilon=BN_EPSILON, momentum=BN_MOMENTUM, gamma_initializer=gamma_initializer,
                  name=name, dtype=dtype)
    if synchronized:
        return SyncBatchNormalization(**kwargs)
    return keras.layers.BatchNormalization(**kwargs)
