"""Inference helpers: whole-image, sliding-window and multi-scale / flip prediction.

All functions take *normalised* float images (what `keras_gald.data.make_eval_dataset`
yields), `(N, H, W, 3)` or a single `(H, W, 3)` image, NumPy, TF or JAX, and return NumPy
float32 `(N, H, W, C)` at the input size (a single image in -> `(1, H, W, C)` out).

Every Keras backend: the forward pass is a `tf.function` on TensorFlow (as before) and
a `jax.jit` of the model's `stateless_call` on JAX (one compilation per input shape;
sliding windows keep the tile shape fixed); the rest is NumPy. Resizes are bilinear with
half-pixel centres (`tf.image.resize` on TensorFlow, `keras.ops.image.resize` elsewhere).

* `predict_whole`: one forward pass per batch (any `H, W`, not only multiples of 8).
* `predict_sliding`: the authors' tiled evaluation. Tiles of `crop_size` start every
  `stride` pixels; the last row / column is shifted back so it ends at the border; a tile
  smaller than the crop (image smaller than the crop) is zero-padded bottom / right to the
  crop (0 = the dataset mean in normalised space), predicted, and cropped back. Overlapping
  logits are summed into one `(H, W, C)` float32 buffer per image and divided by a count
  map. Tiles run `batch_tiles` at a time, so memory is bounded by one image buffer plus
  `batch_tiles` crops whatever the image size.
* `predict_multiscale`: for each scale, resize the image (bilinear), predict (whole or
  sliding), resize the logits back to the input size, take the softmax and add it to the
  image's accumulator; with `flip=True` the horizontally flipped image is predicted as well
  (prediction flipped back). The result is the mean of the softmax probabilities
  (`average="probs"`, default: scales whose logits have different magnitudes then vote
  with equal weight), or of the logits (`average="logits"`). Images and scales are
  processed one at a time, so only one `(H, W, C)` accumulator is alive per call.

Example:
    >>> from keras_gald import inference
    >>> logits = inference.predict_sliding(model, images, crop_size=(769, 769))
    >>> probs = inference.predict_multiscale(model, images, scales=(0.75, 1.0, 1.25),
    ...                                      flip=True, sliding={"crop_size": (769, 769)})
    >>> class_ids = probs.argmax(-1)
"""

import math
import weakref

import keras
import numpy as np

__all__ = ["predict_whole", "predict_sliding", "predict_multiscale", "logits_function"]

_FUNCTIONS = weakref.WeakKeyDictionary()


def _inference_model(model):
    getter = getattr(model, "inference_model", None)
    return getter() if callable(getter) else model


def _on_tensorflow():
    return keras.backend.backend() == "tensorflow"


def logits_function(model):
    """A cached function `images float32 (N, H, W, 3) -> logits float32` for `model` (a
    `Segmenter`'s inference graph, or any Keras model / callable returning logits).

    TensorFlow: a `tf.function` (dynamic `N, H, W`, one trace). JAX: a `jax.jit` of
    `stateless_call` over the model's current weights (a Keras model; any other callable
    is called as it is)."""
    try:
        return _FUNCTIONS[model]
    except (KeyError, TypeError):
        pass
    net = _inference_model(model)
    forward = _tf_logits_function(net) if _on_tensorflow() else _jax_logits_function(net)
    try:
        _FUNCTIONS[model] = forward
    except TypeError:
        pass
    return forward


def _logits_of(out):
    return out["logits"] if isinstance(out, dict) else out


def _jax_logits_function(net):
    if keras.backend.backend() != "jax" or not isinstance(net, keras.Model):
        return lambda images: keras.ops.cast(_logits_of(net(images, training=False)), "float32")
    import jax

    @jax.jit
    def stateless(trainable, non_trainable, images):
        out, _ = net.stateless_call(trainable, non_trainable, images, training=False)
        return keras.ops.cast(_logits_of(out), "float32")

    def forward(images):
        # The weights are read at every call: a model trained further predicts with its new weights.
        return stateless([v.value for v in net.trainable_variables],
                         [v.value for v in net.non_trainable_variables], images)

    return forward


def _tf_logits_function(net):
    import tensorflow as tf

    @tf.function(input_signature=[tf.TensorSpec([None, None, None, 3], tf.float32)],
                 reduce_retracing=True)
    def forward(images):
        out = net(images, training=False)
        if isinstance(out, dict):
            out = out["logits"]
        return tf.cast(out, tf.float32)

    return forward


def _run(forward, images):
    """`forward` on a NumPy batch -> NumPy float32 logits."""
    if _on_tensorflow():
        import tensorflow as tf

        return forward(tf.constant(images)).numpy()
    return np.asarray(forward(images))


def _resize(x, size):
    """Bilinear resize (half-pixel centres) of a NumPy `(N, H, W, C)` batch to `size`."""
    if _on_tensorflow():
        import tensorflow as tf

        return tf.image.resize(x, size, method="bilinear").numpy()
    resized = keras.ops.image.resize(x, tuple(int(v) for v in size), interpolation="bilinear",
                                     antialias=False)
    return np.asarray(resized, np.float32)


def _as_batch(images):
    images = np.asarray(images, np.float32)  # NumPy, TF or JAX arrays
    if images.ndim == 3:
        images = images[None]
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"expected images (N, H, W, 3) or (H, W, 3); got shape {images.shape}")
    return images


def _pair(value, what):
    if isinstance(value, (int, np.integer)):
        value = (int(value), int(value))
    value = tuple(int(v) for v in value)
    if len(value) != 2 or min(value) < 1:
        raise ValueError(f"{what} must be a positive int or (height, width); got {value}")
    return value


def predict_whole(model, images, batch_size=None):
    """Whole-image logits at the input size.

    Args:
        model: a `Segmenter` (its inference graph is used) or a Keras model -> logits.
        images: normalised float images `(N, H, W, 3)` or `(H, W, 3)`; any `H, W`.
        batch_size: images per forward pass (default: all at once).

    Returns:
        NumPy float32 logits `(N, H, W, C)`.
    """
    images = _as_batch(images)
    forward = logits_function(model)
    step = batch_size or len(images)
    outs = [_run(forward, images[i:i + step]) for i in range(0, len(images), step)]
    out = np.concatenate(outs, axis=0)
    if out.shape[1:3] != images.shape[1:3]:
        out = _resize(out, images.shape[1:3])
    return out.astype(np.float32, copy=False)


def tile_grid(height, width, crop_size, stride):
    """Tile boxes `[(y0, y1, x0, x1), ...]` (row-major) covering a `height x width` image.

    Tiles start every `stride`; the last row / column is shifted back to end at the border
    (and starts at 0 when the image is smaller than the crop, the tile is then padded)."""
    ch, cw = crop_size
    sh, sw = stride
    rows = max(int(math.ceil((height - ch) / sh)), 0) + 1
    cols = max(int(math.ceil((width - cw) / sw)), 0) + 1
    boxes = []
    for r in range(rows):
        for c in range(cols):
            y1 = min(r * sh + ch, height)
            x1 = min(c * sw + cw, width)
            y0 = max(y1 - ch, 0)
            x0 = max(x1 - cw, 0)
            boxes.append((y0, y1, x0, x1))
    return boxes


def predict_sliding(model, image_batch, crop_size=(832, 832), stride=None, batch_tiles=4,
                    num_classes=None):
    """Sliding-window logits (tiles averaged), at the input size.

    Args:
        model: a `Segmenter` or a Keras model -> logits.
        image_batch: normalised float images `(N, H, W, 3)` or `(H, W, 3)`; larger or
            smaller than the crop.
        crop_size: int or `(height, width)` of a tile.
        stride: int or `(sh, sw)`; default `ceil(2/3 * crop)` (1/3 overlap).
        batch_tiles: tiles per forward pass.
        num_classes: output channels; default taken from the first prediction.

    Returns:
        NumPy float32 logits `(N, H, W, C)`: for each pixel the mean of the logits of the
        tiles covering it.
    """
    images = _as_batch(image_batch)
    crop = _pair(crop_size, "crop_size")
    if stride is None:
        stride = tuple(max(1, int(math.ceil(c * 2.0 / 3.0))) for c in crop)
    stride = _pair(stride, "stride")
    batch_tiles = max(1, int(batch_tiles))
    forward = logits_function(model)
    n, height, width, _ = images.shape
    boxes = tile_grid(height, width, crop, stride)
    outputs = []
    for b in range(n):
        acc = None if num_classes is None else np.zeros((height, width, num_classes), np.float32)
        count = np.zeros((height, width, 1), np.float32)
        for start in range(0, len(boxes), batch_tiles):
            chunk = boxes[start:start + batch_tiles]
            tiles = np.zeros((len(chunk), crop[0], crop[1], 3), np.float32)
            for i, (y0, y1, x0, x1) in enumerate(chunk):
                tiles[i, : y1 - y0, : x1 - x0] = images[b, y0:y1, x0:x1]
            logits = _run(forward, tiles)
            if acc is None:
                acc = np.zeros((height, width, logits.shape[-1]), np.float32)
            for i, (y0, y1, x0, x1) in enumerate(chunk):
                acc[y0:y1, x0:x1] += logits[i, : y1 - y0, : x1 - x0]
                count[y0:y1, x0:x1] += 1.0
        outputs.append(acc / count)
    return np.stack(outputs, axis=0)


def _softmax(x):
    x = x - x.max(axis=-1, keepdims=True)
    np.exp(x, out=x)
    x /= x.sum(axis=-1, keepdims=True)
    return x


def predict_multiscale(model, images, scales=(1.0,), flip=True, sliding=None, average="probs"):
    """Multi-scale (and flip) test-time augmentation.

    Args:
        model: a `Segmenter` or a Keras model -> logits.
        images: normalised float images `(N, H, W, 3)` or `(H, W, 3)`.
        scales: image scale factors; each scaled size is `round(H * s), round(W * s)`.
        flip: also predict the horizontally flipped image (flipped back) at each scale.
        sliding: `None` (whole-image prediction at every scale) or a dict of
            `predict_sliding` arguments (`crop_size`, `stride`, `batch_tiles`).
        average: `"probs"` (default): mean of the softmax probabilities over all
            scales / flips; `"logits"`: mean of the logits.

    Returns:
        NumPy float32 `(N, H, W, C)`: mean probabilities (`"probs"`) or mean logits.
    """
    if average not in ("probs", "logits"):
        raise ValueError(f"average must be 'probs' or 'logits'; got {average!r}")
    scales = tuple(float(s) for s in scales)
    if not scales or min(scales) <= 0:
        raise ValueError(f"scales must be positive; got {scales}")
    images = _as_batch(images)
    n, height, width, _ = images.shape

    def run(x):
        if sliding is None:
            return predict_whole(model, x)[0]
        return predict_sliding(model, x, **dict(sliding))[0]

    outputs = []
    for b in range(n):
        acc = None
        terms = 0
        for scale in scales:
            size = (max(1, int(round(height * scale))), max(1, int(round(width * scale))))
            x = images[b:b + 1]
            if size != (height, width):
                x = _resize(x, size)
            views = [(x, False)] + ([(x[:, :, ::-1], True)] if flip else [])
            for view, flipped in views:
                logits = run(np.ascontiguousarray(view))
                if flipped:
                    logits = logits[:, ::-1]
                if size != (height, width):
                    logits = _resize(logits[None], (height, width))[0]
                logits = np.array(logits, np.float32)
                term = _softmax(logits) if average == "probs" else logits
                acc = term if acc is None else acc + term
                terms += 1
        outputs.append(acc / terms)
    return np.stack(outputs, axis=0)
