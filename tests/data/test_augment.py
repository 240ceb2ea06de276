"""Augmentation: exact masks, alignment, padding with ignore, determinism, normalisation."""

import numpy as np
import pytest
import tensorflow as tf

from keras_gald.data import augment as aug
from keras_gald.data import normalization as norm


def blocks_label(height, width, seed=0, block=6, num_values=5):
    """Blocky random label (values 0..num_values-1)."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, num_values, (height // block + 1, width // block + 1))
    return np.kron(coarse, np.ones((block, block), np.int64))[:height, :width].astype(np.int32)


def image_from_label(label):
    """Image whose every channel is `10 * label` (a 'mask derived from the image')."""
    return np.repeat((10.0 * label)[..., None], 3, axis=-1).astype(np.float32)


def near_boundary(mask, radius=1):
    """True where the (2r+1)^2 neighbourhood of a pixel holds more than one value."""
    h, w = mask.shape
    padded = np.pad(mask, radius, mode="edge")
    lo = np.full(mask.shape, np.iinfo(np.int64).max)
    hi = np.full(mask.shape, np.iinfo(np.int64).min)
    for dy in range(2 * radius + 1):
        for dx in range(2 * radius + 1):
            window = padded[dy:dy + h, dx:dx + w]
            lo, hi = np.minimum(lo, window), np.maximum(hi, window)
    return lo != hi


@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4, 5])
def test_mask_values_preserved_and_shapes(seed):
    label = blocks_label(30, 40, seed, num_values=4) * 3  # values {0, 3, 6, 9}
    image, mask = aug.augment_pair(
        tf.constant(image_from_label(label)), tf.constant(label), tf.constant([seed, 7]),
        crop_size=(24, 32), scale_range=(0.5, 2.0), scale_step=0.1,
    )
    assert image.shape == (24, 32, 3) and image.dtype == tf.float32
    assert mask.shape == (24, 32) and mask.dtype == tf.int32
    assert set(np.unique(mask.numpy())) <= {0, 3, 6, 9, 255}


@pytest.mark.parametrize("seed", range(8))
def test_image_and_mask_stay_aligned(seed):
    label = blocks_label(36, 48, seed, block=5, num_values=6)
    image, mask = aug.augment_pair(
        tf.constant(image_from_label(label)), tf.constant(label), tf.constant([seed, 11]),
        crop_size=(32, 32), scale_range=(0.5, 2.0), scale_step=None, flip=True,
    )
    image, mask = image.numpy(), mask.numpy()
    derived = np.round(image[..., 0] / 10.0).astype(np.int64)
    valid = mask != 255
    mismatch = valid & (derived != mask)
    # bilinear blends differ from nearest only next to a label boundary (which may lie just
    # outside the crop for the outermost pixels)
    edge = np.ones(mask.shape, bool)
    edge[1:-1, 1:-1] = False
    assert not (mismatch & ~near_boundary(np.where(valid, mask, -1)) & ~edge).any()
    assert (derived[valid] == mask[valid]).mean() > 0.7
    # control: the same check against a mirrored mask fails (the test can detect misalignment)
    both = valid & np.fliplr(valid)
    assert (derived[both] == np.fliplr(mask)[both]).mean() < 0.6
    # padding: image 0 exactly where the mask is the ignore label
    np.testing.assert_array_equal(image[~valid], 0.0)


def test_flip_alignment_and_that_it_flips():
    label = np.tile(np.arange(8, dtype=np.int32)[None, :], (4, 1))  # column index
    image = image_from_label(label)
    seen = set()
    for s in range(20):
        img, msk = aug.random_flip(tf.constant(image), tf.constant(label), tf.constant([s, 0]))
        img, msk = img.numpy(), msk.numpy()
        np.testing.assert_array_equal(np.round(img[..., 0] / 10), msk)
        seen.add(int(msk[0, 0]))
    assert seen == {0, 7}  # both flipped and unflipped outcomes occur


def test_downscale_pads_bottom_right_with_ignore():
    label = np.full((32, 32), 4, np.int32)
    image = np.full((32, 32, 3), 50.0, np.float32)
    img, msk = aug.augment_pair(
        tf.constant(image), tf.constant(label), tf.constant([3, 3]), crop_size=(32, 32),
        scale_range=(0.5, 0.5), flip=False,
    )
    img, msk = img.numpy(), msk.numpy()
    assert (msk[:16, :16] == 4).all() and (img[:16, :16] == 50).all()
    assert (msk[16:, :] == 255).all() and (msk[:, 16:] == 255).all()
    assert (img[16:, :] == 0).all() and (img[:, 16:] == 0).all()


def test_random_scale_discrete_factors_and_sizes():
    label = tf.zeros((20, 30), tf.int32)
    image = tf.zeros((20, 30, 3))
    sizes = set()
    for s in range(60):
        _, m = aug.random_scale(image, label, tf.constant([s, 1]), (0.5, 2.0), 0.1)
        sizes.add(tuple(m.shape))
    factors = {round(w / 30, 2) for _, w in sizes}
    assert factors <= {round(0.5 + k / 10, 2) for k in range(16)}
    assert len(factors) > 8
    assert all(h == round(20 * w / 30) for h, w in sizes)  # one factor for both axes
    f = aug.draw_scale(tf.constant([1, 2]), (0.7, 1.3), None).numpy()
    assert 0.7 <= f <= 1.3
    with pytest.raises(ValueError, match="scale_range"):
        aug.draw_scale(tf.constant([1, 2]), (2.0, 1.0))


def test_crop_windows_vary_and_are_deterministic():
    label = blocks_label(40, 40, 1, block=3, num_values=9)
    image = image_from_label(label)
    crops = []
    for s in (0, 1, 0):
        img, msk = aug.random_crop(tf.constant(image), tf.constant(label), tf.constant([s, 5]), (16, 16))
        crops.append(msk.numpy())
    np.testing.assert_array_equal(crops[0], crops[2])
    assert not np.array_equal(crops[0], crops[1])


def test_augment_pair_same_seed_same_output():
    label = blocks_label(30, 30, 2)
    args = dict(crop_size=(20, 20), scale_range=(0.5, 2.0))
    a = aug.augment_pair(tf.constant(image_from_label(label)), tf.constant(label), tf.constant([9, 9]), **args)
    b = aug.augment_pair(tf.constant(image_from_label(label)), tf.constant(label), tf.constant([9, 9]), **args)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])


def test_photometric_jitter_range_and_effect():
    rng = np.random.default_rng(0)
    image = tf.constant(rng.uniform(0, 255, (8, 8, 3)).astype(np.float32))
    out = aug.photometric_jitter(image, tf.constant([1, 2])).numpy()
    assert out.min() >= 0 and out.max() <= 255 and not np.allclose(out, image.numpy())
    off = aug.photometric_jitter(image, tf.constant([1, 2]),
                                 dict(brightness=0, contrast=None, saturation=None, hue=0)).numpy()
    np.testing.assert_allclose(off, image.numpy(), rtol=1e-5, atol=1e-3)
    with pytest.raises(ValueError, match="unknown keys"):
        aug.photometric_jitter(image, tf.constant([1, 2]), {"gamma": 1})


def test_augment_runs_inside_tf_data_map():
    label = blocks_label(20, 24, 0)
    ds = tf.data.Dataset.from_tensors((image_from_label(label), label)).map(
        lambda i, m: aug.augment_pair(i, m, tf.constant([1, 2]), crop_size=(16, 16)))
    img, msk = next(iter(ds))
    assert img.shape == (16, 16, 3) and msk.shape == (16, 16)


@pytest.mark.parametrize("mode", ["imagenet", "bgr_mean", None])
def test_normalize_round_trip(mode):
    rgb = np.random.default_rng(0).integers(0, 256, (2, 3, 4, 3)).astype(np.uint8)
    x = norm.normalize(rgb, mode)
    assert x.dtype == tf.float32
    np.testing.assert_allclose(norm.denormalize(x, mode).numpy(), rgb, atol=1e-3)
    np.testing.assert_array_equal(norm.to_uint8_rgb(x, mode), rgb)


def test_normalize_values_and_channel_order():
    red = np.zeros((1, 1, 3), np.uint8)
    red[..., 0] = 255
    bgr = norm.normalize(red, "bgr_mean").numpy()[0, 0]
    np.testing.assert_allclose(bgr, [-104.00698793, -116.66876762, 255 - 122.67891434], rtol=1e-6)
    mean_rgb = np.asarray(norm.IMAGENET_MEAN, np.float32) * 255
    np.testing.assert_allclose(norm.normalize(mean_rgb[None, None], "imagenet"), 0, atol=1e-6)
    white = norm.normalize(np.full((1, 1, 3), 255.0), "imagenet").numpy()[0, 0]
    np.testing.assert_allclose(white, (1 - np.array(norm.IMAGENET_MEAN)) / norm.IMAGENET_STD, rtol=1e-5)
    np.testing.assert_array_equal(norm.normalize(red, None), red.astype(np.float32))
    with pytest.raises(ValueError, match="normalization must be one of"):
        norm.normalize(red, "caffe")
