"""`keras-gald evaluate`: mIoU / accuracy (and optional boundary F-score) of a saved model.

    keras-gald evaluate --model model.keras --dataset camvid --data-dir /data/camvid \\
        [--split val] [--sliding 360] [--scales 0.75 1 1.25] [--flip] [--boundary] \\
        [--out results/] [--limit N] [--images-to-show K]

Datasets: camvid, cityscapes, ade20k, pascal_context, coco_stuff (their readers in
`keras_gald.data`) and `folder` (your own data, `keras_gald.data.load_folder`):
`DIR/<split>/{images,labels}`, or one `DIR/{images,labels}` pool split as the training run
did: `--split-file`, by default the `folder_split.json` next to `--model` (written by
`keras-gald train`), else `--val-fraction F [--seed S]`, else every image. Classes from
`--classes a,b,c`, else the training run's `config.json` next to the model, else
`DIR/classes.txt` (colours there: RGB masks).

Prints a per-class IoU / accuracy table and writes (with `--out`) `metrics.json`,
`confusion_matrix.png` and `examples/<k>_<name>.png` (input | prediction | ground truth |
errors) for the first `--images-to-show` images.
"""

import os
import pathlib
import sys

from training import checks, errors

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

DATASETS = {
    "camvid": ("camvid", "val"),
    "cityscapes": ("cityscapes", "val"),
    "ade20k": ("ade20k", "validation"),
    "pascal_context": ("pascal_context", "val"),
    "coco_stuff": ("coco_stuff", "val2017"),
    "folder": ("folder", None),
}


def build_parser():
    p = errors.ArgumentParser(prog="keras-gald evaluate", description=__doc__.split("\n")[0],
                              epilog=errors.EXIT_CODES_HELP)
    p.add_argument("--model", required=True, help="a .keras model file")
    p.add_argument("--dataset", required=True, choices=sorted(DATASETS))
    p.add_argument("--data-dir", required=True)
    p.add_argument("--split", default=None, help="split (default: the dataset's validation split)")
    p.add_argument("--classes", default=None, help="folder: class names a,b,c")
    p.add_argument("--split-file", default=None,
                   help="folder: a folder_split.json (default: the one next to --model)")
    p.add_argument("--val-fraction", type=float, default=None,
                   help="folder, one images/ pool, no split file: validation share")
    p.add_argument("--seed", type=int, default=0, help="folder: seed of --val-fraction")
    p.add_argument("--normalization", default="imagenet", choices=["imagenet", "bgr_mean", "none"])
    p.add_argument("--sliding", type=int, nargs="+", default=None, metavar="CROP",
                   help="sliding-window crop size (one int or H W); default: whole image")
    p.add_argument("--stride", type=int, nargs="+", default=None, help="sliding stride (default 2/3 crop)")
    p.add_argument("--scales", type=float, nargs="+", default=None,
                   help="test scales (default 1, or the eval_scale of the training run's "
                        "config.json next to --model for a folder run)")
    p.add_argument("--flip", action="store_true", help="horizontal-flip test-time augmentation")
    p.add_argument("--boundary", action="store_true", help="also compute the boundary F-score")
    p.add_argument("--out", default=None, help="output folder for JSON / PNGs")
    p.add_argument("--limit", type=int, default=0, help="evaluate only the first N images")
    p.add_argument("--images-to-show", type=int, default=0,
                   help="save side-by-side PNGs for the first K images (needs --out)")
    errors.add_debug_flag(p)
    return p


def _run_folder_config(model_path):
    """The training run's `config.json` next to `model_path` when it trained on a folder."""
    if model_path is None:
        return None
    path = pathlib.Path(model_path).parent / "config.json"
    if not path.is_file():
        return None
    from training.config import TrainConfig

    config = TrainConfig.from_file(path)
    return config if config.dataset == "folder" else None


def load_source(dataset, data_dir, split, classes=None, split_file=None, val_fraction=None,
                seed=0, model_path=None):
    """-> `DataSource` of the split to evaluate (see the module docstring for folders)."""
    from keras_gald import data

    reader_name, default_split = DATASETS[dataset]
    if dataset != "folder":
        return getattr(data, reader_name)(data_dir, split or default_split)
    run = _run_folder_config(model_path)
    kwargs = {}
    if run is not None:
        kwargs = dict(ignore_ids=tuple(run.ignore_ids), reduce_zero_label=run.reduce_zero_label)
        classes = classes or run.classes
    root = pathlib.Path(data_dir)
    if any((root / s / "images").is_dir() for s in data.folder_dataset.SPLITS):
        splits = data.load_folder(root, class_names=classes, **kwargs).splits
        split = split or "val"
        if split not in splits:
            raise ValueError(f"{root} has no {split!r} split (found {', '.join(splits)})")
        return splits[split]
    if split_file is None and model_path is not None:
        beside = pathlib.Path(model_path).parent / "folder_split.json"
        split_file = beside if beside.is_file() else None
    if split_file is not None or val_fraction:
        splits = data.load_folder(root, class_names=classes, split_file=split_file,
                                  val_fraction=val_fraction, seed=seed, **kwargs).splits
        return splits[split or "val"]
    # No split known: every image of the pool.
    return data.load_folder(root, class_names=classes, val_fraction=None,
                            split_file=None, whole_pool=True, **kwargs).splits["all"]


def _pair(values):
    if values is None:
        return None
    return (values[0], values[0]) if len(values) == 1 else tuple(values[:2])


def predict_logits(model, images, sliding=None, stride=None, scales=(1.0,), flip=False):
    """Scores `(N, H, W, C)` with the chosen inference mode (NumPy)."""
    from keras_gald import inference

    sliding_kwargs = None if sliding is None else {"crop_size": sliding, "stride": stride}
    if tuple(scales) != (1.0,) or flip:
        return inference.predict_multiscale(model, images, scales=scales, flip=flip,
                                            sliding=sliding_kwargs)
    if sliding_kwargs is not None:
        return inference.predict_sliding(model, images, **sliding_kwargs)
    return inference.predict_whole(model, images)


def evaluate(model, source, normalization="imagenet", sliding=None, stride=None, scales=(1.0,),
             flip=False, boundary=False, limit=0, images_to_show=0, out=None, verbose=1,
             boundary_thresholds=None):
    """Runs the evaluation; returns the results dict (also written to `out/metrics.json`).

    `boundary_thresholds`: boundary F-score tolerances, fractions of the image diagonal or
    pixel counts when >= 1 (default: `keras_gald.metrics.DEFAULT_BOUNDARY_THRESHOLDS`).
    """
    import keras
    import numpy as np

    from keras_gald import data, metrics, visualize

    info = source[1]
    num_images = len(source[0]) if limit <= 0 else min(limit, len(source[0]))
    dataset = data.make_eval_dataset(source, normalization=normalization, include_paths=True)
    num_classes = info.num_classes
    confusion = np.zeros((num_classes, num_classes), np.int64)
    bfs = None
    if boundary:
        bfs = metrics.BoundaryFScoreAccumulator(
            num_classes, thresholds=boundary_thresholds or metrics.DEFAULT_BOUNDARY_THRESHOLDS)
    out = pathlib.Path(out) if out else None
    if out:
        out.mkdir(parents=True, exist_ok=True)
    bar = keras.utils.Progbar(num_images, verbose=verbose, unit_name="image",
                             stateful_metrics=["mIoU"])
    for i, (image, mask, path) in enumerate(dataset.take(num_images)):
        scores = predict_logits(model, image.numpy(), sliding, stride, scales, flip)
        pred = scores.argmax(-1).astype(np.int32)[0]
        gt = mask.numpy()[0]
        confusion += metrics.confusion_matrix_np(gt, pred, num_classes)
        if bfs is not None:
            bfs.update(pred, gt)
        if out and i < images_to_show:
            rgb = np.asarray(data.to_uint8_rgb(image[0], normalization))
            name = pathlib.Path(path.numpy()[0].decode()).stem
            visualize.render_eval_example(rgb, pred, gt, info, out / "examples" / f"{i:03d}_{name}.png")
        _, miou = metrics.iou_from_confusion(confusion)
        bar.update(i + 1, values=[("mIoU", miou)])
    per_class, miou = metrics.iou_from_confusion(confusion)
    gt_totals = confusion.sum(1)
    with np.errstate(divide="ignore", invalid="ignore"):
        class_acc = np.where(gt_totals > 0, np.diag(confusion) / np.maximum(gt_totals, 1), np.nan)
    pixel_acc = float(np.diag(confusion).sum() / max(confusion.sum(), 1))
    mean_acc = float(np.nanmean(class_acc)) if np.isfinite(class_acc).any() else 0.0

    def clean(values):
        return [None if np.isnan(v) else float(v) for v in values]

    results = {
        "num_images": int(num_images),
        "mean_iou": float(miou),
        "pixel_accuracy": pixel_acc,
        "mean_accuracy": mean_acc,
        "class_names": list(info.class_names),
        "per_class_iou": dict(zip(info.class_names, clean(per_class))),
        "per_class_accuracy": dict(zip(info.class_names, clean(class_acc))),
        "confusion_matrix": confusion.tolist(),
        "inference": {"sliding": list(sliding) if sliding else None,
                      "stride": list(stride) if stride else None,
                      "scales": list(scales), "flip": bool(flip)},
    }
    if bfs is not None:
        res = bfs.result()
        results["boundary_f"] = {
            "thresholds": list(bfs.thresholds),
            "mean_f": clean(res["mean_f"]),
            "per_class_f": [clean(row) for row in res["per_class_f"]],
        }
    table = metrics.format_iou_table(per_class, info.class_names,
                                     extra_columns={"Acc": class_acc},
                                     title=f"{num_images} images")
    results["table"] = table
    if out:
        from keras_gald.io import atomic_path, atomic_write_json

        atomic_write_json(out / "metrics.json", results)
        with atomic_path(out / "confusion_matrix.png") as tmp:
            visualize.confusion_matrix_image(confusion, list(info.class_names)).save(tmp)
    return results


def summary_text(results):
    lines = [results["table"],
             f"mIoU {100 * results['mean_iou']:.2f}  pixel acc {100 * results['pixel_accuracy']:.2f}"
             f"  mean acc {100 * results['mean_accuracy']:.2f}"]
    if "boundary_f" in results:
        b = results["boundary_f"]
        lines.append("boundary F: " + "  ".join(
            f"{t:g}: {'n/a' if f is None else f'{100 * f:.2f}'}"
            for t, f in zip(b["thresholds"], b["mean_f"])))
    return "\n".join(lines)


@errors.command("keras-gald evaluate")
def main(argv=None):
    args = build_parser().parse_args(argv)
    if args.images_to_show and not args.out:
        raise errors.UserError("--images-to-show needs --out")
    checks.require_file(args.model, "model file")
    checks.require_dir(args.data_dir, "--data-dir")
    if args.out:
        checks.output_dir(args.out, "--out")
    for what, values in (("--sliding", args.sliding), ("--stride", args.stride)):
        if values is not None and (len(values) > 2 or min(values) < 1):
            raise errors.UserError(f"{what} takes one or two positive sizes, got {values}")
    if args.scales is not None and min(args.scales) <= 0:
        raise errors.UserError(f"--scales must be positive, got {args.scales}")
    if args.limit < 0 or args.images_to_show < 0:
        raise errors.UserError("--limit and --images-to-show must be >= 0")

    import keras_gald  # noqa: F401  (registers the serializable layers)
    from keras_gald.io import load_model

    if args.images_to_show and not args.out:
        raise errors.UserError("--images-to-show needs --out")
    model = load_model(args.model)
    try:
        source = load_source(args.dataset, args.data_dir, args.split, classes=args.classes,
                             split_file=args.split_file, val_fraction=args.val_fraction,
                             seed=args.seed, model_path=args.model)
    except (ValueError, OSError) as err:  # the readers' layout / missing-file errors
        raise errors.UserError(
            f"cannot read the {args.dataset} data set in {args.data_dir}: {err}") from err
    # Before the first image: a model for another label set gives a meaningless mIoU.
    checks.check_model_matches_data(model, source[1], args.model)
    scales = args.scales
    if scales is None:
        run = _run_folder_config(args.model) if args.dataset == "folder" else None
        scales = [run.eval_scale] if run is not None else [1.0]
    import tensorflow as tf

    try:
        results = evaluate(
            model, source,
            normalization=None if args.normalization == "none" else args.normalization,
            sliding=_pair(args.sliding), stride=_pair(args.stride), scales=tuple(scales),
            flip=args.flip, boundary=args.boundary, limit=args.limit,
            images_to_show=args.images_to_show, out=args.out,
        )
    except tf.errors.InvalidArgumentError as err:
        message = errors.data_assertion(err)
        if message is None:
            raise
        raise errors.CommandFailed(f"data error: {message}; nothing written") from err
    print(summary_text(results))
    if args.out:
        print(f"wrote {pathlib.Path(args.out) / 'metrics.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
