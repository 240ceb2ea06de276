"""Bilinear resizing with both PyTorch conventions.

PyTorch's `F.interpolate(..., align_corners=True)` (what the GALD authors use)
maps corner pixels onto corner pixels; `align_corners=False` is TF's
half-pixel-centres resize. Both are exposed so ported modules can reproduce the
authors' numbers exactly while new models use the modern convention.
"""

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
