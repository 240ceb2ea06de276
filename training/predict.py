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
"""

import argparse
import os
import pathlib
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
PALETTES = ("camvid", "cityscapes", "ade20k", "pascal_context", "coco_stuff", "voc")


class ImageReadError(ValueError):
    """An input image could not be read."""


def build_parser():
    p = argparse.ArgumentParser(prog="keras-gald predict", description=__doc__.split("\n")[0])
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
    files = []
    for item in inputs:
        path = pathlib.Path(item)
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise ImageReadError(f"folder {path} holds no images ({', '.join(IMAGE_SUFFIXES)})")
            files.extend(found)
        elif path.is_file():
            files.append(path)
        else:
            raise ImageReadError(f"cannot read image {path}: no such file or folder")
    return files


def read_image(path):
    import numpy as np
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            return np.asarray(img.convert("RGB"), np.uint8)
    except (UnidentifiedImageError, OSError) as err:
        raise ImageReadError(f"cannot read image {path}: {err}") from err


def main(argv=None):
    args = build_parser().parse_args(argv)
    import keras
    import numpy as np
    from PIL import Image

    import keras_gald.models  # noqa: F401  (registers the serializable layers)
    from keras_gald import visualize
    from keras_gald.data import normalize
    from training.evaluate import _pair, predict_logits

    normalization = None if args.normalization == "none" else args.normalization
    try:
        files = collect_images(args.inputs)
        images = [(f, read_image(f)) for f in files]  # fail before any work on a bad file
    except ImageReadError as err:
        print(f"keras-gald predict: {err}", file=sys.stderr)
        return 1
    model = keras.saving.load_model(args.model, compile=False)
    getter = getattr(model, "num_classes", None)
    num_classes = int(getter) if getter is not None else int(model.output.shape[-1])
    palette = palette_for(args.palette, num_classes)
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    progbar = keras.utils.Progbar(len(images), unit_name="image")
    for i, (path, image) in enumerate(images):
        x = np.asarray(normalize(image, normalization))[None]
        scores = predict_logits(model, x, _pair(args.sliding), None, tuple(args.scales), args.flip)
        ids = scores[0].argmax(-1).astype(np.uint8)
        color = visualize.colorize(ids, palette)
        Image.fromarray(color).save(out / f"{path.stem}_mask.png")
        Image.fromarray(visualize.overlay(image, color, args.alpha)).save(out / f"{path.stem}_overlay.png")
        if args.raw_ids:
            Image.fromarray(ids, "L").save(out / f"{path.stem}_ids.png")
        progbar.update(i + 1)
    print(f"wrote {len(images)} prediction(s) to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
