"""Visualisation with PIL only: colour masks, overlays, error maps, side-by-side panels,
confusion-matrix images, and the paper's LD visualisations (LDv1 mask maps, Fig. 7;
LDv2 local affinities, Fig. 9).

Images are uint8 RGB `(H, W, 3)` NumPy arrays unless stated; masks are integer class ids
`(H, W)` with 255 = ignore.

Example:
    >>> from keras_gald import visualize
    >>> panel = visualize.side_by_side([image, visualize.colorize(pred, palette),
    ...                                 visualize.colorize(gt, palette),
    ...                                 visualize.error_map(pred, gt)],
    ...                                ["input", "prediction", "ground truth", "errors"])
    >>> panel.save("example.png")
    >>> m = visualize.ldv1_mask_map(model, normalized_image)      # (h, w) at feature size
"""

import pathlib

import numpy as np
from PIL import Image, ImageDraw

__all__ = [
    "colorize", "overlay", "error_map", "side_by_side", "heatmap", "confusion_matrix_image",
    "find_layer", "ldv1_mask_map", "ldv2_affinity", "render_ldv1_mask", "render_ldv2_affinity",
    "render_eval_example",
]

IGNORE = 255
CORRECT_COLOR = (60, 60, 60)
WRONG_COLOR = (255, 40, 40)
IGNORE_COLOR = (0, 0, 0)


def _palette_array(palette):
    if hasattr(palette, "palette_array"):
        palette = palette.palette_array
    return np.asarray(palette, np.uint8).reshape(-1, 3)


def colorize(mask, palette, ignore_color=IGNORE_COLOR):
    """Class-id mask `(H, W)` -> uint8 RGB `(H, W, 3)`; ids outside the palette (255) get
    `ignore_color`. `palette`: `(C, 3)` colours or a `DatasetInfo`."""
    palette = _palette_array(palette)
    table = np.zeros((256, 3), np.uint8)
    table[:] = ignore_color
    table[: min(len(palette), 256)] = palette[:256]
    mask = np.asarray(mask)
    return table[np.clip(mask, 0, 255).astype(np.int64)]


def overlay(image, color_mask, alpha=0.5):
    """Blend a colour mask over an image: `(1 - alpha) * image + alpha * mask`, uint8."""
    image = np.asarray(image, np.float32)
    color_mask = np.asarray(color_mask, np.float32)
    return np.clip((1 - alpha) * image + alpha * color_mask + 0.5, 0, 255).astype(np.uint8)


def error_map(pred, gt, ignore_index=IGNORE):
    """uint8 RGB: wrong pixels red, correct dark grey, ignored (gt == 255) black."""
    pred = np.asarray(pred)
    gt = np.asarray(gt)
    out = np.empty(gt.shape + (3,), np.uint8)
    out[:] = CORRECT_COLOR
    out[pred != gt] = WRONG_COLOR
    out[gt == ignore_index] = IGNORE_COLOR
    return out


def _to_pil(panel):
    if isinstance(panel, Image.Image):
        return panel.convert("RGB")
    panel = np.asarray(panel)
    if panel.ndim == 2:
        panel = np.repeat(panel[..., None], 3, axis=-1)
    return Image.fromarray(panel.astype(np.uint8), "RGB")


def side_by_side(panels, titles=None, gap=4, title_height=14, background=(255, 255, 255)):
    """Panels (arrays or PIL images) in one row, each with an optional title above.

    Returns a PIL RGB image."""
    panels = [_to_pil(p) for p in panels]
    if titles is not None and len(titles) != len(panels):
        raise ValueError(f"{len(titles)} titles for {len(panels)} panels")
    top = title_height if titles else 0
    width = sum(p.width for p in panels) + gap * (len(panels) - 1)
    height = max(p.height for p in panels) + top
    canvas = Image.new("RGB", (width, height), background)
    draw = ImageDraw.Draw(canvas)
    x = 0
    for i, panel in enumerate(panels):
        canvas.paste(panel, (x, top))
        if titles:
            draw.text((x + 2, 1), str(titles[i]), fill=(0, 0, 0))
        x += panel.width + gap
    return canvas


def heatmap(values, vmin=None, vmax=None):
    """2-D float array -> uint8 RGB with a jet-like colour map (blue low, red high)."""
    values = np.asarray(values, np.float32)
    lo = np.nanmin(values) if vmin is None else vmin
    hi = np.nanmax(values) if vmax is None else vmax
    t = np.clip((values - lo) / max(hi - lo, 1e-12), 0, 1)
    r = np.clip(1.5 - np.abs(4 * t - 3), 0, 1)
    g = np.clip(1.5 - np.abs(4 * t - 2), 0, 1)
    b = np.clip(1.5 - np.abs(4 * t - 1), 0, 1)
    return (np.stack([r, g, b], -1) * 255 + 0.5).astype(np.uint8)


def confusion_matrix_image(confusion, class_names=None, cell=24, normalize="rows"):
    """Confusion matrix (rows = ground truth, columns = prediction) as a PIL image.

    Cells are shaded by the row-normalised value (`normalize="rows"`, recall per class) or
    the raw count share (`None`); the percentage is written in cells large enough."""
    confusion = np.asarray(confusion, np.float64)
    n = confusion.shape[0]
    if normalize == "rows":
        shares = confusion / np.maximum(confusion.sum(1, keepdims=True), 1)
    else:
        shares = confusion / max(confusion.sum(), 1)
    names = [str(c) for c in (class_names or range(n))]
    label_w = 7 * max(len(s) for s in names) + 8
    header = 7 * max(len(s) for s in names) + 8
    canvas = Image.new("RGB", (label_w + n * cell + 2, header + n * cell + 16), "white")
    draw = ImageDraw.Draw(canvas)
    draw.text((2, 2), "rows: ground truth, cols: prediction", fill=(0, 0, 0))
    for j, name in enumerate(names):  # vertical column labels
        text = Image.new("RGB", (header - 14, 12), "white")
        ImageDraw.Draw(text).text((0, 0), name, fill=(0, 0, 0))
        text = text.rotate(90, expand=True)
        canvas.paste(text, (label_w + j * cell + (cell - 12) // 2, 14))
    for i in range(n):
        y = header + 14 + i * cell - 14
        draw.text((2, y + cell // 2 - 5), names[i], fill=(0, 0, 0))
        for j in range(n):
            v = shares[i, j]
            shade = int(255 * (1 - v))
            color = (shade, shade, 255) if i == j else (255, shade, shade)
            x = label_w + j * cell
            draw.rectangle([x, y, x + cell - 1, y + cell - 1], fill=color, outline=(200, 200, 200))
            if cell >= 22 and v > 0:
                draw.text((x + 2, y + cell // 2 - 5), f"{100 * v:.0f}",
                          fill=(255, 255, 255) if v > 0.6 else (0, 0, 0))
    return canvas


# ----------------------------------------------------------------------------- LD maps


def _all_layers(model):
    for layer in model.layers:
        yield layer
        if hasattr(layer, "layers"):
            yield from _all_layers(layer)


def find_layer(model, cls_name):
    """The first layer of `model` (searched recursively) whose class is named `cls_name`."""
    getter = getattr(model, "inference_model", None)
    net = getter() if callable(getter) else model
    for layer in _all_layers(net):
        if type(layer).__name__ == cls_name:
            return net, layer
    raise ValueError(f"model {model.name!r} has no {cls_name} layer")


def _batch(image):
    image = np.asarray(image, np.float32)
    return image[None] if image.ndim == 3 else image


def ldv1_mask_map(model, image):
    """Mean over channels of the LDv1 mask `M` for a normalised image.

    Args:
        model: a model with an `LDv1` layer (e.g. `GALD(..., ld="v1")`).
        image: normalised float image `(H, W, 3)` (or `(1, H, W, 3)`).

    Returns:
        float32 `(h, w)` at the LDv1 input (feature) resolution, values in (0, 1).
    """
    import keras

    net, layer = find_layer(model, "LDv1")
    features = keras.Model(net.input, layer.input)(_batch(image), training=False)
    mask = layer.compute_mask_map(features)
    return np.asarray(mask, np.float32)[0].mean(axis=-1)


def ldv2_affinity(model, image, pixel=(0, 0), return_feature_pixel=False):
    """The `k x k` LDv2 local affinity (softmax weights, mean over heads) at an image pixel.

    The image pixel `(y, x)` maps to the feature pixel `(floor(y * h / H), floor(x * w / W))`
    of the `h x w` LDv2 input. Entry `[i, j]` is the weight of the neighbour at offset
    `neighbour_offsets(k, r)[i * k + j]` (row-major).

    Returns:
        float32 `(k, k)` (sums to 1), and the feature pixel if `return_feature_pixel`.
    """
    import keras

    net, layer = find_layer(model, "LDv2")
    batch = _batch(image)
    height, width = batch.shape[1:3]
    inputs = keras.Model(net.input, layer.input)(batch, training=False)
    weights = np.asarray(layer.attention_weights(list(inputs)), np.float32)
    h, w = weights.shape[1:3]
    y, x = pixel
    if not (0 <= y < height and 0 <= x < width):
        raise ValueError(f"pixel {pixel} outside the {height}x{width} image")
    fy, fx = min(int(y * h / height), h - 1), min(int(x * w / width), w - 1)
    k = layer.kernel_size
    out = weights[0, fy, fx].mean(axis=0).reshape(k, k)
    return (out, (fy, fx)) if return_feature_pixel else out


def _upsample(array, size):
    return np.asarray(Image.fromarray(array).resize((size[1], size[0]), Image.BILINEAR))


def render_ldv1_mask(model, image_uint8, path, normalization="imagenet"):
    """Paper Fig. 7: input | mean LDv1 mask (heat map, upsampled) | overlay. Writes a PNG.

    Returns the mask map `(h, w)`."""
    from keras_gald.data.normalization import normalize

    image_uint8 = np.asarray(image_uint8, np.uint8)
    mask = ldv1_mask_map(model, np.asarray(normalize(image_uint8, normalization)))
    heat = _upsample(heatmap(mask), image_uint8.shape[:2])
    panel = side_by_side([image_uint8, heat, overlay(image_uint8, heat, 0.5)],
                         ["input", "LDv1 mask (mean)", "overlay"])
    _save(panel, path)
    return mask


def render_ldv2_affinity(model, image_uint8, path, pixels=((0, 0),), normalization="imagenet",
                         cell=16):
    """Paper Fig. 9: the image with each chosen pixel (white cross) and its sampled
    neighbours (discs shaded by weight, heat colours), plus each `k x k` weight grid.

    Returns the list of `(k, k)` weight arrays."""
    from keras_gald.data.normalization import normalize
    from keras_gald.ops.local_attention import neighbour_offsets

    image_uint8 = np.asarray(image_uint8, np.uint8)
    x_norm = np.asarray(normalize(image_uint8, normalization))
    _, layer = find_layer(model, "LDv2")
    height, width = image_uint8.shape[:2]
    canvas = _to_pil(image_uint8)
    draw = ImageDraw.Draw(canvas)
    grids, results = [], []
    scale_y, scale_x = _feature_scale(model, x_norm, height, width)
    for pixel in pixels:
        weights, (fy, fx) = ldv2_affinity(model, x_norm, pixel, return_feature_pixel=True)
        results.append(weights)
        k = weights.shape[0]
        colors = heatmap(weights, 0, weights.max())
        offsets = neighbour_offsets(k, layer.dilation_rate)
        for idx, (dy, dx) in enumerate(offsets):
            cy = (fy + dy + 0.5) * scale_y
            cx = (fx + dx + 0.5) * scale_x
            r = 1 + 3 * weights.flat[idx] / max(weights.max(), 1e-12)
            color = tuple(int(c) for c in colors.flat[3 * idx: 3 * idx + 3])
            draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=color)
        y, x = pixel
        draw.line([x - 3, y, x + 3, y], fill=(255, 255, 255))
        draw.line([x, y - 3, x, y + 3], fill=(255, 255, 255))
        grid = Image.fromarray(colors).resize((k * cell, k * cell), Image.NEAREST)
        grids.append(grid)
    panel = side_by_side([canvas] + grids,
                         ["affinity"] + [f"({p[0]},{p[1]})" for p in pixels])
    _save(panel, path)
    return results


def _feature_scale(model, x_norm, height, width):
    import keras

    net, layer = find_layer(model, "LDv2")
    feats = keras.Model(net.input, layer.input)(x_norm[None], training=False)
    h, w = feats[0].shape[1:3]
    return height / h, width / w


def render_eval_example(image, pred, gt, palette, path=None):
    """input | prediction | ground truth | error map, coloured with `palette`."""
    panel = side_by_side(
        [image, colorize(pred, palette), colorize(gt, palette), error_map(pred, gt)],
        ["input", "prediction", "ground truth", "errors"],
    )
    if path is not None:
        _save(panel, path)
    return panel


def _save(image, path):
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _to_pil(image).save(path)
