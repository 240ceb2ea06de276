"""Tests for keras_gald.visualize (PIL drawing, LDv1 mask maps, LDv2 affinities)."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np
import pytest
from PIL import Image

from keras_gald import visualize
from keras_gald.data import normalize
from keras_gald.ops.local_attention import neighbour_offsets
from keras_gald.models import GALD


def test_colorize_overlay_error_map_side_by_side(tmp_path):
    palette = [(10, 20, 30), (200, 0, 0)]
    mask = np.array([[0, 1], [255, 1]])
    color = visualize.colorize(mask, palette)
    assert color.tolist() == [[[10, 20, 30], [200, 0, 0]], [[0, 0, 0], [200, 0, 0]]]
    image = np.full((2, 2, 3), 100, np.uint8)
    assert visualize.overlay(image, color, 0.5)[0, 1].tolist() == [150, 50, 50]
    err = visualize.error_map(np.array([[0, 0], [1, 1]]), mask)
    assert err[0, 0].tolist() == list(visualize.CORRECT_COLOR)
    assert err[0, 1].tolist() == list(visualize.WRONG_COLOR)
    assert err[1, 0].tolist() == list(visualize.IGNORE_COLOR)
    panel = visualize.render_eval_example(np.zeros((5, 7, 3), np.uint8), np.zeros((5, 7), int),
                                          np.ones((5, 7), int), palette, tmp_path / "x.png")
    assert panel.size == (4 * 7 + 3 * 4, 5 + 14)
    assert Image.open(tmp_path / "x.png").size == panel.size


def test_confusion_matrix_image_shades_by_row_share():
    cm = np.array([[9, 1], [0, 5]])
    img = np.asarray(visualize.confusion_matrix_image(cm, ["a", "bb"], cell=10))
    assert img.ndim == 3 and img.shape[0] > 20
    low, high = visualize.heatmap(np.array([[0.0, 1.0]]))[0].astype(int)
    assert low[2] > 100 and low[0] == 0  # low = blue
    assert high[0] > 100 and high[2] == 0  # high = red
    # diagonal cells blue-ish, off-diagonal red-ish: the 90% cell is darker than the 10% one
    assert cm[0, 0] > cm[0, 1]


def _model(ld, seed=0):
    keras.utils.set_random_seed(seed)
    return GALD("resnet_tiny", ga="aspp", ld=ld, num_classes=3, head_channels=32, aspp_filters=16)


def test_ldv1_mask_map_matches_layer(tmp_path):
    model = _model("v1")
    image = np.random.default_rng(0).integers(0, 256, (65, 97, 3), dtype=np.uint8)
    x = np.asarray(normalize(image))
    mask = visualize.ldv1_mask_map(model, x)
    _, layer = visualize.find_layer(model, "LDv1")
    features = keras.Model(model.input, layer.input)(x[None])
    expected = np.asarray(layer.compute_mask_map(features))[0].mean(-1)
    assert mask.shape == expected.shape == tuple(features.shape[1:3])
    np.testing.assert_allclose(mask, expected, rtol=1e-6)
    assert 0 < mask.min() and mask.max() < 1
    # the mask map really depends on the image
    assert np.abs(visualize.ldv1_mask_map(model, -x) - mask).max() > 1e-6
    returned = visualize.render_ldv1_mask(model, image, tmp_path / "fig7.png")
    np.testing.assert_allclose(returned, mask, rtol=1e-6)
    assert Image.open(tmp_path / "fig7.png").size[0] > 3 * 97


def test_ldv2_affinity_pixel_mapping_and_render(tmp_path):
    model = _model("v2")
    image = np.random.default_rng(1).integers(0, 256, (65, 97, 3), dtype=np.uint8)
    x = np.asarray(normalize(image))
    _, layer = visualize.find_layer(model, "LDv2")
    inputs = keras.Model(model.input, layer.input)(x[None])
    weights = np.asarray(layer.attention_weights(list(inputs)))
    h, w = weights.shape[1:3]
    k = layer.kernel_size
    for pixel in [(0, 0), (64, 96), (30, 50)]:
        got, (fy, fx) = visualize.ldv2_affinity(model, x, pixel, return_feature_pixel=True)
        assert (fy, fx) == (min(pixel[0] * h // 65, h - 1), min(pixel[1] * w // 97, w - 1))
        assert got.shape == (k, k)
        np.testing.assert_allclose(got.ravel(), weights[0, fy, fx].mean(0), rtol=1e-6)
        np.testing.assert_allclose(got.sum(), 1.0, rtol=1e-5)
    assert len(neighbour_offsets(k, layer.dilation_rate)) == k * k
    with pytest.raises(ValueError):
        visualize.ldv2_affinity(model, x, (65, 0))
    res = visualize.render_ldv2_affinity(model, image, tmp_path / "fig9.png", pixels=[(10, 10), (40, 70)])
    assert len(res) == 2 and Image.open(tmp_path / "fig9.png").size[0] > 97
    with pytest.raises(ValueError, match="no LDv2"):
        visualize.ldv2_affinity(_model("v1"), x)
