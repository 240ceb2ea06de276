"""`tf.data` pipelines: training (augmented crops) and evaluation (full images).

Both yield `(images float32 (N, H, W, 3), masks int32 (N, H, W))`, masks holding train ids
`0 .. num_classes-1` and the ignore label 255.

A *source* is any of:

- `DataSource(pairs, info)` / `(pairs, info)` from a reader: `pairs` a list of
  `(image_path, label_path)`; images are decoded with `tf.io.decode_image` (JPEG/PNG/BMP, 3
  channels), labels must be single-channel 8-bit PNGs holding raw ids;
- `(dataset, info)`: a `tf.data.Dataset` of `(image uint8 (H, W, 3), raw label (H, W) or
  (H, W, 1))`, e.g. `synthetic_dataset(...)` or `cityscapes_tfds(...)`.

Per example: decode -> check image size == label size -> raw ids -> train ids with
`info.lut` -> check values (`validate=True`) -> [cache] -> (training: shuffle, repeat,
photometric jitter, normalise, random scale / pad / crop / flip) -> batch -> prefetch.
Errors raised while iterating are `tf.errors.InvalidArgumentError` whose message names the
file (image and label paths for a size mismatch, label path and bad raw values otherwise).

Determinism: all augmentation randomness is stateless, each element's `[2]` seed drawn from
`tf.data.Dataset.random(seed + 1)`, and shuffling uses `seed`: a freshly built pipeline with the
same `seed` gives identical batches (also with parallel maps); iterating the same dataset object
again (the next Keras epoch) gives a new shuffle and new augmentations.

Example:
    >>> source = keras_gald.data.camvid("/data/camvid", "train")
    >>> ds = make_dataset(source, training=True, crop_size=(360, 360), batch_size=8, seed=0)
    >>> images, masks = next(iter(ds))       # (8, 360, 360, 3) float32, (8, 360, 360) int32
"""

import numpy as np
import tensorflow as tf

from keras_gald.data import augment as aug
from keras_gald.data.info import IGNORE_LABEL, DataLayoutError, DatasetInfo
from keras_gald.data.normalization import _check_mode, normalize
from keras_gald.data.readers import check_pairs

AUTOTUNE = tf.data.AUTOTUNE


def _resolve_source(source, info):
    """-> (kind, payload, info) with kind 'pairs' or 'dataset'."""
    if isinstance(source, tuple) and len(source) == 2 and isinstance(source[1], DatasetInfo):
        source, tuple_info = source
        if info is not None and info != tuple_info:
            raise ValueError("make_dataset: `info` differs from the source's own DatasetInfo")
        info = tuple_info
    if info is None:
        raise ValueError("make_dataset: pass a (pairs_or_dataset, DatasetInfo) source or `info=`")
    if isinstance(source, tf.data.Dataset):
        spec = source.element_spec
        if not isinstance(spec, tuple) or len(spec) != 2:
            raise ValueError(
                "make_dataset: a tf.data source must yield (image uint8 (H, W, 3), label (H, W) "
                f"or (H, W, 1)) tuples, got element_spec {spec}"
            )
        return "dataset", source, info
    pairs = [(str(i), str(l)) for i, l in source]
    if not pairs:
        raise DataLayoutError(f"make_dataset: the {info.name!r} source has no (image, label) pairs")
    return "pairs", pairs, info


def load_pair(image_path, label_path):
    """Reads and decodes one pair: `image uint8 (H, W, 3)`, `label uint8 (H, W)`.

    Raises (when run) an `InvalidArgumentError` naming the files if the label is not a
    single-channel image or its size differs from the image's.
    """
    image_bytes = tf.io.read_file(image_path)
    label_bytes = tf.io.read_file(label_path)
    # TF's decoders fail with "jpeg::Uncompress failed" / "Unknown image file format" and no
    # path; these checks fail first, naming the file.
    image = tf.io.decode_image(_checked_image_bytes(image_bytes, image_path, "image"), channels=3,
                               expand_animations=False)
    label = tf.io.decode_png(_checked_image_bytes(label_bytes, label_path, "label"), channels=0)
    tf.debugging.Assert(
        tf.equal(tf.shape(label)[2], 1),
        ["label must be a single-channel (grayscale id) PNG, got channels:", tf.shape(label)[2],
         "label:", label_path],
    )
    _assert_same_size(image, label, image_path, label_path)
    return image, label[..., 0]


def load_color_pair(image_path, label_path):
    """Reads one pair with a colour-coded label: `image uint8 (H, W, 3)`, `label uint8 (H, W, 3)`.

    Raises (when run) an `InvalidArgumentError` naming the files if the sizes differ.
    """
    image = tf.io.decode_image(
        _checked_image_bytes(tf.io.read_file(image_path), image_path, "image"), channels=3,
        expand_animations=False)
    label = tf.io.decode_png(
        _checked_image_bytes(tf.io.read_file(label_path), label_path, "label"), channels=3)
    _assert_same_size(image, label, image_path, label_path)
    return image, label


def colors_to_train_ids(rgb, info, label_path, validate=True):
    """RGB label `(H, W, 3)` -> uint8 train ids `(H, W)` through `info.label_colors`.

    A colour not in the table raises (when run) an `InvalidArgumentError` naming the file and
    the first unknown colour as `(r, g, b)`; with `validate=False` it becomes the ignore label.
    """
    table = sorted((int(r) * 65536 + int(g) * 256 + int(b), int(t))
                   for r, g, b, t in info.label_colors)
    codes = tf.constant([c for c, _ in table], tf.int32)
    ids = tf.constant([t for _, t in table], tf.int32)
    rgb = tf.cast(rgb, tf.int32)
    code = rgb[..., 0] * 65536 + rgb[..., 1] * 256 + rgb[..., 2]
    flat = tf.reshape(code, [-1])
    index = tf.minimum(tf.searchsorted(codes, flat), tf.size(codes) - 1)
    known = tf.equal(tf.gather(codes, index), flat)
    if validate:
        first = tf.boolean_mask(flat, tf.logical_not(known))[:1]
        first = tf.concat([first, tf.zeros([1], tf.int32)], 0)[0]
        colour = tf.strings.format("({}, {}, {})", (first // 65536, first // 256 % 256, first % 256))
        tf.debugging.Assert(
            tf.reduce_all(known),
            [f"unknown label colour (not in the class colours of {info.name!r}) in label",
             label_path, "colour (r, g, b):", colour],
        )
    mapped = tf.where(known, tf.gather(ids, index), IGNORE_LABEL)
    return tf.cast(tf.reshape(mapped, tf.shape(code)), tf.uint8)


def _checked_image_bytes(data, path, what):
    """`data` after asserting it is a complete JPEG / PNG / BMP / GIF / WebP file.

    Checks the format's signature, and for JPEG and PNG that the end marker is present
    (JPEG EOI `FF D9` within the last 1 KiB; PNG `IEND` chunk last): a non-image or a
    truncated file fails here with its path, not inside the decoder without one.
    """
    size = tf.strings.length(data)
    head = tf.io.decode_raw(tf.strings.substr(data, 0, 12), tf.uint8)
    head = tf.pad(head, [[0, 12 - tf.size(head)]])  # short files compare against zeros
    tail_len = tf.minimum(size, 1024)
    tail = tf.io.decode_raw(tf.strings.substr(data, size - tail_len, tail_len), tf.uint8)
    tail = tf.pad(tail, [[0, tf.maximum(12 - tf.size(tail), 0)]])

    def equal(values, start, signature):
        return tf.reduce_all(tf.equal(values[start:start + len(signature)],
                                      tf.constant(signature, tf.uint8)))

    is_jpeg = equal(head, 0, (0xFF, 0xD8, 0xFF))
    is_png = equal(head, 0, (0x89, 0x50, 0x4E, 0x47))
    is_bmp = equal(head, 0, (0x42, 0x4D))
    is_gif = equal(head, 0, (0x47, 0x49, 0x46, 0x38))
    is_webp = equal(head, 0, (0x52, 0x49, 0x46, 0x46)) & equal(head, 8, (0x57, 0x45, 0x42, 0x50))
    known = tf.debugging.Assert(
        is_jpeg | is_png | is_bmp | is_gif | is_webp,
        [f"{what} file is not a JPEG/PNG/BMP/GIF/WebP image (empty, corrupt or another "
         "format):", path])
    jpeg_end = tf.reduce_any(tf.equal(tail[:-1], 0xFF) & tf.equal(tail[1:], 0xD9))
    png_end = equal(tail[tf.size(tail) - 12:], 4, (0x49, 0x45, 0x4E, 0x44))  # "IEND"
    complete = (~is_jpeg | jpeg_end) & (~is_png | png_end)
    whole = tf.debugging.Assert(complete, [f"{what} file is truncated (no end marker):", path])
    # The decoder must run after the checks, or its own path-less error could come first.
    with tf.control_dependencies([known, whole]):
        return tf.identity(data)


def _assert_same_size(image, label, image_path, label_path):
    tf.debugging.Assert(
        tf.reduce_all(tf.equal(tf.shape(image)[:2], tf.shape(label)[:2])),
        ["image size differs from label size (HxW): image", image_path, tf.shape(image)[:2],
         "label", label_path, tf.shape(label)[:2]],
        summarize=4,
    )


def _to_train_ids(raw, info, label_path, validate):
    """Raw ids -> uint8 train ids via `info.lut`; invalid raw ids raise (or become ignore)."""
    raw = tf.cast(raw, tf.int32)
    mapped = tf.gather(tf.constant(info.lut), tf.clip_by_value(raw, 0, 255))
    bad = (mapped < 0) | (raw < 0) | (raw > 255)
    if validate:
        tf.debugging.Assert(
            tf.logical_not(tf.reduce_any(bad)),
            [f"label values outside the {info.num_classes} classes of {info.name!r} that are "
             f"not the ignore label {IGNORE_LABEL} in label", label_path, "bad raw values:",
             tf.unique(tf.boolean_mask(raw, bad))[0]],
            summarize=16,
        )
    mapped = tf.where(bad, IGNORE_LABEL, mapped)
    return tf.cast(mapped, tf.uint8)


def _decoded(kind, payload, info, validate, shuffle_paths_seed=None):
    """Dataset of `(image uint8, mask uint8 train ids, path)` before any augmentation."""
    if kind == "pairs":
        images, labels = zip(*payload)
        ds = tf.data.Dataset.from_tensor_slices((list(images), list(labels)))
        if shuffle_paths_seed is not None:
            ds = ds.shuffle(len(payload), seed=shuffle_paths_seed, reshuffle_each_iteration=True)

        def load(image_path, label_path):
            if info.label_colors is not None:
                image, rgb = load_color_pair(image_path, label_path)
                return image, colors_to_train_ids(rgb, info, label_path, validate), image_path
            image, raw = load_pair(image_path, label_path)
            return image, _to_train_ids(raw, info, label_path, validate), image_path

        return ds.map(load, num_parallel_calls=AUTOTUNE)

    def prepare(index, element):
        image, raw = element[0], element[1]
        if raw.shape.rank == 3:
            raw = raw[..., 0]
        name = tf.strings.join(["<element ", tf.strings.as_string(index), ">"])
        image = tf.cast(image, tf.uint8)
        _assert_same_size(image, raw, name, name)
        return image, _to_train_ids(raw, info, name, validate), name

    return payload.enumerate().map(prepare, num_parallel_calls=AUTOTUNE)


def _apply_cache(ds, cache):
    if cache:
        ds = ds.cache("" if cache is True else str(cache))
    return ds


def _options(ds, deterministic=True):
    options = tf.data.Options()
    options.deterministic = deterministic
    return ds.with_options(options)


def make_dataset(
    source,
    info=None,
    *,
    training=True,
    crop_size=(512, 512),
    batch_size=8,
    scale_range=(0.5, 2.0),
    scale_step=0.1,
    flip=True,
    photometric=False,
    normalization="imagenet",
    seed=None,
    cache=False,
    shuffle=None,
    shuffle_buffer=256,
    drop_remainder=None,
    repeat=False,
    validate=True,
    prescan=False,
):
    """Training (or, with `training=False`, evaluation) pipeline.

    Args:
        source: `DataSource` / `(pairs, info)` / `(tf.data.Dataset, info)` (module docstring).
        info: the `DatasetInfo`, when `source` is a bare list or dataset.
        training: `True`: augmented fixed-size crops. `False`: `make_eval_dataset`.
        crop_size: `(h, w)` of training crops (smaller images are padded, as the authors).
        batch_size: examples per batch.
        scale_range: random scale `(lo, hi)`, or `None` to keep the size.
        scale_step: 0.1 (the authors' discrete factors) or `None` (continuous).
        flip: random horizontal flips.
        photometric: `False`, `True` (`augment.DEFAULT_PHOTOMETRIC`) or a dict overriding it.
        normalization: `"imagenet"`, `"bgr_mean"` or `None` (see `normalization.py`).
        seed: int; same seed -> identical batches. `None` draws one at random.
        cache: `False`, `True` (in memory) or a file path: caches decoded, id-mapped examples
            (before augmentation, so augmentation still differs per epoch).
        shuffle: shuffle examples (default: `training`).
        shuffle_buffer: buffer size when shuffling cached / dataset examples (file lists are
            shuffled in full).
        drop_remainder: drop the last partial batch (default: `training`).
        repeat: `False`, `True` (forever) or a number of epochs.
        validate: check label values in the pipeline (invalid raw ids raise). With `False`
            they silently become the ignore label.
        prescan: check every pair with PIL before building (`readers.check_pairs`): clear
            Python errors up front at the cost of one full read.

    Returns:
        `tf.data.Dataset` of `(images float32 (B, h, w, 3), masks int32 (B, h, w))`.
    """
    if not training:
        return make_eval_dataset(
            source, info, batch_size=batch_size, normalization=normalization, cache=cache,
            validate=validate, prescan=prescan,
        )
    normalization = _check_mode(normalization)
    if crop_size is None or len(crop_size) != 2 or min(crop_size) < 1:
        raise ValueError(f"make_dataset(training=True) needs crop_size=(h, w), got {crop_size}")
    crop_size = (int(crop_size[0]), int(crop_size[1]))
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    kind, payload, info = _resolve_source(source, info)
    if prescan and kind == "pairs":
        check_pairs(payload, info)
    if seed is None:
        seed = int(np.random.SeedSequence().generate_state(1)[0] >> 2)
    seed = int(seed)
    shuffle = training if shuffle is None else shuffle
    drop_remainder = training if drop_remainder is None else drop_remainder
    photometric_params = None
    if photometric:
        photometric_params = {} if photometric is True else dict(photometric)

    shuffle_paths = shuffle and kind == "pairs" and not cache
    ds = _decoded(kind, payload, info, validate, shuffle_paths_seed=seed if shuffle_paths else None)
    ds = ds.map(lambda image, mask, path: (image, mask))
    ds = _apply_cache(ds, cache)
    if shuffle and not shuffle_paths:
        ds = ds.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
    if repeat:
        ds = ds.repeat(None if repeat is True else int(repeat))

    # One [2] int64 seed per element from a seeded random stream that, like the shuffle,
    # differs on each new iteration (epoch) but is identical for a freshly built pipeline.
    seeds = tf.data.Dataset.random(seed=seed + 1, rerandomize_each_iteration=True).batch(2)

    def augment_one(element, element_seed):
        image, mask = element
        s_photo, s_geom = tf.unstack(tf.random.experimental.stateless_split(element_seed, 2))
        image = tf.cast(image, tf.float32)
        if photometric_params is not None:
            image = aug.photometric_jitter(image, s_photo, photometric_params)
        image = normalize(image, normalization)
        image, mask = aug.augment_pair(
            image, tf.cast(mask, tf.int32), s_geom, crop_size, scale_range=scale_range,
            scale_step=scale_step, flip=flip, image_pad_value=0.0, ignore_label=IGNORE_LABEL,
        )
        return image, mask

    ds = tf.data.Dataset.zip((ds, seeds)).map(augment_one, num_parallel_calls=AUTOTUNE)
    ds = ds.batch(batch_size, drop_remainder=drop_remainder)
    ds = ds.prefetch(AUTOTUNE)
    return _options(ds, deterministic=True)


def make_eval_dataset(
    source,
    info=None,
    *,
    batch_size=1,
    normalization="imagenet",
    cache=False,
    validate=True,
    prescan=False,
    include_paths=False,
):
    """Evaluation pipeline: full images, no augmentation, source order.

    With `batch_size > 1`, images of different sizes are padded bottom / right to the largest
    of the batch (image with 0 in normalised space, mask with 255, so padding is ignored).

    Returns:
        `tf.data.Dataset` of `(images float32 (B, H, W, 3), masks int32 (B, H, W))`, plus the
        image paths `(B,)` string when `include_paths` (`"<element i>"` for dataset sources).
    """
    normalization = _check_mode(normalization)
    kind, payload, info = _resolve_source(source, info)
    if prescan and kind == "pairs":
        check_pairs(payload, info)
    ds = _decoded(kind, payload, info, validate)
    ds = _apply_cache(ds, cache)

    def finish(image, mask, path):
        return normalize(image, normalization), tf.cast(mask, tf.int32), path

    ds = ds.map(finish, num_parallel_calls=AUTOTUNE)
    if not include_paths:
        ds = ds.map(lambda image, mask, path: (image, mask))
    if batch_size == 1:
        ds = ds.batch(1)
    else:
        values = (tf.constant(0.0), tf.constant(IGNORE_LABEL, tf.int32))
        if include_paths:
            values += (tf.constant(""),)
        ds = ds.padded_batch(batch_size, padding_values=values)
    ds = ds.prefetch(AUTOTUNE)
    return _options(ds, deterministic=True)
