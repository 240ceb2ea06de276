"""Synthetic street scenes: determinism, class coverage, small and thin objects, tf.data source."""

import numpy as np
import pytest

from keras_gald import data
from keras_gald.data import synthetic as syn

H, W = 96, 128


@pytest.fixture(scope="module")
def scenes():
    return data.synthetic_arrays(12, H, W, seed=0)


def test_deterministic_by_seed_and_index():
    a_img, a_lbl = data.synthetic_scene(H, W, seed=3, index=5)
    b_img, b_lbl = data.synthetic_scene(H, W, seed=3, index=5)
    np.testing.assert_array_equal(a_img, b_img)
    np.testing.assert_array_equal(a_lbl, b_lbl)
    c_img, c_lbl = data.synthetic_scene(H, W, seed=4, index=5)
    d_img, _ = data.synthetic_scene(H, W, seed=3, index=6)
    assert not np.array_equal(a_lbl, c_lbl) and not np.array_equal(a_img, d_img)
    # scene i does not depend on how many scenes are generated before it
    imgs, lbls = data.synthetic_arrays(3, H, W, seed=3, start=4)
    np.testing.assert_array_equal(imgs[1], a_img)
    np.testing.assert_array_equal(lbls[1], a_lbl)


def test_shapes_dtypes_and_any_size():
    for h, w in ((H, W), (33, 47), (64, 200)):
        image, label = data.synthetic_scene(h, w, seed=1)
        assert image.shape == (h, w, 3) and image.dtype == np.uint8
        assert label.shape == (h, w) and label.dtype == np.uint8
        assert label.max() < data.SYNTHETIC_INFO.num_classes
    with pytest.raises(ValueError, match="height, width >= 8"):
        data.synthetic_scene(4, 4)


def test_class_coverage(scenes):
    _, labels = scenes
    counts = np.bincount(labels.ravel(), minlength=9)
    assert (counts > 0).all(), counts
    # large "stuff" dominates, as in street scenes
    stuff = counts[[syn.SKY, syn.BUILDING, syn.ROAD, syn.SIDEWALK, syn.VEGETATION]].sum()
    assert stuff / counts.sum() > 0.75
    # every scene has several classes and a road; cars and people are in most scenes
    # (they can be hidden behind nearer objects)
    present = [set(np.unique(label)) for label in labels]
    assert all(syn.ROAD in p and len(p) >= 6 for p in present)
    assert sum(syn.CAR in p for p in present) >= 10 and sum(syn.PERSON in p for p in present) >= 9


def _components(mask):
    """Sizes of 4-connected components of a boolean mask."""
    seen = np.zeros_like(mask, bool)
    sizes = []
    for y, x in zip(*np.nonzero(mask)):
        if seen[y, x]:
            continue
        stack, size = [(y, x)], 0
        seen[y, x] = True
        while stack:
            cy, cx = stack.pop()
            size += 1
            for ny, nx in ((cy + 1, cx), (cy - 1, cx), (cy, cx + 1), (cy, cx - 1)):
                if 0 <= ny < mask.shape[0] and 0 <= nx < mask.shape[1] and mask[ny, nx] and not seen[ny, nx]:
                    seen[ny, nx] = True
                    stack.append((ny, nx))
        sizes.append(size)
    return sizes


def test_small_objects_and_thin_poles(scenes):
    _, labels = scenes
    small = []
    for label in labels:
        for cls in (syn.PERSON, syn.SIGN, syn.CAR):
            small += [s for s in _components(label == cls) if s < 0.005 * H * W]
    assert len(small) >= 10  # objects of under ~60 pixels occur regularly
    widths = []
    for label in labels:
        pole = label == syn.POLE
        widths += [int(row.sum()) for row in pole if 0 < row.sum() <= 4]
    assert widths and np.median(widths) <= 3  # poles are thin structures
    assert (labels == syn.POLE).sum() / labels.size < 0.02


def test_not_solvable_from_pixel_colour_alone(scenes):
    images, labels = scenes
    means = np.stack([images[labels == c].mean(0) for c in range(9)])
    dist = ((images[..., None, :].astype(np.float32) - means) ** 2).sum(-1)
    accuracy = (dist.argmin(-1) == labels).mean()
    majority = np.bincount(labels.ravel()).max() / labels.size
    assert majority < accuracy < 0.8, (majority, accuracy)


def test_dataset_cached_and_lazy_are_identical():
    eager = list(data.synthetic_dataset(3, 40, 48, seed=2, cache=True).as_numpy_iterator())
    lazy = list(data.synthetic_dataset(3, 40, 48, seed=2, cache=False).as_numpy_iterator())
    assert len(eager) == len(lazy) == 3
    for (a, b), (c, d) in zip(eager, lazy):
        assert a.shape == (40, 48, 3) and b.shape == (40, 48)
        np.testing.assert_array_equal(a, c)
        np.testing.assert_array_equal(b, d)


def test_synthetic_source_through_make_dataset():
    source = data.synthetic_source(4, 48, 64, seed=0)
    assert source[1] is data.SYNTHETIC_INFO
    ds = data.make_dataset(source, crop_size=(48, 64), batch_size=2, scale_range=(0.75, 1.5), seed=0)
    images, masks = next(iter(ds))
    assert images.shape == (2, 48, 64, 3) and masks.shape == (2, 48, 64)
    assert set(np.unique(masks.numpy())) <= set(range(9)) | {255}
    evaluation = data.make_eval_dataset(source, batch_size=4, normalization=None)
    images, masks = next(iter(evaluation))
    expected_images, expected_labels = data.synthetic_arrays(4, 48, 64, seed=0)
    np.testing.assert_array_equal(images.numpy(), expected_images.astype(np.float32))
    np.testing.assert_array_equal(masks.numpy(), expected_labels)
