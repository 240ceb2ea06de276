"""Bilinear resizing with both PyTorch conventions.

PyTorch's `F.interpolate(..., align_corners=True)` (what the GALD authors use)
maps corner pixels onto corner pixels; `align_corners=False` is TF's
half-pixel-centres resize. Both are exposed so ported modules can reproduce the
authors' numbers exactly while new models use the modern convention.

TensorFlow runs its `ResizeBilinear` kernel (and its gradient kernel). Other
backends (JAX) gather the two source rows, then the two source columns, and
interpolate: the source coordinates are computed at trace time from the static
sizes, exactly as PyTorch computes them (no antialiasing when downsampling,
unlike `jax.image.resize`).
"""

import keras
import numpy as np

from keras_gald.ops.optional_tensorflow import tf


def resize_bilinear(images, size, align_corners=False):
    """Bilinearly resizes an NHWC tensor to `size = (height, width)`.

    Args:
        images: `(N, H, W, C)` tensor, any float dtype (the result keeps it).
        size: `(height, width)`, Python ints (or, on TensorFlow, scalar tensors).
        align_corners: `True` for PyTorch `align_corners=True` semantics,
            `False` for half-pixel centres (PyTorch `align_corners=False`).

    Returns:
        `(N, height, width, C)` tensor of the input's dtype.

    Example:
    >>> x = keras.ops.ones((1, 9, 13, 4))
    >>> tuple(resize_bilinear(x, (65, 97), align_corners=True).shape)
    (1, 65, 97, 4)
    """
    if keras.backend.backend() != "tensorflow":
        return _resize_bilinear_gather(images, size, align_corners)
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


def source_coordinates(in_size, out_size, align_corners):
    """PyTorch's bilinear source positions along one axis (float64 NumPy).

    Returns `(lower, upper, frac)`: output pixel `i` reads
    `(1 - frac[i]) * x[lower[i]] + frac[i] * x[upper[i]]`.

    * `align_corners=True`: `src = i * (in - 1) / (out - 1)` (0 when `out == 1`).
    * `align_corners=False`: `src = (i + 0.5) * in / out - 0.5`, clamped at 0
      (half-pixel centres; no antialiasing filter when downsampling).
    """
    out = np.arange(out_size, dtype=np.float64)
    if align_corners:
        scale = (in_size - 1) / (out_size - 1) if out_size > 1 else 0.0
        src = out * scale
    else:
        src = np.maximum((out + 0.5) * (in_size / out_size) - 0.5, 0.0)
    lower = np.minimum(np.floor(src).astype(np.int32), in_size - 1)
    upper = np.minimum(lower + 1, in_size - 1)
    return lower, upper, src - lower


def _lerp_axis(x, axis, out_size, align_corners):
    ops = keras.ops
    lower, upper, frac = source_coordinates(x.shape[axis], out_size, align_corners)
    shape = [1] * len(x.shape)
    shape[axis] = out_size
    frac = ops.cast(np.reshape(frac, shape), x.dtype)
    a = ops.take(x, lower, axis=axis)
    b = ops.take(x, upper, axis=axis)
    return a + (b - a) * frac


def _resize_bilinear_gather(images, size, align_corners):
    ops = keras.ops
    images = ops.convert_to_tensor(images)
    dtype = keras.backend.standardize_dtype(images.dtype)
    # float32 inside for half-precision inputs, as TF's kernel does.
    x = images if dtype in ("float32", "float64") else ops.cast(images, "float32")
    height, width = int(size[0]), int(size[1])
    x = _lerp_axis(x, 1, height, align_corners)
    x = _lerp_axis(x, 2, width, align_corners)
    return ops.cast(x, dtype)
