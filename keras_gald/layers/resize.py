"""Bilinear resizing with both PyTorch conventions.

PyTorch's `F.interpolate(..., align_corners=True)` (what the GALD authors use)
maps corner pixels onto corner pixels; `align_corners=False` is TF's
half-pixel-centres resize. Both are exposed so ported modules can reproduce the
authors' numbers exactly while new models use the modern convention.
"""

import keras
import tensorflow as tf


def resize_bilinear(images, size, align_corners=False):
    """Bilinearly resizes an NHWC tensor to `size = (height, width)`.

    Args:
        images: `(N, H, W, C)` tensor, any float dtype (the result keeps it).
        size: `(height, width)`, Python ints or scalar tensors.
        align_corners: `True` for PyTorch `align_corners=True` semantics,
            `False` for half-pixel centres (PyTorch `align_corners=False`).

    Returns:
        `(N, height, width, C)` tensor of the input's dtype.
    """
    dtype = images.dtype
    x = images if dtype in (tf.float32, tf.float64) else tf.cast(images, tf.float32)
    size = tf.stack([tf.cast(size[0], tf.int32), tf.cast(size[1], tf.int32)])
    if align_corners:
        out = tf.raw_ops.ResizeBilinear(
            images=x, size=size, align_corners=True, half_pixel_centers=False
        )
    else:
        out = tf.raw_ops.ResizeBilinear(
            images=x, size=size, align_corners=False, half_pixel_centers=True
        )
    return tf.cast(out, dtype)


@keras.saving.register_keras_serializable(package="keras_gald")
class ResizeLike(keras.layers.Layer):
    """Resizes `inputs[0]` bilinearly to the spatial size of `inputs[1]`.

    Works with dynamic H, W (the target size is read at run time).

    Args:
        align_corners: see `resize_bilinear`.

    Input shape: `[(N, h, w, C), (N, H, W, *)]`. Output shape: `(N, H, W, C)`.

    Example:
    >>> x = keras.ops.ones((1, 9, 13, 4)); ref = keras.ops.ones((1, 65, 97, 3))
    >>> ResizeLike()([x, ref]).shape
    TensorShape([1, 65, 97, 4])
    """

    def __init__(self, align_corners=False, **kwargs):
        super().__init__(**kwargs)
        self.align_corners = bool(align_corners)

    def call(self, inputs):
        x, reference = inputs
        shape = tf.shape(reference)
        return resize_bilinear(x, (shape[1], shape[2]), self.align_corners)

    def compute_output_shape(self, input_shape):
        x_shape, ref_shape = input_shape
        return (x_shape[0], ref_shape[1], ref_shape[2], x_shape[-1])

    def get_config(self):
        config = super().get_config()
        config.update({"align_corners": self.align_corners})
        return config
