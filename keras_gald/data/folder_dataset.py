"""Your own dataset: a folder of images and masks -> classes, splits, a summary, crop sizes.

Layouts (`root` is the folder you pass; images `.jpg/.jpeg/.png/.bmp`, masks `.png`, an image
and its mask matched by relative path without extension, sub-folders allowed):

    root/train/{images,labels}/...   root/val/{images,labels}/...   [root/test/...]
    root/{images,labels}/...         one pool, split with `val_fraction` (see below)

Classes come from `root/classes.txt` or from `class_names=`. Each line of `classes.txt` is a
class name (train ids follow the line order), optionally followed by its RGB colour:

    sky 128 128 128
    road 128 64 128
    ignore 0 0 0          # a line named `ignore` gives a colour that is ignored, not a class

With colours on every class line the masks are **RGB colour-coded** and converted through
the colours (an unknown colour is an error naming the file and the colour); without colours
the masks are single-channel id images (8-bit grayscale PNG: pixel = class id, 255 ignored,
`ignore_ids` more ignored values, `reduce_zero_label`: 0 ignored and `v` -> `v - 1`).

Split of a single pool: the sorted relative names are shuffled with
`numpy.random.default_rng(seed)`; the first `ceil(val_fraction * n)` (at least 1, at most
`n - 1`) are the validation split. `write_split_file` stores the result (JSON, names only)
so that a later evaluation uses exactly the same split (`split_file=`).

Example:
    >>> ds = load_folder("my_data", val_fraction=0.2, seed=0)
    >>> train, val = ds.splits["train"], ds.splits["val"]     # DataSource(pairs, info)
    >>> print(summarize(ds).text())
    >>> suggest_training_sizes(summarize(ds).image_sizes)
    {'crop_size': (128, 160), 'scale_range': (0.262, 0.438), 'eval_scale': 0.35}
"""

import collections
import dataclasses
import json
import math
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
from keras_gald.data.readers import folder_pairs

CLASSES_FILE = "classes.txt"
SPLITS = ("train", "val", "test")
IGNORE_NAME = "ignore"


# ----------------------------------------------------------------------------- classes


def parse_classes_file(path):
    """`classes.txt` -> `(names, colours, ignore_colours)`.

    `colours` is a list of `(r, g, b)` per class, or `None` when no line has a colour;
    `ignore_colours` the colours of `ignore r g b` lines. Mixing lines with and without
    colours, a bad colour or a repeated name raises `ValueError` naming file and line.
    """
    path = pathlib.Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"classes file not found: {path}")
    names, colours, ignore = [], [], []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        text = line.split("#", 1)[0].strip()
        if not text:
            continue
        parts = text.split()
        colour = None
        if len(parts) >= 4 and all(p.lstrip("-").isdigit() for p in parts[-3:]):
            colour = tuple(int(p) for p in parts[-3:])
            if not all(0 <= c <= 255 for c in colour):
                raise ValueError(f"{path}:{number}: colour values must be 0..255, got {line!r}")
            parts = parts[:-3]
        name = " ".join(parts)
        if name.lower() == IGNORE_NAME:
            if colour is None:
                raise ValueError(f"{path}:{number}: an 'ignore' line needs a colour 'ignore r g b'")
            ignore.append(colour)
            continue
        if name in names:
            raise ValueError(f"{path}:{number}: class {name!r} is listed twice")
        names.append(name)
        colours.append(colour)
    if not names:
        raise DataLayoutError(f"classes file lists no classes: {path}")
    with_colour = [c is not None for c in colours]
    if any(with_colour) and not all(with_colour):
        missing = [n for n, c in zip(names, colours) if c is None]
        raise ValueError(
            f"{path}: either every class line has a colour 'name r g b' or none has; "
            f"without a colour: {', '.join(missing[:10])}")
    if ignore and not all(with_colour):
        raise ValueError(f"{path}: 'ignore r g b' lines need class colours on every class line")
    return names, (colours if all(with_colour) else None), ignore


def parse_class_list(text):
    """`"sky,road,car"` -> `["sky", "road", "car"]` (a list or tuple passes through)."""
    if isinstance(text, (list, tuple)):
        names = [str(n).strip() for n in text]
    else:
        names = [n.strip() for n in str(text).split(",")]
    names = [n for n in names if n]
    if not names:
        raise ValueError(f"no class names in {text!r}")
    if len(set(names)) != len(names):
        raise ValueError(f"class names repeat in {text!r}")
    return names


def folder_info(class_names, colours=None, ignore_colours=(), ignore_ids=(IGNORE_LABEL,),
                reduce_zero_label=False, name="folder", description=""):
    """The `DatasetInfo` of a folder dataset.

    Args:
        class_names: names in train-id order.
        colours: `None` (id masks) or one `(r, g, b)` per class (RGB masks; also the palette).
        ignore_colours: RGB colours that mean "ignore" (colour masks only).
        ignore_ids: raw ids that mean "ignore" (id masks; 255 always does).
        reduce_zero_label: id masks: raw 0 ignored, raw `v` -> class `v - 1`.
    """
    class_names = list(class_names)
    n = len(class_names)
    if colours is not None:
        if len(colours) != n:
            raise ValueError(f"{len(colours)} colours for {n} classes")
        entries = [tuple(int(c) for c in rgb) + (i,) for i, rgb in enumerate(colours)]
        entries += [tuple(int(c) for c in rgb) + (IGNORE_LABEL,) for rgb in ignore_colours]
        mapping = {i: i for i in range(n)}
        mapping[IGNORE_LABEL] = IGNORE_LABEL
        return DatasetInfo.from_mapping(name, class_names, mapping, palette=colours,
                                        default=INVALID, label_colors=tuple(entries),
                                        description=description)
    offset = 1 if reduce_zero_label else 0
    if n + offset > 255:
        raise ValueError(f"{n} classes do not fit 8-bit id masks (at most {255 - offset})")
    mapping = {v: v - offset for v in range(offset, n + offset)}
    if reduce_zero_label:
        mapping[0] = IGNORE_LABEL
    for raw in tuple(ignore_ids) + (IGNORE_LABEL,):
        if 0 <= int(raw) < n + offset and int(raw) in mapping and mapping[int(raw)] != IGNORE_LABEL:
            raise ValueError(f"ignore id {raw} is also the id of class "
                             f"{class_names[mapping[int(raw)]]!r}")
        mapping[int(raw)] = IGNORE_LABEL
    return DatasetInfo.from_mapping(name, class_names, mapping, palette=voc_palette(n),
                                    default=INVALID, description=description)


# ----------------------------------------------------------------------------- splits


def split_names(names, val_fraction, seed=0):
    """Deterministic split of `names`: -> `(train_names, val_names)`, both sorted.

    The sorted names are permuted by `numpy.random.default_rng(seed)`; the first
    `ceil(val_fraction * n)` (clamped to `1 .. n - 1`) go to validation.
    """
    names = sorted(names)
    if not 0.0 < float(val_fraction) < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    if len(names) < 2:
        raise DataLayoutError(f"cannot split {len(names)} image(s) into train and val")
    n_val = min(max(1, math.ceil(float(val_fraction) * len(names))), len(names) - 1)
    order = np.random.default_rng(int(seed)).permutation(len(names))
    val = sorted(names[i] for i in order[:n_val])
    val_set = set(val)
    return [n for n in names if n not in val_set], val


def write_split_file(path, record):
    """Writes a split record (`FolderDataset.split_record`) as JSON; returns the path."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(record, indent=1))
    os.replace(tmp, path)
    return path


def read_split_file(path):
    """Reads a split record written by `write_split_file` (`ValueError` naming the file)."""
    path = pathlib.Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"split file not found: {path}")
    try:
        record = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"split file {path} is not valid JSON: {err}") from None
    if not isinstance(record, dict) or not all(isinstance(record.get(k), list) for k in ("train", "val")):
        raise ValueError(f"split file {path} needs 'train' and 'val' name lists")
    return record


@dataclasses.dataclass
class FolderDataset:
    """A loaded folder dataset.

    Attributes:
        root: the dataset folder.
        info: its `DatasetInfo`.
        splits: `{"train": DataSource, "val": DataSource[, "test": DataSource]}`.
        layout: `"splits"` (`root/train`, `root/val`, ...) or `"single"` (`root/images`).
        split_record: for `"single"`: `{"val_fraction", "seed", "train", "val"}` (relative
            names without extension), to write with `write_split_file`; else `None`.
    """

    root: str
    info: DatasetInfo
    splits: dict
    layout: str
    split_record: dict = None


def _key(path, base):
    rel = pathlib.Path(path).relative_to(base).as_posix()
    return rel.rsplit(".", 1)[0]


def load_folder(root, class_names=None, val_fraction=None, seed=0, split_file=None,
                ignore_ids=(IGNORE_LABEL,), reduce_zero_label=False, name="folder",
                whole_pool=False):
    """Lists a folder dataset (no image is decoded): -> `FolderDataset`.

    Args:
        root: the dataset folder (module docstring for the layouts).
        class_names: names (list or `"a,b,c"`); default `root/classes.txt` (which may also
            give colours for RGB masks).
        val_fraction: single-pool layout: the validation share (required there unless
            `split_file` is given; an error with the split-folder layout).
        seed: seed of the split.
        split_file: a JSON written by `write_split_file`: use that split (names not found in
            the folder are an error naming them).
        ignore_ids, reduce_zero_label: see `folder_info`.
        whole_pool: single-pool layout without a split: one split `"all"` of every pair.

    Raises:
        FileNotFoundError: missing folder / classes file. `DataLayoutError` (`ValueError`):
        unmatched images / labels (named), neither layout found, a bad split.
    """
    root = pathlib.Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"dataset folder not found: {root}")
    colours, ignore_colours = None, []
    if class_names is None:
        classes_path = root / CLASSES_FILE
        if not classes_path.is_file():
            raise FileNotFoundError(
                f"no class names: {classes_path} does not exist; write one name a line "
                "(optionally 'name r g b' for RGB masks) or pass classes (--classes a,b,c)")
        class_names, colours, ignore_colours = parse_classes_file(classes_path)
        description = f"folder {root} (classes from {classes_path})"
    else:
        class_names = parse_class_list(class_names)
        description = f"folder {root}"
    info = folder_info(class_names, colours, ignore_colours, ignore_ids, reduce_zero_label,
                       name=name, description=description)
    present = [s for s in SPLITS if (root / s / "images").is_dir()]
    if present:
        if "train" not in present:
            raise DataLayoutError(f"{root} has {', '.join(present)}/images but no train/images")
        if val_fraction:
            raise ValueError(
                f"val_fraction={val_fraction} given but {root} already has split folders "
                f"({', '.join(present)}); leave val_fraction unset")
        splits = {s: DataSource(folder_pairs(root / s / "images", root / s / "labels"), info)
                  for s in present}
        return FolderDataset(str(root), info, splits, "splits")
    if not (root / "images").is_dir():
        raise DataLayoutError(
            f"{root} has neither train/images (+ val/images) nor images/ + labels/ folders")
    pairs = folder_pairs(root / "images", root / "labels")
    by_key = {_key(image, root / "images"): (image, label) for image, label in pairs}
    if split_file is not None:
        record = read_split_file(split_file)
        unknown = sorted(set(record["train"] + record["val"]) - set(by_key))
        if unknown:
            raise DataLayoutError(
                f"split file {split_file} names {len(unknown)} image(s) not in {root / 'images'}: "
                + ", ".join(unknown[:5]))
        train, val = sorted(record["train"]), sorted(record["val"])
    elif whole_pool:
        return FolderDataset(str(root), info, {"all": DataSource(pairs, info)}, "single")
    elif val_fraction:
        train, val = split_names(by_key, val_fraction, seed)
        record = {"val_fraction": float(val_fraction), "seed": int(seed),
                  "root": str(root), "train": train, "val": val}
    else:
        raise ValueError(
            f"{root} holds one images/ pool: give a validation share (--val-fraction F, "
            "e.g. 0.2) or use train/ and val/ sub-folders")
    splits = {"train": DataSource([by_key[k] for k in train], info),
              "val": DataSource([by_key[k] for k in val], info)}
    return FolderDataset(str(root), info, splits, "single", record)


# ----------------------------------------------------------------------------- summary


@dataclasses.dataclass
class FolderSummary:
    """What `summarize` found.

    Attributes:
        info: the dataset's `DatasetInfo`.
        counts: `{split: number of pairs}`.
        scanned: `{split: number of labels read}` (at most `max_images` per split).
        image_sizes: list of `(h, w)` of every scanned image (all splits).
        pixel_counts: `{split: np.int64 (num_classes,)}` labelled pixels per class.
        ignored: `{split: ignored pixel count}`; `total`: `{split: all pixels}`.
    """

    info: DatasetInfo
    counts: dict
    scanned: dict
    image_sizes: list
    pixel_counts: dict
    ignored: dict
    total: dict

    def absent(self, split):
        """Class names with no pixel in the scanned labels of `split`."""
        return [n for n, c in zip(self.info.class_names, self.pixel_counts[split]) if c == 0]

    def warnings(self):
        """One line per split that lacks classes."""
        out = []
        for split in self.pixel_counts:
            missing = self.absent(split)
            if missing:
                shown = ", ".join(missing[:8]) + (f" (+{len(missing) - 8} more)" if len(missing) > 8 else "")
                part = "" if self.scanned[split] == self.counts[split] else \
                    f" (first {self.scanned[split]} images scanned)"
                out.append(f"warning: {len(missing)} class(es) absent from {split}{part}: {shown}")
        return out

    def to_dict(self):
        return {
            "counts": self.counts, "scanned": self.scanned,
            "image_sizes": sorted({f"{h}x{w}" for h, w in self.image_sizes}),
            "pixel_counts": {s: dict(zip(self.info.class_names, map(int, c)))
                             for s, c in self.pixel_counts.items()},
            "ignored": {s: int(v) for s, v in self.ignored.items()},
            "total": {s: int(v) for s, v in self.total.items()},
        }

    def text(self, max_class_lines=20):
        """A one-screen table: counts, sizes, class pixel shares per split, ignore share."""
        splits = list(self.counts)
        sizes = collections.Counter(self.image_sizes)
        hs = [h for h, _ in self.image_sizes]
        ws = [w for _, w in self.image_sizes]
        common = ", ".join(f"{h}x{w} ({c})" for (h, w), c in sizes.most_common(3))
        lines = [
            f"dataset {self.info.name}: {self.info.num_classes} classes, "
            + ", ".join(f"{s} {self.counts[s]}" for s in splits) + " images"
            + ("" if self.scanned == self.counts else
               " (scanned " + ", ".join(f"{s} {self.scanned[s]}" for s in splits) + ")"),
            f"image sizes (HxW): {min(hs)}..{max(hs)} x {min(ws)}..{max(ws)}; most common {common}",
            f"{'class':<20}" + "".join(f"{s + ' %':>10}" for s in splits),
        ]
        share = {s: self.pixel_counts[s] / max(int(self.total[s]), 1) * 100 for s in splits}
        names = list(self.info.class_names)
        order = range(len(names))
        if len(names) > max_class_lines:
            order = sorted(order, key=lambda i: -int(self.pixel_counts[splits[0]][i]))[:max_class_lines]
        for i in order:
            lines.append(f"{names[i][:19]:<20}" + "".join(f"{share[s][i]:>10.2f}" for s in splits))
        if len(names) > max_class_lines:
            lines.append(f"... {len(names) - max_class_lines} more classes (the rarest)")
        lines.append(f"{'(ignored)':<20}" + "".join(
            f"{self.ignored[s] / max(int(self.total[s]), 1) * 100:>10.2f}" for s in splits))
        lines.extend(self.warnings())
        return "\n".join(lines)


def _read_label(path):
    from PIL import Image

    with Image.open(path) as img:
        if img.mode in ("RGB", "RGBA", "P"):
            return np.asarray(img.convert("RGB"))
        return np.asarray(img)


def _image_size(path):
    from PIL import Image

    with Image.open(path) as img:
        return img.size[1], img.size[0]


def summarize(dataset, max_images=500):
    """Reads the labels (at most `max_images` per split) with PIL -> `FolderSummary`.

    Also checks every scanned pair: image size == label size and every label value / colour
    known (`ValueError` naming the file, and the colour for RGB masks).
    """
    info = dataset.info
    counts, scanned, pixel_counts, ignored, total, sizes = {}, {}, {}, {}, {}, []
    for split, source in dataset.splits.items():
        pairs = source.pairs
        counts[split] = len(pairs)
        chosen = pairs[:max_images] if max_images else pairs
        scanned[split] = len(chosen)
        hist = np.zeros(256, np.int64)
        for image_path, label_path in chosen:
            ids = info.labels_to_train_ids(_read_label(label_path), label_path)
            hw = _image_size(image_path)
            if hw != ids.shape[:2]:
                raise ValueError(
                    f"image size {hw[0]}x{hw[1]} (HxW) of {image_path} differs from label size "
                    f"{ids.shape[0]}x{ids.shape[1]} of {label_path}")
            sizes.append(hw)
            hist += np.bincount(ids.ravel(), minlength=256)
        pixel_counts[split] = hist[: info.num_classes].copy()
        ignored[split] = int(hist[info.num_classes:].sum())
        total[split] = int(hist.sum())
    return FolderSummary(info, counts, scanned, sizes, pixel_counts, ignored, total)


def suggest_training_sizes(image_sizes, target_short_side=128, max_crop=(128, 160)):
    """Crop, scale augmentation and evaluation scale for an unknown dataset, small enough
    to train in minutes on a CPU.

    The median image is scaled by `s = min(1, target_short_side / median short side)`
    (rounded to 0.05, at least 0.05); training draws scales in `[0.75 s, 1.25 s]` and
    crops `(h, w)` = the scaled median size rounded down to a multiple of 8, capped at
    `max_crop`, at least 32; evaluation resizes images by `s`.

    Args:
        image_sizes: iterable of `(h, w)`.

    Returns:
        `{"crop_size": (h, w), "scale_range": (lo, hi), "eval_scale": s}`.
    """
    sizes = np.asarray(list(image_sizes), np.float64).reshape(-1, 2)
    if not len(sizes):
        raise ValueError("suggest_training_sizes needs at least one image size")
    h, w = np.median(sizes[:, 0]), np.median(sizes[:, 1])
    scale = min(1.0, target_short_side / min(h, w))
    scale = max(0.05, math.floor(scale * 20) / 20)
    crop = tuple(int(max(32, min(cap, (v * scale) // 8 * 8))) for v, cap in zip((h, w), max_crop))
    return {"crop_size": crop,
            "scale_range": (round(0.75 * scale, 3), round(1.25 * scale, 3)),
            "eval_scale": round(scale, 3)}
