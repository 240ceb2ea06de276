"""Training augmentation, as in the authors' PyTorch datasets (pure TF, runs inside `tf.data`).

The authors' `Cityscapes.__getitem__` / `CamVidDataSet.__getitem__` do, per image:

1. random scale `f = 0.5 + randint(0, 15) / 10` (CamVid; Cityscapes uses `0.7 + randint(0, 14)
   / 10`): image bilinear, label nearest;
2. mean subtraction (so the padding below is the mean colour);
3. pad bottom / right up to the crop size with 0 (image) and the ignore label (label);
4. random crop;
5. random horizontal flip.

Here: `random_scale` (range and step configurable; `step=None` draws a continuous factor),
`pad_to_size`, `random_crop`, `random_flip`, plus an optional `photometric_jitter` (not in
the authors' code; off by default). `augment_pair` chains the geometric steps.

All randomness is stateless (`tf.random.stateless_*`): a `seed` is an int32/int64 tensor of
shape `[2]`, so the same seed gives the same output on every run and in parallel maps.
Masks are only ever resized with nearest neighbour, padded, cropped and flipped: their values
stay a subset of the input values plus `ignore_label`.

Shapes: `image (H, W, C)` float32, `mask (H, W)` integer; outputs keep dtypes.

Example:
    >>> img, msk = augment_pair(img, msk, seed=tf.constant([1, 2]), crop_size=(64, 64))
"""

import tensorflow as tf

from keras_gald.data.info import IGNORE_LABEL

DEFAULT_PHOTOMETRIC = {
    "brightness": 32.0 / 255.0,  # max delta on [0, 1] images
    "contrast": (0.5, 1.5),
    "saturation": (0.5, 1.5),
    "hue": 0.05,  # max delta, fraction of the hue circle
}


def _split(seed, num):
    return tf.unstack(tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), num=num))


def draw_scale(seed, scale_range=(0.5, 2.0), step=0.1):
    """One random scale factor (float32 scalar) in `scale_range`.

    With `step` (the authors' 0.1), the factor is `lo + k * step`, `k` uniform in
    `0 .. round((hi - lo) / step)`; with `step=None` it is uniform in `[lo, hi]`.
    """
    lo, hi = float(scale_range[0]), float(scale_range[1])
    if not 0 < lo <= hi:
        raise ValueError(f"scale_range must satisfy 0 < lo <= hi, got {scale_range}")
    if lo == hi:
        return tf.constant(lo, tf.float32)
    if step:
        n = int(round((hi - lo) / step))
        k = tf.random.stateless_uniform([], seed, minval=0, maxval=n + 1, dtype=tf.int32)
        return tf.constant(lo, tf.float32) + tf.cast(k, tf.float32) * float(step)
    return tf.random.stateless_uniform([], seed, minval=lo, maxval=hi, dtype=tf.float32)


def resize_pair(image, mask, size):
    """Resizes `image` bilinearly (half-pixel centres, as cv2 INTER_LINEAR) and `mask` with
    nearest neighbour to `size = (h, w)`; the mask keeps its dtype and values."""
    image = tf.image.resize(image, size, method="bilinear")
    mask = tf.image.resize(mask[..., None], size, method="nearest")[..., 0]
    return image, mask


def random_scale(image, mask, seed, scale_range=(0.5, 2.0), step=0.1):
    """Rescales image and mask by one random factor (sizes rounded, at least 1 pixel)."""
    factor = draw_scale(seed, scale_range, step)
    hw = tf.cast(tf.shape(mask)[:2], tf.float32)
    size = tf.maximum(tf.cast(tf.round(hw * factor), tf.int32), 1)
    return resize_pair(image, mask, size)


def pad_to_size(image, mask, size, image_pad_value=0.0, ignore_label=IGNORE_LABEL):
    """Pads bottom / right so that `H >= size[0]` and `W >= size[1]` (no-op when larger).

    The image is padded with `image_pad_value` (0: the authors pad after mean subtraction,
    i.e. with the mean colour), the mask with `ignore_label`.
    """
    shape = tf.shape(mask)
    pad_h = tf.maximum(size[0] - shape[0], 0)
    pad_w = tf.maximum(size[1] - shape[1], 0)
    image = tf.pad(
        image, [[0, pad_h], [0, pad_w], [0, 0]], constant_values=tf.cast(image_pad_value, image.dtype)
    )
    mask = tf.pad(mask, [[0, pad_h], [0, pad_w]], constant_values=tf.cast(ignore_label, mask.dtype))
    return image, mask


def random_crop(image, mask, seed, size):
    """The same random `size = (h, w)` window of image and mask (both at least that large)."""
    shape = tf.shape(mask)
    tf.debugging.assert_greater_equal(
        shape[:2], tf.constant(size, tf.int32), message="random_crop: pad to the crop size first"
    )
    seed_h, seed_w = _split(seed, 2)
    off_h = tf.random.stateless_uniform([], seed_h, 0, shape[0] - size[0] + 1, dtype=tf.int32)
    off_w = tf.random.stateless_uniform([], seed_w, 0, shape[1] - size[1] + 1, dtype=tf.int32)
    image = tf.slice(image, [off_h, off_w, 0], [size[0], size[1], -1])
    mask = tf.slice(mask, [off_h, off_w], [size[0], size[1]])
    return image, mask


def random_flip(image, mask, seed, probability=0.5):
    """Horizontal flip of image and mask together, with `probability`."""
    do_flip = tf.random.stateless_uniform([], seed) < probability
    image = tf.cond(do_flip, lambda: tf.reverse(image, [1]), lambda: image)
    mask = tf.cond(do_flip, lambda: tf.reverse(mask, [1]), lambda: mask)
    return image, mask


def photometric_jitter(image, seed, params=None):
    """Random brightness, contrast, saturation and hue on an RGB image in `[0, 255]` (float).

    `params` overrides entries of `DEFAULT_PHOTOMETRIC`; an entry set to `None` or 0 is off.
    The result is clipped to `[0, 255]`. Apply it before normalisation.
    """
    cfg = dict(DEFAULT_PHOTOMETRIC)
    cfg.update(params or {})
    unknown = set(cfg) - set(DEFAULT_PHOTOMETRIC)
    if unknown:
        raise ValueError(f"photometric_jitter: unknown keys {sorted(unknown)}")
    seeds = _split(seed, 4)
    x = tf.cast(image, tf.float32) / 255.0
    if cfg["brightness"]:
        x = tf.image.stateless_random_brightness(x, cfg["brightness"], seeds[0])
    if cfg["contrast"]:
        x = tf.image.stateless_random_contrast(x, *cfg["contrast"], seed=seeds[1])
    if cfg["saturation"]:
        x = tf.image.stateless_random_saturation(tf.clip_by_value(x, 0, 1), *cfg["saturation"], seed=seeds[2])
    if cfg["hue"]:
        x = tf.image.stateless_random_hue(tf.clip_by_value(x, 0, 1), cfg["hue"], seeds[3])
    return tf.clip_by_value(x, 0.0, 1.0) * 255.0


def augment_pair(
    image,
    mask,
    seed,
    crop_size,
    scale_range=(0.5, 2.0),
    scale_step=0.1,
    flip=True,
    image_pad_value=0.0,
    ignore_label=IGNORE_LABEL,
):
    """Random scale -> pad -> random crop -> random flip (the authors' order).

    Args:
        image: `(H, W, C)` float32 (already normalised, so the pad value is meaningful).
        mask: `(H, W)` integer train ids.
        seed: int tensor `[2]`.
        crop_size: `(h, w)` output size.
        scale_range: `(lo, hi)` or `None` (no rescaling).
        scale_step: 0.1 as the authors, or `None` for a continuous factor.
        flip: random horizontal flip with probability 0.5.
        image_pad_value, ignore_label: fill values for padding.

    Returns:
        `image (h, w, C)`, `mask (h, w)` with static shapes set.
    """
    crop_size = (int(crop_size[0]), int(crop_size[1]))
    s_scale, s_crop, s_flip = _split(seed, 3)
    if scale_range is not None:
        image, mask = random_scale(image, mask, s_scale, scale_range, scale_step)
    image, mask = pad_to_size(image, mask, crop_size, image_pad_value, ignore_label)
    image, mask = random_crop(image, mask, s_crop, crop_size)
    if flip:
        image, mask = random_flip(image, mask, s_flip)
    channels = image.shape[-1]
    image = tf.ensure_shape(image, [crop_size[0], crop_size[1], channels])
    mask = tf.ensure_shape(mask, [crop_size[0], crop_size[1]])
    return image, mask
