"""tf.data pipelines: shapes, dtypes, determinism, caching, evaluation, error messages."""

import re

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from keras_gald import data
from tests.data._fixtures import rgb_for, write_image, write_label

CLASSES = ["a", "b", "c", "d"]


def make_folder(root, n=6, height=20, width=24, sizes=None):
    rng = np.random.default_rng(0)
    for i in range(n):
        h, w = sizes[i] if sizes else (height, width)
        label = rng.integers(0, 4, (h // 4 + 1, w // 4 + 1))
        label = np.kron(label, np.ones((4, 4), np.int64))[:h, :w]
        label[0, 0] = 9  # an ignored raw id
        write_image(root / "images" / f"im{i}.png", rgb_for(label, seed=i))
        write_label(root / "labels" / f"im{i}.png", label)
    return data.folder(root, class_names=CLASSES, ignore_ids=(9,))


def batches(ds, n=None):
    out = []
    for i, batch in enumerate(ds):
        if n is not None and i >= n:
            break
        out.append([t.numpy() for t in batch])
    return out


def test_training_batches_shapes_dtypes_values(tmp_path):
    source = make_folder(tmp_path)
    ds = data.make_dataset(source, crop_size=(16, 16), batch_size=4, seed=0)
    assert ds.element_spec[0].shape.as_list() == [4, 16, 16, 3]
    assert ds.element_spec[1].shape.as_list() == [4, 16, 16]
    out = batches(ds)
    assert len(out) == 1  # 6 examples, drop_remainder in training
    images, masks = out[0]
    assert images.dtype == np.float32 and masks.dtype == np.int32
    assert set(np.unique(masks)) <= {0, 1, 2, 3, 255}
    assert -2.2 < images.min() and images.max() < 2.7  # ImageNet-normalised range


def test_same_seed_identical_batches_different_seed_differs(tmp_path):
    source = make_folder(tmp_path)
    kwargs = dict(crop_size=(16, 16), batch_size=2, photometric=True, repeat=2)
    a = batches(data.make_dataset(source, seed=123, **kwargs))
    b = batches(data.make_dataset(source, seed=123, **kwargs))
    c = batches(data.make_dataset(source, seed=124, **kwargs))
    assert len(a) == len(b) == 6
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x[0], y[0])
        np.testing.assert_array_equal(x[1], y[1])
    assert any(not np.array_equal(x[0], z[0]) for x, z in zip(a, c))
    # the two repeated epochs are not copies of each other
    assert any(not np.array_equal(a[i][0], a[i + 3][0]) for i in range(3))


def test_reiterating_gives_new_epoch_but_rebuilding_reproduces(tmp_path):
    source = make_folder(tmp_path)
    ds = data.make_dataset(source, crop_size=(16, 16), batch_size=3, seed=5)
    first, second = batches(ds), batches(ds)
    assert any(not np.array_equal(x[0], y[0]) for x, y in zip(first, second))
    again = batches(data.make_dataset(source, crop_size=(16, 16), batch_size=3, seed=5))
    for x, y in zip(first, again):
        np.testing.assert_array_equal(x[0], y[0])


def test_cache_in_memory_and_file_are_deterministic(tmp_path):
    source = make_folder(tmp_path / "d")
    kwargs = dict(crop_size=(12, 12), batch_size=2, seed=7)
    mem = batches(data.make_dataset(source, cache=True, **kwargs))
    mem2 = batches(data.make_dataset(source, cache=True, **kwargs))
    cache_file = tmp_path / "cache" / "train"
    cache_file.parent.mkdir()
    disk = batches(data.make_dataset(source, cache=str(cache_file), **kwargs))
    assert len(mem) == 3
    for x, y, z in zip(mem, mem2, disk):
        np.testing.assert_array_equal(x[0], y[0])
        np.testing.assert_array_equal(x[1], z[1])
    assert list(cache_file.parent.iterdir())  # the file cache was written


def test_no_shuffle_no_aug_reproduces_the_files(tmp_path):
    source = make_folder(tmp_path)
    ds = data.make_dataset(source, crop_size=(20, 24), batch_size=6, shuffle=False, scale_range=None,
                           flip=False, normalization=None, seed=0)
    images, masks = batches(ds)[0]
    for i, (image_path, label_path) in enumerate(source.pairs):
        np.testing.assert_array_equal(images[i], np.asarray(Image.open(image_path), np.float32))
        expected = np.asarray(Image.open(label_path)).astype(np.int32)
        expected[expected == 9] = 255
        np.testing.assert_array_equal(masks[i], expected)


def test_small_images_are_padded_to_the_crop(tmp_path):
    source = make_folder(tmp_path, n=2, height=8, width=10)
    ds = data.make_dataset(source, crop_size=(16, 16), batch_size=2, scale_range=None, flip=False,
                           normalization="bgr_mean", seed=0)
    images, masks = batches(ds)[0]
    assert (masks[:, 8:, :] == 255).all() and (masks[:, :, 10:] == 255).all()
    assert (images[:, 8:, :] == 0).all() and (images[:, :, 10:] == 0).all()
    assert (masks[:, :8, :10] != 255).mean() > 0.9


def test_eval_dataset_full_images_and_padding(tmp_path):
    source = make_folder(tmp_path, n=3, sizes=[(12, 16), (20, 10), (8, 8)])
    single = batches(data.make_eval_dataset(source, normalization=None))
    assert [b[0].shape for b in single] == [(1, 12, 16, 3), (1, 20, 10, 3), (1, 8, 8, 3)]
    assert [b[1].shape for b in single] == [(1, 12, 16), (1, 20, 10), (1, 8, 8)]
    np.testing.assert_array_equal(single[0][0][0], np.asarray(Image.open(source.pairs[0][0]), np.float32))
    padded = batches(data.make_eval_dataset(source, batch_size=2, include_paths=True))
    images, masks, paths = padded[0]
    assert images.shape == (2, 20, 16, 3) and masks.shape == (2, 20, 16)
    assert (masks[0, 12:] == 255).all() and (masks[1, :, 10:] == 255).all()
    assert (images[0, 12:] == 0).all()
    assert [p.decode() for p in paths] == [source.pairs[0][0], source.pairs[1][0]]
    assert padded[1][0].shape == (1, 8, 8, 3)
    # make_dataset(training=False) is the evaluation pipeline
    same = batches(data.make_dataset(source, training=False, batch_size=1, normalization=None))
    np.testing.assert_array_equal(same[1][1], single[1][1])


def test_dataset_source_and_synthetic(tmp_path):
    images = np.random.default_rng(0).integers(0, 255, (5, 10, 12, 3), dtype=np.uint8)
    labels = np.random.default_rng(1).integers(0, 4, (5, 10, 12, 1), dtype=np.uint8)
    info = data.DatasetInfo.from_mapping("toy", CLASSES, {i: i for i in range(4)})
    ds = data.make_dataset((tf.data.Dataset.from_tensor_slices((images, labels)), info),
                           crop_size=(8, 8), batch_size=5, seed=1)
    x, y = batches(ds)[0]
    assert x.shape == (5, 8, 8, 3) and set(np.unique(y)) <= {0, 1, 2, 3}
    bad = labels.copy()
    bad[3, 0, 0, 0] = 7
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"<element 3>[\s\S]*7"):
        batches(data.make_eval_dataset(tf.data.Dataset.from_tensor_slices((images, bad)), info))
    # validate=False turns unknown values into the ignore label instead
    lenient = batches(data.make_eval_dataset(tf.data.Dataset.from_tensor_slices((images, bad)), info,
                                             validate=False))
    assert lenient[3][1][0, 0, 0] == 255


def test_size_mismatch_names_both_files(tmp_path):
    source = make_folder(tmp_path, n=2)
    image_path, label_path = source.pairs[1]
    write_label(label_path, np.zeros((10, 24)))
    pattern = re.escape(image_path) + r"[\s\S]*" + re.escape(label_path)
    with pytest.raises(tf.errors.InvalidArgumentError, match="image size differs from label size[\\s\\S]*" + pattern):
        batches(data.make_dataset(source, crop_size=(8, 8), batch_size=1, seed=0))
    with pytest.raises(ValueError, match=re.escape(image_path) + " differs from label size 10x24"):
        data.make_dataset(source, crop_size=(8, 8), batch_size=1, prescan=True)


def test_palette_or_rgb_label_is_rejected(tmp_path):
    source = make_folder(tmp_path, n=1)
    label_path = source.pairs[0][1]
    palette_label = Image.fromarray(np.zeros((20, 24), np.uint8), mode="L").convert("P")
    palette_label.save(label_path)
    with pytest.raises(ValueError, match=re.escape(label_path) + " is a palette PNG"):
        data.check_pairs(source.pairs, source.info)
    write_image(label_path, np.zeros((20, 24, 3)))
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"single-channel[\s\S]*" + re.escape(label_path)):
        batches(data.make_eval_dataset(source))


def test_argument_errors(tmp_path):
    source = make_folder(tmp_path, n=1)
    with pytest.raises(ValueError, match="crop_size"):
        data.make_dataset(source, crop_size=None)
    with pytest.raises(ValueError, match="normalization must be one of"):
        data.make_dataset(source, crop_size=(8, 8), normalization="caffe")
    with pytest.raises(ValueError, match="DatasetInfo"):
        data.make_dataset(source.pairs, crop_size=(8, 8))
    with pytest.raises(ValueError, match="must yield \\(image uint8"):
        data.make_dataset((tf.data.Dataset.from_tensors({"image": 1}), source.info), crop_size=(8, 8))
    with pytest.raises(data.DataLayoutError, match="no \\(image, label\\) pairs"):
        data.make_dataset(([], source.info), crop_size=(8, 8))


def test_load_pair_decodes_jpeg_and_png(tmp_path):
    label = np.arange(12, dtype=np.uint8).reshape(3, 4)
    image_path = write_image(tmp_path / "x.jpg", np.full((3, 4, 3), 128))
    label_path = write_label(tmp_path / "x.png", label)
    image, decoded = data.load_pair(image_path, label_path)
    assert image.shape == (3, 4, 3) and image.dtype == tf.uint8
    np.testing.assert_array_equal(decoded.numpy(), label)


def test_keras_fit_consumes_the_pipeline(tmp_path):
    import keras

    source = make_folder(tmp_path, n=4)
    ds = data.make_dataset(source, crop_size=(16, 16), batch_size=2, seed=0)
    inputs = keras.Input((None, None, 3))
    logits = keras.layers.Conv2D(4, 1)(inputs)
    model = keras.Model(inputs, logits)
    model.compile("sgd", keras.losses.SparseCategoricalCrossentropy(from_logits=True, ignore_class=255))
    history = model.fit(ds, epochs=1, verbose=0, shuffle=False)
    assert np.isfinite(history.history["loss"][0])
