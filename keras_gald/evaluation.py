"""Evaluation of a segmentation model on a data set: mIoU, accuracies, boundary F-score.

One routine, `evaluate`, serves validation during training, `keras-gald evaluate` and the
benchmarks, so that the numbers they report are computed the same way:

1. each batch of normalised images `(N, H, W, 3)` is optionally resized by `eval_scale`
   (bilinear, size `round(H * eval_scale), round(W * eval_scale)`);
2. logits `(N, h, w, C)` come from `predict_logits`: whole image, sliding window and / or
   multi-scale + flip (the `keras_gald.inference` functions);
3. logits not at the label size `(H, W)` are resized bilinearly (half-pixel centres) to it,
   and the class ids `argmax(-1)` are accumulated into one `(C, C)` int64 confusion matrix
   (`keras_gald.metrics.confusion_matrix_np`: rows ground truth, ignored labels dropped);
4. IoU, accuracies and (optionally) the boundary F-score follow the conventions of
   `keras_gald.metrics` (classes absent from ground truth and prediction: IoU NaN, left
   out of the mean).

Any Keras backend: the data set is a `tf.data` pipeline (or any iterable of NumPy-able
batches) on every backend, the forward passes are `keras_gald.inference`'s, the rest is
NumPy.

Example:
    >>> from keras_gald import data, evaluation
    >>> source = data.camvid("/data/camvid", "val")
    >>> ds = data.make_eval_dataset(source)            # (1, H, W, 3) float, (1, H, W) int
    >>> results = evaluation.evaluate(model, ds, 11, class_names=source[1].class_names,
    ...                               eval_scale=0.5, boundary=True)
    >>> results["mean_iou"], results["per_class_iou"]["road"]
    >>> print(evaluation.iou_table(results, title="CamVid val"))
"""

import keras
import numpy as np
import tensorflow as tf

from keras_gald import inference, metrics
from keras_gald.ops.resize import resize_bilinear

__all__ = ["evaluate", "predict_logits", "iou_table"]


def predict_logits(model, images, sliding=None, stride=None, scales=(1.0,), flip=False):
    """Scores `(N, H, W, C)` float32 NumPy at the size of `images` `(N, H, W, 3)`.

    `sliding`: `None` (whole image) or the tile size `(h, w)`, with `stride` (default
    2/3 of the tile). Scales other than `(1.0,)` or `flip=True` average the softmax
    probabilities of every view (`inference.predict_multiscale`); otherwise the result
    is logits.
    """
    sliding_kwargs = None if sliding is None else {"crop_size": sliding, "stride": stride}
    if tuple(scales) != (1.0,) or flip:
        return inference.predict_multiscale(model, images, scales=scales, flip=flip,
                                            sliding=sliding_kwargs)
    if sliding_kwargs is not None:
        return inference.predict_sliding(model, images, **sliding_kwargs)
    return inference.predict_whole(model, images)


def _scaled(images, scale):
    if scale == 1.0:
        return images
    hw = tf.cast(tf.round(tf.cast(tf.shape(images)[1:3], tf.float32) * scale), tf.int32)
    return tf.image.resize(images, hw, method="bilinear")


def _nan_to_none(values):
    return [None if np.isnan(v) else float(v) for v in values]


def evaluate(model, dataset, num_classes, class_names=None, *, sliding=None, stride=None,
             scales=(1.0,), flip=False, eval_scale=1.0, max_images=0, boundary=False,
             boundary_thresholds=None, ignore_index=255, on_image=None, verbose=0):
    """Evaluates `model` on `dataset`; -> a JSON-ready dict of results.

    Args:
        model: a `Segmenter` or any Keras model `images -> logits` (see `inference`).
        dataset: iterable of `(images (N, H, W, 3) float, masks (N, H, W) int)` batches,
            optionally with a third element `paths (N,)` (what
            `keras_gald.data.make_eval_dataset` yields); padded label pixels must be
            `ignore_index`.
        num_classes: `C`.
        class_names: `C` names (default `class_0`, ...).
        sliding, stride, scales, flip: the inference mode (`predict_logits`).
        eval_scale: images are resized by this factor before inference; the scores are
            resized back to the label size, so IoU is always measured at full resolution.
        max_images: stop after this many images (0: the whole data set).
        boundary: also compute the boundary F-score (`metrics.BoundaryFScoreAccumulator`,
            pooled protocol) at `boundary_thresholds` (default
            `metrics.DEFAULT_BOUNDARY_THRESHOLDS`).
        ignore_index: label not counted.
        on_image: optional `f(index, image (H, W, 3), pred (H, W), gt (H, W), path)`
            called for each image (`path` is `None` without a paths element).
        verbose: 1 shows a progress bar with the running mIoU.

    Returns:
        dict with `num_images`, `mean_iou`, `pixel_accuracy`, `mean_accuracy`,
        `class_names`, `per_class_iou` and `per_class_accuracy` (name -> float, `None` for
        undefined), `confusion_matrix` (`C x C` nested lists, rows ground truth) and, with
        `boundary`, `boundary_f` (`thresholds`, `mean_f`, `per_class_f`).
    """
    class_names = list(class_names) if class_names is not None else [
        f"class_{i}" for i in range(num_classes)]
    if len(class_names) != num_classes:
        raise ValueError(f"{len(class_names)} class names for {num_classes} classes")
    if eval_scale <= 0:
        raise ValueError(f"eval_scale must be positive, got {eval_scale}")
    confusion = np.zeros((num_classes, num_classes), np.int64)
    bfs = None
    if boundary:
        bfs = metrics.BoundaryFScoreAccumulator(
            num_classes, thresholds=boundary_thresholds or metrics.DEFAULT_BOUNDARY_THRESHOLDS,
            ignore_index=ignore_index)
    target = max_images or None
    if target is None and isinstance(dataset, tf.data.Dataset):
        cardinality = int(dataset.cardinality())  # < 0: unknown or infinite
        target = cardinality if cardinality >= 0 else None
    bar = keras.utils.Progbar(target, verbose=verbose, unit_name="image",
                             stateful_metrics=["mIoU"])
    seen = 0
    for element in dataset:
        images, masks = element[0], element[1]
        paths = element[2] if len(element) > 2 else None
        if max_images:
            keep = max_images - seen
            images, masks = images[:keep], masks[:keep]
        masks = np.asarray(masks)
        scores = predict_logits(model, _scaled(images, float(eval_scale)), sliding, stride,
                                scales, flip)
        if scores.shape[1:3] != masks.shape[1:3]:
            scores = np.asarray(resize_bilinear(
                tf.constant(scores) if keras.backend.backend() == "tensorflow" else scores,
                masks.shape[1:3]))
        preds = scores.argmax(-1).astype(np.int32)
        confusion += metrics.confusion_matrix_np(masks, preds, num_classes, ignore_index)
        for b in range(len(preds)):
            if bfs is not None:
                bfs.update(preds[b], masks[b])
            if on_image is not None:
                path = None if paths is None else np.asarray(paths)[b].decode()
                on_image(seen + b, np.asarray(images[b]), preds[b], masks[b], path)
        seen += len(preds)
        bar.update(seen, values=[("mIoU", metrics.iou_from_confusion(confusion)[1])])
        if max_images and seen >= max_images:
            break
    per_class, miou = metrics.iou_from_confusion(confusion)
    gt_totals = confusion.sum(1)
    with np.errstate(divide="ignore", invalid="ignore"):
        class_acc = np.where(gt_totals > 0, np.diag(confusion) / np.maximum(gt_totals, 1), np.nan)
    results = {
        "num_images": seen,
        "mean_iou": float(miou),
        "pixel_accuracy": float(np.diag(confusion).sum() / max(confusion.sum(), 1)),
        "mean_accuracy": float(np.nanmean(class_acc)) if np.isfinite(class_acc).any() else 0.0,
        "class_names": class_names,
        "per_class_iou": dict(zip(class_names, _nan_to_none(per_class))),
        "per_class_accuracy": dict(zip(class_names, _nan_to_none(class_acc))),
        "confusion_matrix": confusion.tolist(),
    }
    if bfs is not None:
        res = bfs.result()
        results["boundary_f"] = {
            "thresholds": list(bfs.thresholds),
            "mean_f": _nan_to_none(res["mean_f"]),
            "per_class_f": [_nan_to_none(row) for row in res["per_class_f"]],
        }
    return results


def iou_table(results, title=None):
    """The per-class IoU / accuracy table (`metrics.format_iou_table`) of `evaluate`'s
    results."""
    names = results["class_names"]

    def column(key):
        return np.array([np.nan if results[key][n] is None else results[key][n] for n in names])

    return metrics.format_iou_table(column("per_class_iou"), names,
                                    extra_columns={"Acc": column("per_class_accuracy")},
                                    title=title)
