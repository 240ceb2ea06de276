"""keras_gald.data.folder_dataset: classes.txt, layouts, seeded split, RGB masks, summary."""

import json
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from keras_gald import data
from keras_gald.data import folder_dataset as fd
from tests.folder._make import CLASSES, COLOURS, make_folder, scene


def test_classes_file_names_colours_and_ignore(tmp_path):
    path = tmp_path / "classes.txt"
    path.write_text("# my classes\nsky 1 2 3\ntraffic sign 4 5 6\n\nignore 0 0 0\n")
    names, colours, ignore = fd.parse_classes_file(path)
    assert names == ["sky", "traffic sign"]
    assert colours == [(1, 2, 3), (4, 5, 6)]
    assert ignore == [(0, 0, 0)]
    path.write_text("sky\nroad\n")
    assert fd.parse_classes_file(path) == (["sky", "road"], None, [])


@pytest.mark.parametrize("text, message", [
    ("sky 1 2 3\nroad\n", "without a colour: road"),
    ("sky 1 2 300\n", "0..255"),
    ("sky\nsky\n", "listed twice"),
    ("sky\nignore\n", "needs a colour"),
])
def test_classes_file_errors_name_the_file(tmp_path, text, message):
    path = tmp_path / "classes.txt"
    path.write_text(text)
    with pytest.raises(ValueError, match=message) as err:
        fd.parse_classes_file(path)
    assert str(path) in str(err.value)


def test_split_layout_matches_by_relative_path(tmp_path):
    root = make_folder(tmp_path / "d", layout="splits", train=3, val=2)
    ds = data.load_folder(root)
    assert ds.layout == "splits" and set(ds.splits) == {"train", "val"}
    assert ds.info.class_names == CLASSES and ds.info.label_colors is None
    for image, label in ds.splits["val"].pairs:
        assert "/val/images/" in image and label == image.replace("/images/", "/labels/")
    os.remove(root / "train" / "labels" / "img01.png")
    with pytest.raises(data.DataLayoutError, match="img01.png"):
        data.load_folder(root)
    with pytest.raises(ValueError, match="already has split folders"):
        data.load_folder(root, val_fraction=0.2)


def test_single_pool_split_is_seeded_and_written(tmp_path):
    root = make_folder(tmp_path / "d", layout="single", train=8, val=2)
    with pytest.raises(ValueError, match="--val-fraction"):
        data.load_folder(root)
    a = data.load_folder(root, val_fraction=0.25, seed=3)
    b = data.load_folder(root, val_fraction=0.25, seed=3)
    c = data.load_folder(root, val_fraction=0.25, seed=4)
    assert a.split_record == b.split_record
    assert len(a.split_record["val"]) == 3 and len(a.split_record["train"]) == 7
    assert a.split_record["val"] != c.split_record["val"]
    assert not set(a.split_record["val"]) & set(a.split_record["train"])
    assert [p[0] for p in a.splits["val"].pairs] == [
        str(root / "images" / f"{k}.png") for k in a.split_record["val"]]
    # a split file reproduces the split, whatever the seed / fraction asked now
    path = data.write_split_file(tmp_path / "run" / "folder_split.json", a.split_record)
    again = data.load_folder(root, split_file=path, seed=99)
    assert again.splits["val"].pairs == a.splits["val"].pairs
    record = json.loads(path.read_text())
    record["val"].append("nope")
    path.write_text(json.dumps(record))
    with pytest.raises(data.DataLayoutError, match="nope"):
        data.load_folder(root, split_file=path)


def test_classes_argument_and_missing_classes(tmp_path):
    root = make_folder(tmp_path / "d", layout="splits", train=2, val=1, classes_file=False)
    with pytest.raises(FileNotFoundError, match="classes.txt"):
        data.load_folder(root)
    ds = data.load_folder(root, class_names="sky, road,car")
    assert ds.info.class_names == ("sky", "road", "car")


def _eval_masks(source):
    return [m.numpy()[0] for _, m in data.make_eval_dataset(source, normalization=None)]


def test_rgb_masks_become_train_ids_in_the_pipeline(tmp_path):
    root = make_folder(tmp_path / "d", layout="splits", rgb=True, train=2, val=2)
    ds = data.load_folder(root)
    assert ds.info.palette == COLOURS
    masks = _eval_masks(ds.splits["val"])
    rng = np.random.default_rng(0)
    for _ in range(2):  # the generator's train images come first
        scene(48, 64, rng)
    for i, mask in enumerate(masks):
        _, expected = scene(48 + (i % 2) * 8, 64, np.random.default_rng(0))
        assert set(np.unique(mask)) == {0, 1, 2, 255}
        assert mask.shape == expected.shape
        np.testing.assert_array_equal(mask, expected)  # the scene layout does not use rng
    # the NumPy path (summary, prescan) agrees with the TF path
    label = np.asarray(Image.open(ds.splits["val"].pairs[0][1]))
    np.testing.assert_array_equal(ds.info.labels_to_train_ids(label, "x"), masks[0])


def test_unknown_colour_is_named_with_its_file(tmp_path):
    root = make_folder(tmp_path / "d", layout="splits", rgb=True, train=2, val=1)
    bad = root / "val" / "labels" / "val00.png"
    label = np.asarray(Image.open(bad)).copy()
    label[10, 10] = (1, 2, 3)
    Image.fromarray(label).save(bad)
    ds = data.load_folder(root)
    with pytest.raises(tf.errors.InvalidArgumentError) as err:
        _eval_masks(ds.splits["val"])
    assert "val00.png" in str(err.value) and "(1, 2, 3)" in str(err.value)
    with pytest.raises(ValueError, match=r"val00\.png has the colour \(1, 2, 3\)"):
        data.summarize(ds)


def test_id_masks_ignore_ids_and_reduce_zero_label(tmp_path):
    root = tmp_path / "d"
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    ids = np.array([[0, 1, 2, 3], [4, 255, 1, 1]], np.uint8)
    for k in range(2):
        Image.fromarray(np.zeros((2, 4, 3), np.uint8)).save(root / "images" / f"{k}.png")
        Image.fromarray(ids).save(root / "labels" / f"{k}.png")
    with pytest.raises(ValueError, match="ignore id 4 is also the id of class 'd'"):
        data.load_folder(root, class_names="a,b,c,d", val_fraction=0.5, reduce_zero_label=True,
                         ignore_ids=(4,))
    ds = data.load_folder(root, class_names="a,b,c", val_fraction=0.5, reduce_zero_label=True,
                          ignore_ids=(4,))
    # 0 -> ignore, v -> v - 1, 4 ignored
    assert ds.info.labels_to_train_ids(ids).tolist() == [[255, 0, 1, 2], [255, 255, 0, 0]]
    np.testing.assert_array_equal(_eval_masks(ds.splits["val"])[0],
                                  [[255, 0, 1, 2], [255, 255, 0, 0]])
    plain = data.load_folder(root, class_names="a,b,c", val_fraction=0.5)
    with pytest.raises(ValueError, match=r"lab.png has values \[3, 4\]"):
        plain.info.labels_to_train_ids(ids, "lab.png")


def test_summary_counts_shares_and_absent_classes(tmp_path):
    root = tmp_path / "d"
    rng = np.random.default_rng(0)
    from tests.folder._make import write_pairs

    write_pairs(root / "train" / "images", root / "train" / "labels", 3, rng)
    write_pairs(root / "val" / "images", root / "val" / "labels", 2, rng, car_every=5,
                prefix="v")  # only v00 has a car
    (root / "val" / "labels" / "v00.png").unlink()
    (root / "val" / "images" / "v00.png").unlink()
    (root / "classes.txt").write_text("sky\nroad\ncar\n")
    summary = data.summarize(data.load_folder(root))
    assert summary.counts == {"train": 3, "val": 1}
    assert summary.absent("val") == ["car"] and summary.absent("train") == []
    _, ids = scene(56, 64, np.random.default_rng(0), with_car=False)
    assert summary.pixel_counts["val"].tolist() == [int((ids == k).sum()) for k in range(3)]
    assert summary.ignored["val"] == 9 and summary.total["val"] == 56 * 64
    text = summary.text()
    assert "train 3, val 1 images" in text
    assert "warning: 1 class(es) absent from val: car" in text
    assert "48..56 x 64..64" in text
    assert len(text.splitlines()) <= 25


def test_suggest_training_sizes():
    big = data.suggest_training_sizes([(720, 960)] * 3 + [(1080, 1920)])
    # median 720x960: scale 128 / 720 = 0.178, floored to 0.15; crop 108x144 -> 104x144
    assert big == {"crop_size": (104, 144), "scale_range": (0.112, 0.188), "eval_scale": 0.15}
    small = data.suggest_training_sizes([(48, 64), (56, 64)])
    assert small == {"crop_size": (48, 64), "scale_range": (0.75, 1.25), "eval_scale": 1.0}
