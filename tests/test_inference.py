"""Tests for keras_gald.inference (whole / sliding / multi-scale + flip prediction)."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_gald import inference
from keras_gald.models import GALD


def _conv_model(kernel_size, num_classes=4, seed=0, layers=1):
    keras.utils.set_random_seed(seed)
    x = inputs = keras.Input((None, None, 3))
    for i in range(layers - 1):
        x = keras.layers.Conv2D(6, kernel_size, padding="same", activation="tanh")(x)
    x = keras.layers.Conv2D(num_classes, kernel_size, padding="same")(x)
    return keras.Model(inputs, x)


def _images(n, h, w, seed=0):
    return np.random.default_rng(seed).normal(size=(n, h, w, 3)).astype(np.float32)


def _numpy_sliding(model, image, crop, stride):
    """Independent reference: per-pixel list of tile predictions, averaged."""
    h, w, _ = image.shape
    ch, cw = crop
    ys = list(range(0, max(h - ch, 0) + 1, stride[0]))
    xs = list(range(0, max(w - cw, 0) + 1, stride[1]))
    if ys[-1] + ch < h:
        ys.append(h - ch)
    if xs[-1] + cw < w:
        xs.append(w - cw)
    total = None
    count = np.zeros((h, w, 1))
    for y0 in ys:
        for x0 in xs:
            tile = np.zeros((1, ch, cw, 3), np.float32)
            part = image[y0:y0 + ch, x0:x0 + cw]
            tile[0, : part.shape[0], : part.shape[1]] = part
            out = np.asarray(model(tile))[0, : part.shape[0], : part.shape[1]].astype(np.float64)
            if total is None:
                total = np.zeros((h, w, out.shape[-1]))
            total[y0:y0 + part.shape[0], x0:x0 + part.shape[1]] += out
            count[y0:y0 + part.shape[0], x0:x0 + part.shape[1]] += 1
    return total / count


@pytest.mark.parametrize("size", [(17, 23), (40, 31), (9, 50)])
def test_sliding_pointwise_model_equals_whole(size):
    model = _conv_model(1)
    images = _images(2, *size)
    whole = inference.predict_whole(model, images)
    sliding = inference.predict_sliding(model, images, crop_size=(8, 11), stride=(5, 4), batch_tiles=3)
    assert sliding.shape == whole.shape == (2, *size, 4)
    np.testing.assert_allclose(sliding, whole, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("size,crop,stride", [((29, 37), (12, 16), None), ((33, 20), (10, 10), (3, 7)),
                                              ((7, 9), (12, 16), None)])
def test_sliding_matches_numpy_reference(size, crop, stride):
    model = _conv_model(3, layers=2)
    images = _images(1, *size, seed=1)
    got = inference.predict_sliding(model, images, crop_size=crop, stride=stride, batch_tiles=2)
    default = stride or tuple(int(np.ceil(c * 2 / 3)) for c in crop)
    ref = _numpy_sliding(model, images[0], crop, default)
    np.testing.assert_allclose(got[0], ref, rtol=1e-4, atol=1e-5)
    # The tiles differ from the whole image near tile borders (zero padding), so the
    # reference is not trivially the whole-image prediction.
    whole = inference.predict_whole(model, images)
    if size[0] > crop[0]:
        assert np.abs(whole - got).max() > 1e-4


def test_sliding_interior_equals_whole_for_translation_equivariant_net():
    model = _conv_model(3, layers=2)  # receptive radius 2
    images = _images(1, 30, 30, seed=2)
    whole = inference.predict_whole(model, images)
    # One tile covering everything plus border: interior far from the padding is exact.
    got = inference.predict_sliding(model, images, crop_size=(40, 40))
    np.testing.assert_allclose(got[:, :28, :28], whole[:, :28, :28], rtol=1e-5, atol=1e-5)
    # ... but not at the image border: the hidden layer's zero padding differs from the
    # hidden activations computed on the padded tile.
    assert np.abs(got[:, 29] - whole[:, 29]).max() > 1e-4


def test_sliding_crop_equal_to_image_equals_whole_gald():
    model = GALD("resnet_tiny", ga="aspp", ld="v2", num_classes=3, head_channels=32, aspp_filters=16)
    images = _images(1, 33, 45, seed=3)
    whole = inference.predict_whole(model, images)
    assert whole.shape == (1, 33, 45, 3)
    sliding = inference.predict_sliding(model, images, crop_size=(33, 45))
    np.testing.assert_allclose(sliding, whole, rtol=1e-5, atol=1e-5)
    bigger = inference.predict_sliding(model, images[0], crop_size=(48, 64))
    assert bigger.shape == (1, 33, 45, 3) and np.isfinite(bigger).all()


def test_flip_tta_on_flip_symmetric_model_is_identity():
    model = _conv_model(1)  # pointwise => flip-equivariant
    images = _images(1, 15, 21)
    plain = inference.predict_whole(model, images)
    tta = inference.predict_multiscale(model, images, scales=(1.0,), flip=True, average="logits")
    np.testing.assert_allclose(tta, plain, rtol=1e-5, atol=1e-5)


def test_flip_and_multiscale_match_manual_average():
    model = _conv_model(3, layers=2, seed=4)
    images = _images(2, 19, 27, seed=5)
    got = inference.predict_multiscale(model, images, scales=(0.5, 1.25), flip=True)
    expected = []
    for b in range(2):
        acc = 0
        for s in (0.5, 1.25):
            size = (round(19 * s), round(27 * s))
            x = tf.image.resize(images[b:b + 1], size).numpy()
            for flipped in (False, True):
                v = x[:, :, ::-1] if flipped else x
                out = np.asarray(model(np.ascontiguousarray(v)))
                if flipped:
                    out = out[:, :, ::-1]
                out = tf.image.resize(out, (19, 27)).numpy()
                acc = acc + tf.nn.softmax(out, axis=-1).numpy()
        expected.append(acc[0] / 4)
    np.testing.assert_allclose(got, np.stack(expected), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(got.sum(-1), 1.0, rtol=1e-5)
    # Flip TTA on a model that is not flip-symmetric changes the result.
    no_flip = inference.predict_multiscale(model, images, scales=(0.5, 1.25), flip=False)
    assert np.abs(no_flip - got).max() > 1e-4


def test_multiscale_with_sliding_odd_sizes():
    model = _conv_model(1)
    images = _images(1, 23, 31)
    got = inference.predict_multiscale(model, images, scales=(1.0,), flip=False,
                                       sliding={"crop_size": (10, 12), "batch_tiles": 2},
                                       average="logits")
    np.testing.assert_allclose(got, inference.predict_whole(model, images), rtol=1e-5, atol=1e-5)


def test_tile_grid_covers_image_and_bad_args():
    boxes = inference.tile_grid(1024, 2048, (832, 832), (555, 555))
    cover = np.zeros((1024, 2048), int)
    for y0, y1, x0, x1 in boxes:
        assert y1 - y0 == 832 and x1 - x0 == 832
        cover[y0:y1, x0:x1] += 1
    assert cover.min() >= 1 and len(boxes) == 2 * 4
    with pytest.raises(ValueError):
        inference.predict_whole(_conv_model(1), np.zeros((4, 4)))
    with pytest.raises(ValueError):
        inference.predict_multiscale(_conv_model(1), np.zeros((1, 4, 4, 3)), average="max")
