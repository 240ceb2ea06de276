"""Tiny on-disk dataset fixtures written with PIL into a test's tmp_path."""

import pathlib

import numpy as np
from PIL import Image


def write_image(path, array, quality=95):
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    array = np.asarray(array, np.uint8)
    if path.suffix.lower() in (".jpg", ".jpeg"):
        Image.fromarray(array).save(path, "JPEG", quality=quality)
    else:
        Image.fromarray(array).save(path, "PNG")
    return str(path)


def write_label(path, array):
    """8-bit grayscale (mode L) label PNG."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(array, np.uint8), mode="L").save(path, "PNG")
    return str(path)


def rgb_for(label, seed=0):
    """A small RGB image whose red channel encodes the label (for alignment checks)."""
    rng = np.random.default_rng(seed)
    label = np.asarray(label)
    image = rng.integers(0, 256, label.shape + (3,), dtype=np.uint8)
    image[..., 0] = (label.astype(np.int64) * 7) % 256
    return image


def stripes(height, width, values, axis=1):
    """A label with vertical (axis=1) or horizontal (axis=0) bands cycling through `values`."""
    values = np.asarray(values, np.uint8)
    n = width if axis == 1 else height
    band = values[(np.arange(n) * len(values)) // n]
    return np.broadcast_to(band[None, :] if axis == 1 else band[:, None], (height, width)).copy()
