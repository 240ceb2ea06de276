"""`keras-gald predict`: colourised masks and overlays for images.

    keras-gald predict --model model.keras image.jpg [more.png | folder/ ...] --out out/ \\
        [--palette camvid|cityscapes|ade20k|pascal_context|coco_stuff|voc|DIR|classes.txt] \
        [--raw-ids] \\
        [--sliding CROP] [--scales 1 1.25] [--flip] [--alpha 0.5]

For each image `name.ext` writes `out/name_mask.png` (colour mask), `out/name_overlay.png`
(mask blended over the image) and with `--raw-ids` `out/name_ids.png` (8-bit class ids).
Folders are searched recursively for .jpg / .jpeg / .png / .bmp / .webp files.
`--palette` also takes your own dataset: a folder holding `classes.txt`, or that file; its
colours (`name r g b` lines) are used, VOC colours when it lists names only.

Every readable image is processed; unreadable ones (truncated, not an image, missing) are
listed at the end and the exit status is then 1. Two inputs with the same file name stem
would write the same outputs and are refused up front.
"""

import os
import pathlib
import sys

from training import checks, errors

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
PALETTES = ("camvid", "cityscapes", "ade20k", "pascal_context", "coco_stuff", "voc")


class ImageReadError(ValueError):
    """An input image could not be read."""


def build_parser():
    p = errors.ArgumentParser(prog="keras-gald predict", description=__doc__.split("\n")[0],
                              epilog=errors.EXIT_CODES_HELP)
    p.add_argument("inputs", nargs="+", help="image files and / or folders")
    p.add_argument("--model", required=True, help="a .keras model file")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--palette", default="voc",
                   help=f"{', '.join(PALETTES)}, or a folder dataset / classes.txt")
    p.add_argument("--raw-ids", action="store_true", help="also write class-id PNGs")
    p.add_argument("--normalization", default="imagenet", choices=["imagenet", "bgr_mean", "none"])
    p.add_argument("--sliding", type=int, nargs="+", default=None, metavar="CROP")
    p.add_argument("--scales", type=float, nargs="+", default=[1.0])
    p.add_argument("--flip", action="store_true")
    p.add_argument("--alpha", type=float, default=0.5, help="overlay opacity of the mask")
    errors.add_debug_flag(p)
    return p


def palette_for(name, num_classes):
    """`(num_classes, 3)` uint8 colours: the dataset's palette (extended with VOC colours
    if the model has more classes)."""
    import numpy as np

    from keras_gald import data

    infos = {"camvid": data.CAMVID_INFO, "cityscapes": data.CITYSCAPES_TRAINID_INFO,
             "ade20k": data.ADE20K_INFO, "pascal_context": data.PASCAL_CONTEXT_INFO,
             "coco_stuff": data.COCO_STUFF_INFO}
    if name in infos:
        base = infos[name].palette_array
    elif name in PALETTES:
        base = data.voc_palette(num_classes)
    else:
        base = _folder_palette(name)
    if len(base) < num_classes:
        base = np.concatenate([base, data.voc_palette(num_classes)[len(base):]], axis=0)
    return np.asarray(base[:num_classes], np.uint8)


def _folder_palette(path):
    """Colours of a folder dataset's `classes.txt` (`path`: the file or its folder)."""
    import numpy as np

    from keras_gald import data

    path = pathlib.Path(path)
    if path.is_dir():
        path = path / data.folder_dataset.CLASSES_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"--palette {path}: not a palette name ({', '.join(PALETTES)}) nor a classes.txt")
    names, colours, _ = data.parse_classes_file(path)
    if colours is None:
        return data.voc_palette(len(names))
    return np.asarray(colours, np.uint8)


def collect_images(inputs):
    """-> `(files, failures)`: image files to process, and `(path, reason)` for inputs
    that are neither a file nor a folder with images."""
    files, failures = [], []
    for item in inputs:
        path = pathlib.Path(item)
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                failures.append((path, f"folder holds no images ({', '.join(IMAGE_SUFFIXES)})"))
            files.extend(found)
        elif path.is_file():
            files.append(path)
        else:
            failures.append((path, "no such file or folder"))
    return files, failures


def read_image(path):
    """uint8 RGB array; `ImageReadError` naming `path` when it does not fully decode."""
    import numpy as np
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            img.load()  # decode everything now: a truncated file fails here, not later
            return np.asarray(img.convert("RGB"), np.uint8)
    except (UnidentifiedImageError, OSError, ValueError) as err:
        raise ImageReadError(f"cannot read image {path}: {err}") from err


def _save_png(array_image, path):
    from keras_gald.io import atomic_path

    with atomic_path(path) as tmp:  # a kill never leaves a half-written PNG
        array_image.save(tmp, format="PNG")


@errors.command("keras-gald predict")
def main(argv=None):
    args = build_parser().parse_args(argv)
    checks.require_file(args.model, "model file")
    out = checks.output_dir(args.out, "--out")
    if not 0.0 <= args.alpha <= 1.0:
        raise errors.UserError(f"--alpha must be in [0, 1], got {args.alpha}")
    if args.sliding is not None and (len(args.sliding) > 2 or min(args.sliding) < 1):
        raise errors.UserError(f"--sliding takes one or two positive sizes, got {args.sliding}")
    if min(args.scales) <= 0:
        raise errors.UserError(f"--scales must be positive, got {args.scales}")
    files, failures = collect_images(args.inputs)
    by_stem = {}
    for f in files:
        by_stem.setdefault(f.stem, []).append(f)
    clashes = [paths for paths in by_stem.values() if len(paths) > 1]
    if clashes:
        raise errors.UserError(
            f"inputs {clashes[0][0]} and {clashes[0][1]} would write the same outputs "
            f"({clashes[0][0].stem}_mask.png); predict them into separate --out folders")

    import keras
    import numpy as np
    from PIL import Image

    from keras_gald import visualize
    from keras_gald.data import normalize
    from keras_gald.io import load_model
    from keras_gald.evaluation import predict_logits
    from training.evaluate import _pair

    normalization = None if args.normalization == "none" else args.normalization
    model = load_model(args.model)
    channels = checks.model_channels(model)
    if channels is not None and channels != 3:
        raise errors.UserError(f"model {args.model} expects {channels}-channel input; "
                               "predict reads RGB images (3 channels)")
    num_classes = checks.model_num_classes(model)
    palette = palette_for(args.palette, num_classes)
    out.mkdir(parents=True, exist_ok=True)
    progbar = keras.utils.Progbar(len(files), unit_name="image")
    written = 0
    for i, path in enumerate(files):
        # One image at a time: a bad file is recorded and the rest still get predictions.
        try:
            image = read_image(path)
        except ImageReadError as err:
            failures.append((path, str(err.__cause__ or err)))
            progbar.update(i + 1)
            continue
        x = np.asarray(normalize(image, normalization))[None]
        scores = predict_logits(model, x, _pair(args.sliding), None, tuple(args.scales), args.flip)
        ids = scores[0].argmax(-1).astype(np.uint8)
        color = visualize.colorize(ids, palette)
        _save_png(Image.fromarray(color), out / f"{path.stem}_mask.png")
        _save_png(Image.fromarray(visualize.overlay(image, color, args.alpha)),
                  out / f"{path.stem}_overlay.png")
        if args.raw_ids:
            _save_png(Image.fromarray(ids, "L"), out / f"{path.stem}_ids.png")
        written += 1
        progbar.update(i + 1)
    print(f"wrote {written} prediction(s) to {out}")
    if failures:
        for path, why in failures:
            print(f"keras-gald predict: cannot read image {path}: {why}", file=sys.stderr)
        total = len(files) + sum(1 for p, _ in failures if not p.is_file())
        raise errors.CommandFailed(
            f"{len(failures)} of {total} input(s) could not be read "
            f"({', '.join(str(p) for p, _ in failures[:5])}{', ...' if len(failures) > 5 else ''})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
