"""Tiny generated folder datasets (PIL; no network): id masks or RGB colour-coded masks."""

import numpy as np
from PIL import Image

CLASSES = ("sky", "road", "car")
COLOURS = ((70, 130, 180), (128, 64, 128), (0, 0, 142))
IGNORE_COLOUR = (0, 0, 0)


def scene(h, w, rng, with_car=True):
    """-> (image uint8 (h, w, 3), ids uint8 (h, w)); sky on top, road below, a car, a 255 corner."""
    ids = np.zeros((h, w), np.uint8)
    ids[h // 2:] = 1
    if with_car:
        ids[h // 2: h // 2 + h // 4, w // 3: w // 2] = 2
    ids[:3, :3] = 255
    image = np.zeros((h, w, 3), np.uint8)
    for k, colour in enumerate(((120, 170, 240), (90, 90, 90), (200, 30, 30))):
        image[ids == k] = colour
    image = np.clip(image + rng.integers(-10, 10, image.shape), 0, 255).astype(np.uint8)
    return image, ids


def to_rgb(ids):
    rgb = np.zeros(ids.shape + (3,), np.uint8)
    for k, colour in enumerate(COLOURS):
        rgb[ids == k] = colour
    rgb[ids == 255] = IGNORE_COLOUR
    return rgb


def write_pairs(image_dir, label_dir, count, rng, rgb=False, size=(48, 64), prefix="img",
                car_every=1):
    image_dir.mkdir(parents=True, exist_ok=True)
    label_dir.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        h, w = size[0] + (i % 2) * 8, size[1]
        image, ids = scene(h, w, rng, with_car=(i % car_every == 0))
        Image.fromarray(image).save(image_dir / f"{prefix}{i:02d}.png")
        label = to_rgb(ids) if rgb else ids
        Image.fromarray(label).save(label_dir / f"{prefix}{i:02d}.png")


def make_folder(root, layout="splits", rgb=False, train=8, val=3, seed=0, classes_file=True,
                size=(48, 64)):
    """Writes `root/{train,val}/{images,labels}` (layout "splits") or `root/{images,labels}`
    ("single", train + val images in one pool) and `root/classes.txt` (with colours and an
    `ignore 0 0 0` line when `rgb`). Returns `root`."""
    rng = np.random.default_rng(seed)
    if layout == "splits":
        write_pairs(root / "train" / "images", root / "train" / "labels", train, rng, rgb, size)
        write_pairs(root / "val" / "images", root / "val" / "labels", val, rng, rgb, size,
                    prefix="val")
    else:
        write_pairs(root / "images", root / "labels", train + val, rng, rgb, size)
    if classes_file:
        if rgb:
            lines = [f"{n} {r} {g} {b}" for n, (r, g, b) in zip(CLASSES, COLOURS)]
            lines.append("ignore {} {} {}".format(*IGNORE_COLOUR))
        else:
            lines = list(CLASSES)
        (root / "classes.txt").write_text("\n".join(lines) + "\n")
    return root
