"""Segmentation metrics: streaming mean IoU and the boundary F-score.

Conventions
-----------
* Confusion matrices are `(num_classes, num_classes)` int64 counts with rows =
  ground truth and columns = prediction. Pixels whose label is `ignore_index`
  (or outside `[0, num_classes)`) are not counted, whatever is predicted.
* Per-class IoU is `TP / (TP + FP + FN)`. A class that appears neither in the
  ground truth nor in the prediction has an undefined IoU: it is NaN in
  `per_class_iou` and is *excluded* from the mean IoU (the Keras / mmseg
  convention). A class present in the ground truth but never predicted (or
  predicted but absent from the ground truth) has IoU 0 and is included. With
  no counted pixel at all the mean IoU is 0. (The GALD authors' evaluation
  script averages all classes with absent ones as 0; on the Cityscapes val set
  every class occurs, so both conventions give the same number.)
* Mean accuracy averages `TP / (TP + FN)` over the classes present in the
  ground truth; pixel accuracy is `trace / total`.

Boundary F-score (G-SCNN protocol, the paper's Table V)
-------------------------------------------------------
For each image and class `c`, the binary masks `pred == c` and `gt == c` (both
set to 0 where `gt == ignore_index`) are turned into one-pixel-wide boundary
maps (BSDS `seg2bmap`: a pixel is a boundary pixel when it differs from its
right, lower or lower-right neighbour). With the tolerance
`d = ceil(threshold * image diagonal)` pixels (a threshold >= 1 is taken as a
pixel count), a predicted boundary pixel is matched when a ground-truth
boundary pixel lies within Euclidean distance `d` (a disk of radius `d`, as
`skimage.morphology.disk`), and vice versa. Precision = matched predicted /
predicted boundary pixels, recall = matched gt / gt boundary pixels,
`F = 2PR / (P + R)` (0 when `P + R = 0`). Per-image special cases, as G-SCNN:
no predicted and no gt boundary -> P = R = F = 1; no predicted boundary only
-> P = 1, R = 0, F = 0; no gt boundary only -> P = 0, R = 1, F = 0.

Two dataset-level aggregations are provided:

* `"gscnn"` (what G-SCNN and the paper report): the per-class F is the mean
  of the per-image F over all images, the mean F the mean over all classes.
* `"pooled"` (`BoundaryFScoreAccumulator`'s default): the matched and total
  boundary-pixel counts are summed over images and P, R, F computed once from
  the sums. A class with no boundary pixel in any prediction or ground truth
  is NaN and excluded from the mean F; the single-sided cases follow the
  per-image table above (F = 0).

The distance test is pure NumPy (scipy is not a dependency): for each pixel a
horizontal distance to the nearest boundary pixel of its row is computed with
cumulative max/min scans, then the exact squared Euclidean distance is
`min_dy dy^2 + h(y + dy)^2` over `|dy| <= d`, evaluated only at the boundary
pixels that need it.
"""

import math

import keras
import numpy as np
from keras import ops

from keras_gald.ops.classes import argmax_classes
from keras_gald.ops.resize import resize_bilinear

DEFAULT_BOUNDARY_THRESHOLDS = (0.00088, 0.001875, 0.00375, 0.005)


# ---------------------------------------------------------------------------
# NumPy confusion-matrix helpers
# ---------------------------------------------------------------------------
def confusion_matrix_np(gt, pred, num_classes, ignore_index=255):
    """Confusion matrix of integer label maps, in NumPy.

    Args:
        gt: ground-truth labels, any shape.
        pred: predicted class ids, same shape as `gt`.
        num_classes: number of classes `C`.
        ignore_index: label not counted; labels outside `[0, C)` are not
            counted either. Predictions outside `[0, C)` at counted pixels
            raise `ValueError`.

    Returns:
        `(C, C)` int64 array, rows ground truth, columns prediction.

    Example:
    >>> confusion_matrix_np(np.array([0, 1, 255]), np.array([0, 0, 1]), 2)
    array([[1, 0],
           [1, 0]])
    """
    gt = np.asarray(gt).astype(np.int64).ravel()
    pred = np.asarray(pred).astype(np.int64).ravel()
    if gt.shape != pred.shape:
        raise ValueError(f"gt and pred differ in size: {gt.shape} vs {pred.shape}")
    valid = (gt != ignore_index) & (gt >= 0) & (gt < num_classes)
    gt, pred = gt[valid], pred[valid]
    if pred.size and (pred.min() < 0 or pred.max() >= num_classes):
        raise ValueError(f"predictions outside [0, {num_classes})")
    counts = np.bincount(gt * num_classes + pred, minlength=num_classes * num_classes)
    return counts.reshape(num_classes, num_classes).astype(np.int64)


def iou_from_confusion(confusion):
    """Per-class IoU and mean IoU from a confusion matrix (rows = gt).

    Returns:
        `(per_class_iou, mean_iou)`: float64 `(C,)` array with NaN for classes
        absent from both gt and prediction, and the mean over the other
        classes (0.0 when every class is absent).
    """
    cm = np.asarray(confusion, np.float64)
    tp = np.diag(cm)
    union = cm.sum(axis=0) + cm.sum(axis=1) - tp
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = np.where(union > 0, tp / np.where(union > 0, union, 1.0), np.nan)
    present = ~np.isnan(iou)
    mean_iou = float(iou[present].mean()) if present.any() else 0.0
    return iou, mean_iou


def format_iou_table(
    per_class_iou,
    class_names=None,
    extra_columns=None,
    percent=True,
    digits=2,
    title=None,
):
    """A plain-text table of per-class scores with a mean row.

    Args:
        per_class_iou: `(C,)` IoUs in [0, 1]; NaN prints as `n/a` and is left
            out of the mean.
        class_names: `C` names (default `class_0`, ...).
        extra_columns: optional `{header: (C,) values}` printed after IoU
            (e.g. per-class accuracy), each with its own NaN-excluding mean.
        percent: print values x100.
        digits: decimals.
        title: optional first line.

    Returns:
        The table as one string (no trailing newline).

    Example:
    >>> print(format_iou_table([0.5, np.nan], ["road", "sky"]))
    class | IoU
    ------+------
    road  | 50.00
    sky   |   n/a
    ------+------
    mean  | 50.00
    """
    iou = np.asarray(per_class_iou, np.float64).ravel()
    num = iou.shape[0]
    names = [f"class_{i}" for i in range(num)] if class_names is None else list(class_names)
    if len(names) != num:
        raise ValueError(f"{len(names)} class names for {num} values")
    columns = {"IoU": iou}
    for header, values in (extra_columns or {}).items():
        values = np.asarray(values, np.float64).ravel()
        if values.shape[0] != num:
            raise ValueError(f"column {header!r} has {values.shape[0]} values, expected {num}")
        columns[header] = values
    scale = 100.0 if percent else 1.0

    def fmt(v):
        return "n/a" if np.isnan(v) else f"{v * scale:.{digits}f}"

    def nanmean(values):
        ok = ~np.isnan(values)
        return float(values[ok].mean()) if ok.any() else float("nan")

    rows = [[name] + [fmt(col[i]) for col in columns.values()] for i, name in enumerate(names)]
    mean_row = ["mean"] + [fmt(nanmean(col)) for col in columns.values()]
    header = ["class"] + list(columns)
    widths = [max(len(r[j]) for r in rows + [mean_row, header]) for j in range(len(header))]

    def line(cells):
        first = cells[0].ljust(widths[0])
        rest = [c.rjust(w) for c, w in zip(cells[1:], widths[1:])]
        return " | ".join([first] + rest)

    rule = "-+-".join("-" * w for w in widths)
    out = ([title] if title else []) + [line(header), rule]
    out += [line(r) for r in rows] + [rule, line(mean_row)]
    return "\n".join(out)


# ---------------------------------------------------------------------------
# Streaming mean IoU
# ---------------------------------------------------------------------------
def _wide_dtypes():
    """(count dtype, statistics dtype): int64/float64, or int32/float32 on JAX
    without `jax_enable_x64` (JAX has no 64-bit arrays then; asking for them
    would only warn and truncate)."""
    if keras.backend.backend() == "jax":
        import jax  # JAX backend only.

        if not jax.config.jax_enable_x64:
            return "int32", "float32"
    return "int64", "float64"


def _to_int32_map(x):
    """(N,H,W) or (N,H,W,1) ids (any dtype; floats rounded) -> int32 (N,H,W)."""
    if len(x.shape) == 4:
        x = ops.squeeze(x, axis=-1)
    if "float" in keras.backend.standardize_dtype(x.dtype):
        x = ops.round(x)
    return ops.cast(x, "int32")


@keras.saving.register_keras_serializable(package="keras_gald")
class MeanIoU(keras.metrics.Metric):
    """Streaming mean intersection-over-union for semantic segmentation.

    Accumulates an exact int64 confusion matrix (rows gt, columns prediction)
    with a segment sum over the `C*C` (gt, prediction) cells, in `keras.ops`,
    so the update traces under `tf.function(jit_compile=True)` and `jax.jit`
    (Keras' `fit`/`evaluate` on every backend). On JAX without
    `jax_enable_x64` the matrix is int32 (exact up to 2**31 - 1 pixels per
    cell; a Cityscapes val pass is about 1.05e9 pixels in all) and the scores
    are float32. The variable uses Keras' metric defaults (ON_READ
    synchronization, SUM aggregation), so under a `tf.distribute` strategy each
    replica counts its own pixels and reading the result in a cross-replica
    context sums the replicas' matrices.

    Args:
        num_classes: number of classes `C`.
        ignore_index: label never counted (labels outside `[0, C)` neither).
        from_logits: `True`: `y_pred` are per-class scores `(N, h, w, C)`
            (logits or probabilities), upsampled bilinearly to the label size
            when `(h, w)` differs, then argmax-ed. `False`: `y_pred` are class
            ids `(N, H, W)` or `(N, H, W, 1)` at label size.
        class_names: optional `C` names used by `summary()`.
        align_corners: resize convention for upsampling the scores.
        name, dtype: Keras metric name and result dtype.

    `update_state(y_true, y_pred, sample_weight=None)`: `y_true (N, H, W)` or
    `(N, H, W, 1)` labels; `sample_weight` broadcastable to `(N, H, W)` acts
    as a mask (pixels with weight 0 are not counted, others count once).

    `result()` is the mean IoU (classes absent from both gt and prediction
    excluded; 0 with no counted pixel). Also `per_class_iou()` (NaN for absent
    classes), `pixel_accuracy()`, `mean_accuracy()`, `confusion_matrix()`.

    Example:
    >>> m = MeanIoU(num_classes=19)
    >>> m.update_state(labels, logits)     # (N,H,W), (N,H/8,W/8,19)
    >>> float(m.result())
    """

    def __init__(
        self,
        num_classes,
        ignore_index=255,
        from_logits=True,
        class_names=None,
        align_corners=False,
        name="mean_iou",
        dtype=None,
    ):
        super().__init__(name=name, dtype=dtype)
        self.num_classes = int(num_classes)
        self.ignore_index = int(ignore_index)
        self.from_logits = bool(from_logits)
        self.class_names = None if class_names is None else [str(c) for c in class_names]
        if self.class_names is not None and len(self.class_names) != self.num_classes:
            raise ValueError(
                f"{len(self.class_names)} class names for {self.num_classes} classes"
            )
        self.align_corners = bool(align_corners)
        self.total_confusion = self.add_variable(
            shape=(self.num_classes, self.num_classes),
            initializer="zeros",
            dtype=_wide_dtypes()[0],
            aggregation="sum",
            name="total_confusion_matrix",
        )

    def _predicted_ids(self, y_pred, label_hw):
        y_pred = ops.convert_to_tensor(y_pred)
        if not self.from_logits:
            return _to_int32_map(y_pred)
        if y_pred.shape[-1] is not None and y_pred.shape[-1] != self.num_classes:
            raise ValueError(
                f"y_pred has {y_pred.shape[-1]} channels, expected {self.num_classes}"
            )
        if keras.backend.standardize_dtype(y_pred.dtype) not in ("float32", "float64"):
            y_pred = ops.cast(y_pred, "float32")
        static = all(isinstance(d, int) for d in label_hw)
        if not (static and tuple(y_pred.shape[1:3]) == tuple(label_hw)):
            y_pred = resize_bilinear(y_pred, label_hw, align_corners=self.align_corners)
        return argmax_classes(y_pred)

    def update_state(self, y_true, y_pred, sample_weight=None):
        labels = _to_int32_map(ops.convert_to_tensor(y_true))
        shape = ops.shape(labels)
        pred = self._predicted_ids(y_pred, (shape[1], shape[2]))
        c = self.num_classes
        valid = (labels != self.ignore_index) & (labels >= 0) & (labels < c)
        valid = valid & (pred >= 0) & (pred < c)
        if sample_weight is not None:
            sw = ops.convert_to_tensor(sample_weight)
            if len(sw.shape) == 4:
                sw = ops.squeeze(sw, axis=-1)
            while 0 < len(sw.shape) < 3:
                sw = sw[..., None]
            valid = valid & ops.broadcast_to(sw != 0, shape)
        # Cell (gt, pred) is bin gt * C + pred; invalid pixels go to an extra
        # bin C*C that is dropped. A segment sum with a static bin count runs
        # under XLA / jit on every backend.
        ids = ops.reshape(ops.where(valid, labels * c + pred, c * c), (-1,))
        counts = ops.segment_sum(ops.ones_like(ids), ids, num_segments=c * c + 1)
        count_dtype, _ = _wide_dtypes()
        update = ops.reshape(ops.cast(counts[: c * c], count_dtype), (c, c))
        self.total_confusion.assign_add(update)

    # -- results (tensors) -------------------------------------------------
    def confusion_matrix(self):
        """`(C, C)` int64 confusion matrix (rows gt, columns prediction)."""
        return ops.convert_to_tensor(self.total_confusion)

    def _stats(self):
        _, float_dtype = _wide_dtypes()
        cm = ops.cast(self.confusion_matrix(), float_dtype)
        tp = ops.diagonal(cm)
        gt = ops.sum(cm, axis=1)
        pr = ops.sum(cm, axis=0)
        return cm, tp, gt, pr

    def per_class_iou(self):
        """`(C,)` float64 IoU, NaN for classes absent from both gt and prediction."""
        _, tp, gt, pr = self._stats()
        union = gt + pr - tp
        return ops.where(union > 0, ops.divide_no_nan(tp, union), float("nan"))

    def result(self):
        iou = self.per_class_iou()
        present = ops.logical_not(ops.isnan(iou))
        total = ops.sum(ops.where(present, iou, 0.0))
        count = ops.sum(ops.cast(present, iou.dtype))
        return ops.cast(ops.divide_no_nan(total, count), self.dtype)

    def pixel_accuracy(self):
        """Fraction of counted pixels predicted correctly (float64 scalar)."""
        cm, tp, _, _ = self._stats()
        return ops.divide_no_nan(ops.sum(tp), ops.sum(cm))

    def mean_accuracy(self):
        """Mean over gt-present classes of `TP / (TP + FN)` (float64 scalar)."""
        _, tp, gt, _ = self._stats()
        present = gt > 0
        acc = ops.divide_no_nan(tp, gt)
        total = ops.sum(ops.where(present, acc, 0.0))
        return ops.divide_no_nan(total, ops.sum(ops.cast(present, acc.dtype)))

    def summary(self, **kwargs):
        """`format_iou_table` of the current per-class IoU (and accuracy)."""
        _, tp, gt, _ = self._stats()
        acc = np.asarray(tp) / np.where(np.asarray(gt) > 0, np.asarray(gt), np.nan)
        kwargs.setdefault("extra_columns", {"Acc": acc})
        return format_iou_table(np.asarray(self.per_class_iou()), self.class_names, **kwargs)

    def reset_state(self):
        count_dtype, _ = _wide_dtypes()
        self.total_confusion.assign(
            ops.zeros((self.num_classes, self.num_classes), count_dtype)
        )

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "num_classes": self.num_classes,
                "ignore_index": self.ignore_index,
                "from_logits": self.from_logits,
                "class_names": self.class_names,
                "align_corners": self.align_corners,
            }
        )
        return config


# ---------------------------------------------------------------------------
# Boundary F-score
# ---------------------------------------------------------------------------
def boundary_tolerance_px(shape, threshold):
    """Tolerance in pixels: `ceil(threshold * diagonal)`, or `threshold` if >= 1.

    >>> [boundary_tolerance_px((1024, 2048), t) for t in DEFAULT_BOUNDARY_THRESHOLDS]
    [3, 5, 9, 12]
    """
    if threshold >= 1:
        return int(math.ceil(threshold))
    return int(math.ceil(threshold * math.hypot(shape[0], shape[1])))


def seg_to_boundary(mask):
    """One-pixel-wide boundary of a binary mask (BSDS / G-SCNN `seg2bmap`).

    A pixel is on the boundary when it differs from its right, lower or
    lower-right neighbour (pixels outside the image count as 0, except that the
    last row only compares with its right neighbour, the last column only with
    its lower one, and the bottom-right pixel is never a boundary pixel).
    """
    seg = np.asarray(mask).astype(bool)
    east = np.zeros_like(seg)
    south = np.zeros_like(seg)
    south_east = np.zeros_like(seg)
    east[:, :-1] = seg[:, 1:]
    south[:-1, :] = seg[1:, :]
    south_east[:-1, :-1] = seg[1:, 1:]
    b = (seg ^ east) | (seg ^ south) | (seg ^ south_east)
    b[-1, :] = seg[-1, :] ^ east[-1, :]
    b[:, -1] = seg[:, -1] ^ south[:, -1]
    b[-1, -1] = False
    return b


def _row_distance(boundary, cap):
    """Horizontal distance of every pixel to the nearest True of its row, capped."""
    h, w = boundary.shape
    idx = np.arange(w, dtype=np.int64)[None, :]
    far = np.int64(w + cap + 1)
    last = np.where(boundary, idx, -far)
    last = np.maximum.accumulate(last, axis=1)
    nxt = np.where(boundary, idx, w + far)
    nxt = np.minimum.accumulate(nxt[:, ::-1], axis=1)[:, ::-1]
    dist = np.minimum(idx - last, nxt - idx)
    return np.minimum(dist, cap + 1)


def _nearest_sq_distance(points, target, cap):
    """Squared distance from each True of `points` to the nearest True of `target`.

    Exact up to `cap**2`; anything farther is reported as larger than `cap**2`.
    Both maps are first cropped to the bounding box of their union (distances
    between the two sets do not depend on pixels outside it).
    """
    ys, xs = np.nonzero(points | target)
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    points, target = points[y0:y1, x0:x1], target[y0:y1, x0:x1]
    ys, xs = np.nonzero(points)
    h = target.shape[0]
    row_sq = _row_distance(target, cap) ** 2
    big = np.iinfo(np.int64).max
    best = np.full(ys.shape, big, np.int64)
    for dy in range(-cap, cap + 1):
        yy = ys + dy
        inside = (yy >= 0) & (yy < h)
        cand = np.full(ys.shape, big, np.int64)
        cand[inside] = row_sq[yy[inside], xs[inside]] + dy * dy
        best = np.minimum(best, cand)
    return best


def _matched_counts(points, target, radii):
    """For each radius, how many `points` lie within that Euclidean distance of `target`."""
    if not points.any() or not target.any():
        return [0] * len(radii)
    sq = _nearest_sq_distance(points, target, max(radii))
    return [int(np.count_nonzero(sq <= r * r)) for r in radii]


def _precision_recall(fg_match, n_fg, gt_match, n_gt):
    """G-SCNN's precision/recall table (works elementwise on arrays)."""
    fg_match, n_fg, gt_match, n_gt = (
        np.asarray(a, np.float64) for a in (fg_match, n_fg, gt_match, n_gt)
    )
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.where(n_fg > 0, fg_match / np.where(n_fg > 0, n_fg, 1), 1.0)
        recall = np.where(n_gt > 0, gt_match / np.where(n_gt > 0, n_gt, 1), 1.0)
        # (Single-sided cases fall out: no gt boundary -> fg_match = 0 -> P = 0,
        # R = 1; no predicted boundary -> P = 1, gt_match = 0 -> R = 0.)
        total = precision + recall
        f = np.where(total > 0, 2 * precision * recall / np.where(total > 0, total, 1), 0.0)
    return precision, recall, f


class BoundaryFScoreAccumulator:
    """Streaming boundary F-score over a data set (NumPy).

    Keeps, per threshold and class, the summed matched / total boundary-pixel
    counts (for the `"pooled"` result) and the summed per-image P, R, F (for
    the `"gscnn"` result). See the module docstring for both protocols.

    Args:
        num_classes: number of classes `C`.
        thresholds: boundary thresholds (fractions of the image diagonal, or
            pixel counts when >= 1).
        ignore_index: ground-truth label whose pixels are zeroed in both masks.

    Example:
    >>> acc = BoundaryFScoreAccumulator(19)
    >>> for pred, gt in pairs:          # (H, W) or (N, H, W) integer maps
    ...     acc.update(pred, gt)
    >>> acc.result()["mean_f"]          # pooled, one value per threshold
    """

    def __init__(self, num_classes, thresholds=DEFAULT_BOUNDARY_THRESHOLDS, ignore_index=255):
        self.num_classes = int(num_classes)
        self.thresholds = tuple(float(t) for t in thresholds)
        self.ignore_index = ignore_index
        self.reset()

    def reset(self):
        shape = (len(self.thresholds), self.num_classes)
        self.fg_match = np.zeros(shape, np.int64)
        self.n_fg = np.zeros(shape, np.int64)
        self.gt_match = np.zeros(shape, np.int64)
        self.n_gt = np.zeros(shape, np.int64)
        self.sum_precision = np.zeros(shape, np.float64)
        self.sum_recall = np.zeros(shape, np.float64)
        self.sum_f = np.zeros(shape, np.float64)
        self.num_images = 0

    def update(self, pred, gt):
        """Adds one `(H, W)` image pair or a batch `(N, H, W)`."""
        pred = np.asarray(pred)
        gt = np.asarray(gt)
        if pred.shape != gt.shape:
            raise ValueError(f"pred {pred.shape} and gt {gt.shape} differ")
        if gt.ndim == 2:
            pred, gt = pred[None], gt[None]
        if gt.ndim != 3:
            raise ValueError(f"expected (H, W) or (N, H, W) maps, got {gt.shape}")
        for p_img, g_img in zip(pred, gt):
            self._update_image(p_img, g_img)

    def _update_image(self, pred, gt):
        ignore = gt == self.ignore_index
        radii = [boundary_tolerance_px(gt.shape, t) for t in self.thresholds]
        counts = np.zeros((4, len(radii), self.num_classes), np.int64)
        for c in range(self.num_classes):
            fg_mask = (pred == c) & ~ignore
            gt_mask = (gt == c) & ~ignore
            if not fg_mask.any() and not gt_mask.any():
                continue  # no boundary at all: counts stay 0 (P = R = F = 1)
            fg_b = seg_to_boundary(fg_mask)
            gt_b = seg_to_boundary(gt_mask)
            n_fg, n_gt = int(fg_b.sum()), int(gt_b.sum())
            counts[0, :, c] = _matched_counts(fg_b, gt_b, radii)
            counts[2, :, c] = _matched_counts(gt_b, fg_b, radii)
            counts[1, :, c] = n_fg
            counts[3, :, c] = n_gt
        fg_match, n_fg, gt_match, n_gt = counts
        precision, recall, f = _precision_recall(fg_match, n_fg, gt_match, n_gt)
        self.fg_match += fg_match
        self.n_fg += n_fg
        self.gt_match += gt_match
        self.n_gt += n_gt
        self.sum_precision += precision
        self.sum_recall += recall
        self.sum_f += f
        self.num_images += 1

    def result(self, protocol="pooled"):
        """Scores so far.

        Args:
            protocol: `"pooled"` (from summed counts; classes without any
                boundary pixel are NaN and left out of the mean) or `"gscnn"`
                (per-image scores averaged over images, all classes averaged).

        Returns:
            dict with `thresholds`, `per_class_f`, `per_class_precision`,
            `per_class_recall` (each `(T, C)` float64), `mean_f` `(T,)` and
            `num_images`.
        """
        if protocol == "pooled":
            precision, recall, f = _precision_recall(
                self.fg_match, self.n_fg, self.gt_match, self.n_gt
            )
            empty = (self.n_fg == 0) & (self.n_gt == 0)
            precision, recall, f = (np.where(empty, np.nan, a) for a in (precision, recall, f))
            with np.errstate(invalid="ignore"):
                present = ~np.isnan(f)
                mean_f = np.where(
                    present.any(axis=1),
                    np.where(present, f, 0.0).sum(axis=1) / np.maximum(present.sum(axis=1), 1),
                    np.nan,
                )
        elif protocol == "gscnn":
            n = max(self.num_images, 1)
            precision = self.sum_precision / n
            recall = self.sum_recall / n
            f = self.sum_f / n
            if self.num_images == 0:
                precision, recall, f = (np.full_like(a, np.nan) for a in (precision, recall, f))
            mean_f = f.mean(axis=1)
        else:
            raise ValueError(f"protocol must be 'pooled' or 'gscnn', got {protocol!r}")
        return {
            "thresholds": self.thresholds,
            "per_class_f": f,
            "per_class_precision": precision,
            "per_class_recall": recall,
            "mean_f": mean_f,
            "num_images": self.num_images,
        }


def boundary_f_score(
    pred,
    gt,
    num_classes,
    thresholds=DEFAULT_BOUNDARY_THRESHOLDS,
    ignore_index=255,
    protocol="gscnn",
):
    """Boundary F-score of predicted vs ground-truth label maps (G-SCNN protocol).

    Args:
        pred: predicted class ids `(H, W)` or `(N, H, W)`.
        gt: ground-truth labels, same shape.
        num_classes: number of classes `C`.
        thresholds: fractions of the image diagonal (3, 5, 9, 12 px at
            1024x2048 for the defaults), or pixel counts when >= 1.
        ignore_index: gt label whose pixels are removed from both masks.
        protocol: `"gscnn"` (default: per-image F averaged over images, every
            class in the mean) or `"pooled"`; see the module docstring.

    Returns:
        dict: `thresholds`, `per_class_f`, `per_class_precision`,
        `per_class_recall` (`(T, C)`), `mean_f` (`(T,)`), `num_images`.

    Example:
    >>> out = boundary_f_score(pred, gt, num_classes=19)
    >>> out["mean_f"]        # one F per threshold
    """
    acc = BoundaryFScoreAccumulator(num_classes, thresholds, ignore_index)
    acc.update(pred, gt)
    return acc.result(protocol=protocol)
