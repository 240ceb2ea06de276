"""Per-pixel class kernels of the losses and metrics: the label's score, the argmax."""

import keras
from keras import ops


def take_class(values, labels):
    """`values[n, h, w, labels[n, h, w]]`: `(N,H,W,C)`, `(N,H,W)` int -> `(N,H,W)`.

    A gather on the class axis. On TensorFlow it is the batched `GatherV2` the
    loss has always traced (outside XLA, `take_along_axis`'s TF lowering costs
    twice the time with its gradient); elsewhere `take_along_axis` (one XLA
    gather, fused under `jax.jit`).
    """
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf  # TF backend only.

        return tf.squeeze(tf.gather(values, labels[..., None], batch_dims=3), axis=-1)
    return ops.squeeze(ops.take_along_axis(values, labels[..., None], axis=-1), axis=-1)


def argmax_classes(scores):
    """int32 argmax over the class axis of `(N, H, W, C)` scores.

    On TensorFlow the plain `ArgMax` the metric has always used (`keras.ops.
    argmax` adds a -0.0 fix-up pass that costs 50% more outside XLA and may
    break -0.0/0.0 ties differently); elsewhere `keras.ops.argmax`.
    """
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf  # TF backend only.

        return tf.argmax(scores, axis=-1, output_type=tf.int32)
    return ops.cast(ops.argmax(scores, axis=-1), "int32")
