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
`DIR/classes.txt` (colours there: RGB masks). Without `--scales`, a folder run's `eval_scale`
resizes the images as the run's own validation did, so the mIoU is the run's `metrics.json`
one. The numbers come from `keras_gald.evaluation.evaluate`.

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
                   help="test scales (default 1; without --scales a folder run's images are "
                        "resized by the eval_scale of its config.json next to --model, as in "
                        "its own validation)")
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


def evaluate(model, source, normalization="imagenet", sliding=None, stride=None, scales=(1.0,),
             flip=False, boundary=False, limit=0, images_to_show=0, out=None, verbose=1,
             boundary_thresholds=None, eval_scale=1.0):
    """`keras_gald.evaluation.evaluate` on `source`, plus the table and the files.

    Returns the library's results with `inference` (the mode) and `table` added; with
    `out`, writes them to `out/metrics.json`, `out/confusion_matrix.png` and the first
    `images_to_show` side-by-side PNGs to `out/examples/`.
    """
    from keras_gald import data, evaluation, visualize
    from keras_gald.io import atomic_path, atomic_write_json

    info = source[1]
    out = pathlib.Path(out) if out else None
    if out:
        out.mkdir(parents=True, exist_ok=True)

    import numpy as np

    def show(i, image, pred, gt, path):
        if out and i < images_to_show:
            rgb = np.asarray(data.to_uint8_rgb(image, normalization))
            name = pathlib.Path(path).stem
            visualize.render_eval_example(rgb, pred, gt, info,
                                          out / "examples" / f"{i:03d}_{name}.png")

    num_images = len(source[0]) if limit <= 0 else min(limit, len(source[0]))
    results = evaluation.evaluate(
        model, data.make_eval_dataset(source, normalization=normalization, include_paths=True),
        info.num_classes, info.class_names, sliding=sliding, stride=stride, scales=scales,
        flip=flip, eval_scale=eval_scale, max_images=num_images, boundary=boundary,
        boundary_thresholds=boundary_thresholds, on_image=show, verbose=verbose)
    results["inference"] = {"sliding": list(sliding) if sliding else None,
                            "stride": list(stride) if stride else None,
                            "scales": list(scales), "flip": bool(flip),
                            "eval_scale": float(eval_scale)}
    results["table"] = evaluation.iou_table(results, title=f"{results['num_images']} images")
    if out:
        atomic_write_json(out / "metrics.json", results)
        with atomic_path(out / "confusion_matrix.png") as tmp:
            visualize.confusion_matrix_image(np.asarray(results["confusion_matrix"]),
                                             list(info.class_names)).save(tmp)
    return results


def __getattr__(name):
    # `training.evaluate.predict_logits` moved to the library; imported lazily so that
    # the argument checks run before TensorFlow starts.
    if name == "predict_logits":
        from keras_gald.evaluation import predict_logits

        return predict_logits
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


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
    # A folder run's eval_scale: the images are resized as in the run's own validation.
    run = _run_folder_config(args.model) if args.dataset == "folder" else None
    eval_scale = run.eval_scale if run is not None and args.scales is None else 1.0
    import tensorflow as tf

    try:
        results = evaluate(
            model, source,
            normalization=None if args.normalization == "none" else args.normalization,
            sliding=_pair(args.sliding), stride=_pair(args.stride),
            scales=tuple(args.scales or (1.0,)), eval_scale=eval_scale,
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
