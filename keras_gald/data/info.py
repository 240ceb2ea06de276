"""Dataset metadata: `DatasetInfo` (classes, palette, raw-id -> train-id lookup table).

Every source of `keras_gald.data` (the on-disk readers, the tfds Cityscapes wrapper and the
synthetic scenes) comes with a `DatasetInfo`. The pipeline turns the raw label values stored
on disk into train ids with `DatasetInfo.lut` (a 256-entry lookup table applied in TF with
`tf.gather`):

- a raw value mapped to `0 .. num_classes-1` is a class,
- a raw value mapped to `ignore_label` (255) is ignored by the loss and the metrics,
- a raw value mapped to `-1` is *invalid*: the pipeline raises an error naming the file
  (see `keras_gald.data.pipeline`), instead of silently training on garbage.

Example:
    >>> info = DatasetInfo.from_mapping("toy", ["a", "b"], {0: 255, 1: 0, 2: 1})
    >>> info.lut[:4].tolist()
    [255, 0, 1, -1]
"""

import dataclasses
from typing import NamedTuple

import numpy as np

IGNORE_LABEL = 255
INVALID = -1


class DataLayoutError(ValueError):
    """A dataset folder or list does not have the expected content (empty, unmatched files)."""


def voc_palette(n):
    """The PASCAL VOC bit-interleaved colour map: `n` distinct RGB colours (uint8, `(n, 3)`)."""
    palette = np.zeros((n, 3), np.uint8)
    for i in range(n):
        c, r, g, b = i, 0, 0, 0
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        palette[i] = (r, g, b)
    return palette


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    """What a dataset's labels mean.

    Attributes:
        name: short dataset name, e.g. `"cityscapes"`.
        num_classes: number of train ids (`0 .. num_classes-1`).
        class_names: tuple of `num_classes` names, in train-id order.
        palette: tuple of `num_classes` `(r, g, b)` tuples for visualisation.
        ignore_label: the train id that means "ignore" (always 255 in this package).
        label_map: `None` (raw values already are train ids: `0..num_classes-1` and 255 pass,
            anything else is invalid) or a tuple of 256 ints, raw value -> train id, with 255
            for ignored values and -1 for values that must not occur.
        description: free text: the on-disk layout and the label convention.
        label_colors: `None` (labels are single-channel id images) or a tuple of
            `(r, g, b, train_id)` tuples: labels are RGB images whose colours are mapped to
            train ids (`train_id` 255 for an "ignore" colour); any other colour is an error
            naming the file and the colour (see `keras_gald.data.folder_dataset`).
    """

    name: str
    num_classes: int
    class_names: tuple
    palette: tuple
    ignore_label: int = IGNORE_LABEL
    label_map: tuple = None
    description: str = ""
    label_colors: tuple = None

    def __post_init__(self):
        if len(self.class_names) != self.num_classes:
            raise ValueError(
                f"DatasetInfo {self.name!r}: {len(self.class_names)} class names for "
                f"num_classes={self.num_classes}"
            )
        if len(self.palette) != self.num_classes:
            raise ValueError(
                f"DatasetInfo {self.name!r}: {len(self.palette)} palette colours for "
                f"num_classes={self.num_classes}"
            )
        if not 0 < self.num_classes <= 255 or self.ignore_label < self.num_classes:
            raise ValueError(
                f"DatasetInfo {self.name!r}: need 0 < num_classes <= ignore_label, got "
                f"num_classes={self.num_classes}, ignore_label={self.ignore_label}"
            )
        if self.label_map is not None:
            if len(self.label_map) != 256:
                raise ValueError(f"DatasetInfo {self.name!r}: label_map needs 256 entries")
            bad = [
                v for v in self.label_map
                if v not in (INVALID, self.ignore_label) and not 0 <= v < self.num_classes
            ]
            if bad:
                raise ValueError(
                    f"DatasetInfo {self.name!r}: label_map targets {sorted(set(bad))} are "
                    f"outside [0, {self.num_classes}) and not ignore/-1"
                )

        if self.label_colors is not None:
            seen = {}
            for entry in self.label_colors:
                if len(entry) != 4 or not all(0 <= int(c) <= 255 for c in entry[:3]):
                    raise ValueError(
                        f"DatasetInfo {self.name!r}: label_colors entries must be "
                        f"(r, g, b, train_id) with 0 <= r, g, b <= 255, got {entry!r}")
                rgb, train_id = tuple(int(c) for c in entry[:3]), int(entry[3])
                if train_id != self.ignore_label and not 0 <= train_id < self.num_classes:
                    raise ValueError(
                        f"DatasetInfo {self.name!r}: label colour {rgb} maps to {train_id}, "
                        f"outside [0, {self.num_classes}) and not ignore")
                if rgb in seen and seen[rgb] != train_id:
                    raise ValueError(
                        f"DatasetInfo {self.name!r}: colour {rgb} is given to two classes")
                seen[rgb] = train_id

    @classmethod
    def from_mapping(cls, name, class_names, mapping, palette=None, default=INVALID, **kwargs):
        """Builds an info whose `label_map` is `mapping` (dict raw -> train id).

        Raw values absent from `mapping` map to `default` (-1: invalid, or 255: ignore).
        """
        table = [default] * 256
        for raw, train_id in mapping.items():
            table[int(raw)] = int(train_id)
        class_names = tuple(class_names)
        if palette is None:
            palette = voc_palette(len(class_names))
        palette = tuple(tuple(int(c) for c in rgb) for rgb in palette)
        return cls(
            name=name,
            num_classes=len(class_names),
            class_names=class_names,
            palette=palette,
            label_map=tuple(table),
            **kwargs,
        )

    @property
    def lut(self):
        """`np.int32[256]`: raw label value -> train id (255 ignore, -1 invalid)."""
        if self.label_map is not None:
            return np.asarray(self.label_map, np.int32)
        table = np.full(256, INVALID, np.int32)
        table[: self.num_classes] = np.arange(self.num_classes)
        table[self.ignore_label] = self.ignore_label
        return table

    @property
    def ignored_raw_ids(self):
        """Raw values that become the ignore label (e.g. `(11,)` for CamVid's void)."""
        return tuple(int(i) for i in np.flatnonzero(self.lut == self.ignore_label))

    @property
    def palette_array(self):
        """`np.uint8 (num_classes, 3)` RGB palette."""
        return np.asarray(self.palette, np.uint8).reshape(self.num_classes, 3)

    def map_labels(self, raw):
        """Applies the lookup table in TF: uint8/int raw labels -> int32 train ids (-1 invalid)."""
        import tensorflow as tf

        raw = tf.cast(raw, tf.int32)
        return tf.gather(tf.constant(self.lut), tf.clip_by_value(raw, 0, 255))

    def labels_to_train_ids(self, label, path="<array>"):
        """A decoded label image -> `np.uint8 (H, W)` train ids (NumPy; the pipeline does the
        same in TF).

        `label` is `(H, W)` raw ids (through `lut`) or, when `label_colors` is set,
        `(H, W, 3)` RGB (through the colour table). Raises `ValueError` naming `path` and the
        first unknown colour or the invalid raw values.
        """
        label = np.asarray(label)
        if self.label_colors is not None:
            if label.ndim != 3 or label.shape[-1] < 3:
                raise ValueError(
                    f"label {path} is not an RGB image (shape {label.shape}): {self.name!r} "
                    "has colour-coded labels")
            rgb = label[..., :3].astype(np.int64)
            code = (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]
            table = {(int(r) << 16) | (int(g) << 8) | int(b): int(t)
                     for r, g, b, t in self.label_colors}
            uniq, inverse = np.unique(code, return_inverse=True)
            mapped = np.array([table.get(int(c), INVALID) for c in uniq], np.int32)
            ids = mapped[inverse.reshape(code.shape)]
            if (mapped == INVALID).any():
                c = int(uniq[mapped == INVALID][0])
                raise ValueError(
                    f"label {path} has the colour ({c >> 16}, {(c >> 8) & 255}, {c & 255}) "
                    f"(r, g, b), which is none of the class colours of {self.name!r}")
            return ids.astype(np.uint8)
        if label.ndim == 3:
            if label.shape[-1] != 1:
                raise ValueError(
                    f"label {path} has {label.shape[-1]} channels: labels must be single-channel "
                    "id images, or give class colours (classes.txt lines 'name r g b')")
            label = label[..., 0]
        ids = self.lut[np.clip(label.astype(np.int64), 0, 255)]
        bad = (ids == INVALID) | (label < 0) | (label > 255)
        if bad.any():
            raise ValueError(
                f"label {path} has values {sorted(int(v) for v in np.unique(label[bad]))[:10]} "
                f"outside the {self.num_classes} classes of {self.name!r} that are not ignored")
        return ids.astype(np.uint8)

    def colorize(self, mask, ignore_color=(0, 0, 0)):
        """Train-id mask `(..., H, W)` -> RGB uint8 `(..., H, W, 3)` (ignored pixels black)."""
        mask = np.asarray(mask)
        table = np.zeros((256, 3), np.uint8)
        table[:] = ignore_color
        table[: self.num_classes] = self.palette_array
        return table[np.clip(mask, 0, 255).astype(np.int64)]


class DataSource(NamedTuple):
    """What a reader returns: `pairs` (list of `(image_path, label_path)` str tuples, sorted)
    and `info` (`DatasetInfo`). Unpacks as `pairs, info = reader(...)`."""

    pairs: list
    info: DatasetInfo
