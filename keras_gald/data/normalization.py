"""Image normalisation (and its inverse, for visualisation).

Modes (`normalization=` everywhere in `keras_gald.data`):

- `"imagenet"` (default): RGB in `[0, 1]`, minus the ImageNet mean
  `(0.485, 0.456, 0.406)`, divided by the std `(0.229, 0.224, 0.225)`; channels stay RGB.
  This is the authors' `--rgb True` setting (PyTorch-pretrained backbones).
- `"bgr_mean"`: the authors' default Caffe-style input: channels reordered to **BGR**, values
  in `[0, 255]` minus the BGR mean `(104.00698793, 116.66876762, 122.67891434)`, no scaling.
- `None` / `"none"`: RGB float32 in `[0, 255]`, unchanged.

Inputs are RGB images with values in `[0, 255]` (uint8 or float), any leading batch dims,
channels last. Outputs are float32 TF tensors.

Example:
    >>> x = normalize(image_uint8, "bgr_mean")
    >>> rgb = denormalize(x, "bgr_mean")          # float32 RGB in [0, 255]
"""

import numpy as np
import tensorflow as tf

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
BGR_MEAN = (104.00698793, 116.66876762, 122.67891434)
NORMALIZATIONS = ("imagenet", "bgr_mean", None)


def _check_mode(mode):
    if mode == "none":
        mode = None
    if mode not in NORMALIZATIONS:
        raise ValueError(f"normalization must be one of {NORMALIZATIONS}, got {mode!r}")
    return mode


def normalize(image, mode="imagenet"):
    """RGB `[0, 255]` image(s) `(..., H, W, 3)` -> normalised float32 network input."""
    mode = _check_mode(mode)
    image = tf.cast(image, tf.float32)
    if mode == "imagenet":
        return (image / 255.0 - tf.constant(IMAGENET_MEAN)) / tf.constant(IMAGENET_STD)
    if mode == "bgr_mean":
        return tf.reverse(image, axis=[-1]) - tf.constant(BGR_MEAN, tf.float32)
    return image


def denormalize(image, mode="imagenet"):
    """Inverse of `normalize`: network input -> float32 RGB in `[0, 255]` (not clipped)."""
    mode = _check_mode(mode)
    image = tf.cast(image, tf.float32)
    if mode == "imagenet":
        return (image * tf.constant(IMAGENET_STD) + tf.constant(IMAGENET_MEAN)) * 255.0
    if mode == "bgr_mean":
        return tf.reverse(image + tf.constant(BGR_MEAN, tf.float32), axis=[-1])
    return image


def to_uint8_rgb(image, mode="imagenet"):
    """`denormalize`, rounded and clipped to a `np.uint8` RGB array (for saving / plotting)."""
    rgb = denormalize(image, mode)
    return np.clip(np.round(np.asarray(rgb)), 0, 255).astype(np.uint8)
