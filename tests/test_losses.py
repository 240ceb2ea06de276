"""Tests of keras_gald.losses against NumPy references.

Tests marked `jax` are backend-neutral and also run under `KERAS_BACKEND=jax`
(`KERAS_BACKEND=jax python -m pytest -m jax tests/test_losses.py`); the others
use TensorFlow-only machinery (`tf.distribute`, dynamic-shape graphs).
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from keras_gald.losses import OHEMCrossEntropy, SegmentationCrossEntropy  # noqa: E402
from keras_gald.ops import resize_bilinear  # noqa: E402

IGNORE = 255
BACKEND = keras.backend.backend()
tf_only = pytest.mark.skipif(BACKEND != "tensorflow", reason="TensorFlow-only machinery")


# ---------------------------------------------------------------------------
# Backend helpers: compiled functions and gradients on TF and JAX
# ---------------------------------------------------------------------------
def jit(fn):
    """`fn` compiled by the backend's XLA path (tf.function(jit_compile) / jax.jit)."""
    if BACKEND == "tensorflow":
        import tensorflow as tf

        return tf.function(fn, jit_compile=True)
    if BACKEND == "jax":
        import jax

        return jax.jit(fn)
    pytest.skip(f"no compiled path for the {BACKEND} backend in these tests")


def value_and_grad(fn, x):
    """`(fn(x), d fn / d x)` with the backend's autodiff; the gradient keeps x's dtype."""
    if BACKEND == "tensorflow":
        import tensorflow as tf

        x = tf.convert_to_tensor(x)
        with tf.GradientTape() as tape:
            tape.watch(x)
            value = fn(x)
        return value, tape.gradient(value, x)
    if BACKEND == "jax":
        import jax

        return jax.value_and_grad(fn)(x)
    pytest.skip(f"no gradient helper for the {BACKEND} backend in these tests")


def _resize_runs_compiled():
    """Whether keras_gald.ops.resize_bilinear traces on this backend (TF: always;
    JAX: once ops/resize.py has its JAX path)."""
    if BACKEND == "tensorflow":
        return True
    try:
        jit(lambda x: resize_bilinear(x, (4, 4)))(np.zeros((1, 2, 2, 1), np.float32))
        return True
    except Exception:  # a TF-only kernel fails on JAX tracers
        return False


# Low-resolution logits need the resize kernel; these cases join the JAX pass by
# themselves once keras_gald.ops.resize runs there.
needs_resize = pytest.mark.skipif(
    not _resize_runs_compiled(), reason=f"resize_bilinear has no {BACKEND} path yet"
)


# ---------------------------------------------------------------------------
# NumPy references
# ---------------------------------------------------------------------------
def np_resize_bilinear(x, out_h, out_w):
    """Half-pixel-centre bilinear resize of NHWC (PyTorch align_corners=False)."""
    x = np.asarray(x, np.float64)
    _, in_h, in_w, _ = x.shape

    def axis(out_n, in_n):
        src = (np.arange(out_n) + 0.5) * (in_n / out_n) - 0.5
        src = np.clip(src, 0, in_n - 1)
        lo = np.floor(src).astype(int)
        hi = np.minimum(lo + 1, in_n - 1)
        return lo, hi, src - lo

    y0, y1, fy = axis(out_h, in_h)
    x0, x1, fx = axis(out_w, in_w)
    top = x[:, y0][:, :, x0] * (1 - fx)[None, None, :, None] + x[:, y0][:, :, x1] * fx[None, None, :, None]
    bot = x[:, y1][:, :, x0] * (1 - fx)[None, None, :, None] + x[:, y1][:, :, x1] * fx[None, None, :, None]
    return top * (1 - fy)[None, :, None, None] + bot * fy[None, :, None, None]


def np_pixel_terms(labels, logits, ignore_index=IGNORE, class_weights=None):
    """(nll, weight, valid, gt_prob) at label resolution, float64."""
    labels = np.asarray(labels)
    n, h, w = labels.shape
    logits = np.asarray(logits, np.float64)
    if logits.shape[1:3] != (h, w):
        logits = np_resize_bilinear(logits, h, w)
    c = logits.shape[-1]
    shifted = logits - logits.max(-1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
    valid = (labels != ignore_index) & (labels >= 0) & (labels < c)
    safe = np.where(valid, labels, 0)
    nll = -np.take_along_axis(log_probs, safe[..., None], axis=-1)[..., 0]
    weight = np.ones_like(nll) if class_weights is None else np.asarray(class_weights, np.float64)[safe]
    weight = np.where(valid, weight, 0.0)
    return np.where(valid, nll, 0.0), weight, valid, np.exp(-nll)


def np_ce(labels, logits, class_weights=None, ignore_index=IGNORE):
    nll, weight, _, _ = np_pixel_terms(labels, logits, ignore_index, class_weights)
    den = weight.sum()
    return 0.0 if den == 0 else float((weight * nll).sum() / den)


def np_ohem_kept(gt_prob, valid, thresh, min_kept):
    """The authors' selection, transcribed from their NumPy OHEM (argsort form)."""
    kept = valid.copy()
    num_valid = int(valid.sum())
    if min_kept > num_valid or num_valid == 0:
        return kept
    pred = gt_prob[valid]
    threshold = thresh
    if min_kept > 0:
        index = pred.argsort()
        threshold_index = index[min(len(index), min_kept) - 1]
        if pred[threshold_index] > thresh:
            threshold = pred[threshold_index]
    kept[valid] = pred <= threshold
    return kept


def np_ohem_sums(labels, logits, thresh, min_kept, class_weights=None):
    nll, weight, valid, prob = np_pixel_terms(labels, logits, IGNORE, class_weights)
    kept = np_ohem_kept(prob, valid, thresh, min_kept)
    weight = np.where(kept, weight, 0.0)
    return float((weight * nll).sum()), float(weight.sum()), kept


def np_ohem(labels, logits, thresh, min_kept, class_weights=None):
    num, den, _ = np_ohem_sums(labels, logits, thresh, min_kept, class_weights)
    return 0.0 if den == 0 else num / den


def make_batch(seed, n=2, h=8, w=8, lh=None, lw=None, c=4, ignore_frac=0.2):
    """Labels (n, h, w) with ~ignore_frac ignored pixels and logits (n, lh or h, lw or w, c).

    The JAX tests share the default shape: eager JAX compiles each op once per shape.
    """
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, c, (n, h, w)).astype(np.int32)
    labels[rng.random((n, h, w)) < ignore_frac] = IGNORE
    logits = (2.0 * rng.normal(size=(n, lh or h, lw or w, c))).astype(np.float32)
    return labels, logits


# ---------------------------------------------------------------------------
# Cross-entropy
# ---------------------------------------------------------------------------
def test_reference_resize_matches_half_pixel_convention():
    # Guards the NumPy reference itself: 2 -> 4 pixels with half-pixel centres
    # samples at -0.25, 0.25, 0.75, 1.25 (clamped): [a, .75a+.25b, .25a+.75b, b].
    x = np.array([0.0, 4.0]).reshape(1, 1, 2, 1)
    np.testing.assert_allclose(np_resize_bilinear(x, 1, 4)[0, 0, :, 0], [0, 1, 3, 4])


def test_ce_same_resolution_matches_numpy():
    labels, logits = make_batch(0)
    loss = SegmentationCrossEntropy()
    np.testing.assert_allclose(float(loss(labels, logits)), np_ce(labels, logits), rtol=1e-5)


@needs_resize
@pytest.mark.jax
def test_ce_uniform_logits_is_log_c():
    labels = np.zeros((2, 64, 64), np.int32)
    logits = np.zeros((2, 8, 8, 19), np.float32)
    np.testing.assert_allclose(float(SegmentationCrossEntropy()(labels, logits)), np.log(19), rtol=1e-5)


@pytest.mark.parametrize(
    "low_res", [pytest.param(False, marks=pytest.mark.jax), pytest.param(True, marks=needs_resize)]
)
def test_ce_class_weights(low_res):
    if low_res:
        labels, logits = make_batch(1, h=24, w=32, lh=6, lw=8)
    else:
        labels, logits = make_batch(1)
    weights = [0.5, 2.0, 1.0, 3.0]
    loss = SegmentationCrossEntropy(class_weights=weights)
    expected = np_ce(labels, logits, class_weights=weights)
    np.testing.assert_allclose(float(loss(labels, logits)), expected, rtol=1e-5)
    # The weighted mean differs from the unweighted one (the weights matter).
    assert abs(expected - np_ce(labels, logits)) > 1e-3


@pytest.mark.jax
def test_ce_ignores_ignore_pixels_whatever_the_logits():
    labels, logits = make_batch(2)
    other = logits.copy()
    other[labels == IGNORE] = 1e3 * np.random.default_rng(0).normal(size=(4,))
    loss = SegmentationCrossEntropy()
    np.testing.assert_allclose(float(loss(labels, logits)), float(loss(labels, other)), rtol=1e-6)
    # ...and the mean is over valid pixels only, not over all pixels.
    nll, _, valid, _ = np_pixel_terms(labels, logits)
    np.testing.assert_allclose(float(loss(labels, logits)), nll[valid].mean(), rtol=1e-5)
    # Labels outside [0, C) other than ignore_index are not counted either.
    labels_out = labels.copy()
    labels_out[labels == IGNORE] = 7
    np.testing.assert_allclose(float(loss(labels_out, other)), nll[valid].mean(), rtol=1e-5)


@pytest.mark.jax
def test_ce_label_channel_axis_and_float_labels():
    labels, logits = make_batch(3)
    loss = SegmentationCrossEntropy()
    ref = float(loss(labels, logits))
    np.testing.assert_allclose(float(loss(labels[..., None], logits)), ref, rtol=1e-7)
    np.testing.assert_allclose(float(loss(labels.astype(np.float32), logits)), ref, rtol=1e-7)


@pytest.mark.jax
def test_ce_all_ignored_is_zero_not_nan():
    _, logits = make_batch(3)
    labels = np.full(logits.shape[:3], IGNORE, np.int32)
    for loss in (SegmentationCrossEntropy(), OHEMCrossEntropy(min_kept=3)):
        assert float(loss(labels, logits)) == 0.0


@pytest.mark.jax
def test_ce_sample_weight_and_reductions():
    labels, logits = make_batch(4)
    loss = SegmentationCrossEntropy()
    nll, weight, _, _ = np_pixel_terms(labels, logits)
    sw = np.array([0.0, 3.0], np.float32)  # image 0 does not count
    w = weight * sw[:, None, None]
    np.testing.assert_allclose(
        float(loss(labels, logits, sample_weight=sw)), (w * nll).sum() / w.sum(), rtol=1e-5
    )
    # A per-pixel weight map (N, H, W, 1) counts pixel by pixel.
    pixel_sw = np.random.default_rng(1).random(labels.shape).astype(np.float32)
    pixel_sw[pixel_sw < 0.3] = 0.0
    w = weight * pixel_sw
    np.testing.assert_allclose(
        float(loss(labels, logits, sample_weight=pixel_sw[..., None])),
        (w * nll).sum() / w.sum(),
        rtol=1e-5,
    )
    per_pixel = SegmentationCrossEntropy(reduction=None)(labels, logits)
    assert tuple(per_pixel.shape) == labels.shape
    np.testing.assert_allclose(np.asarray(per_pixel), nll, rtol=1e-5, atol=1e-6)
    total = SegmentationCrossEntropy(reduction="sum")(labels, logits)
    np.testing.assert_allclose(float(total), nll.sum(), rtol=1e-5)


@pytest.mark.jax
def test_ce_rejects_probabilities_and_bad_weights():
    with pytest.raises(ValueError):
        SegmentationCrossEntropy(from_logits=False)
    labels, logits = make_batch(5)
    with pytest.raises(ValueError, match="class_weights has 2 entries for 4 classes"):
        SegmentationCrossEntropy(class_weights=[1.0, 2.0])(labels, logits)


# ---------------------------------------------------------------------------
# OHEM
# ---------------------------------------------------------------------------
def _kept_mask(loss, labels, logits):
    """Pixels the loss counts: its per-pixel map is > 0 exactly there."""
    config = loss.get_config()
    config["reduction"] = None
    per_pixel = np.asarray(type(loss).from_config(config)(labels, logits))
    return per_pixel > 0


@pytest.mark.jax
def test_ohem_hand_built_probabilities():
    # 10 valid pixels labelled 0 in a batch shaped like make_batch's (the other
    # 118 pixels ignored); logits (log(p/(1-p)), 0, -40, -40) give the gt
    # probability p (to 1e-17): p = 0.05, 0.15, ..., 0.95.
    probs = np.arange(0.05, 1.0, 0.1)
    labels = np.full((2, 8, 8), IGNORE, np.int32)
    logits = np.full((2, 8, 8, 4), -40.0, np.float32)
    logits[..., 1] = 0.0
    cols = [2, 4, 5, 9, 17, 30, 64, 65, 100, 127]  # spread over both images
    labels.flat[cols] = 0
    logits.reshape(-1, 4)[cols, 0] = np.log(probs / (1 - probs))
    nll = -np.log(probs)
    # thresh 0.7 dominates (3rd smallest = 0.25 < 0.7): keep p <= 0.7 -> 7 pixels.
    loss = OHEMCrossEntropy(thresh=0.7, min_kept=3)
    np.testing.assert_allclose(float(loss(labels, logits)), nll[:7].mean(), rtol=1e-5)
    # min_kept 9 dominates (9th smallest = 0.85 > 0.7): keep 9 pixels.
    loss = OHEMCrossEntropy(thresh=0.7, min_kept=9)
    np.testing.assert_allclose(float(loss(labels, logits)), nll[:9].mean(), rtol=1e-5)
    # min_kept 10 == 10 valid pixels: the 10th smallest (0.95) is the threshold.
    loss = OHEMCrossEntropy(thresh=0.3, min_kept=10)
    np.testing.assert_allclose(float(loss(labels, logits)), nll.mean(), rtol=1e-5)
    # min_kept 11 > 10 valid pixels (the 11th "smallest" is an ignored pixel's
    # sentinel): every valid pixel is kept, not only p <= thresh.
    loss = OHEMCrossEntropy(thresh=0.3, min_kept=11)
    np.testing.assert_allclose(float(loss(labels, logits)), nll.mean(), rtol=1e-5)
    # min_kept 200 > 128 pixels in the batch (k clipped to the batch): all valid kept.
    loss = OHEMCrossEntropy(thresh=0.3, min_kept=200)
    np.testing.assert_allclose(float(loss(labels, logits)), nll.mean(), rtol=1e-5)
    # min_kept 0: thresh alone.
    loss = OHEMCrossEntropy(thresh=0.4, min_kept=0)
    np.testing.assert_allclose(float(loss(labels, logits)), nll[:4].mean(), rtol=1e-5)


@pytest.mark.jax
def test_ohem_min_kept_dominates_keeps_exactly_the_hardest():
    labels, logits = make_batch(10)
    thresh, min_kept = 0.005, 37
    _, _, valid, prob = np_pixel_terms(labels, logits)
    # The threshold really is the 37th smallest gt probability, not thresh.
    assert np.sort(prob[valid])[min_kept - 1] > thresh
    kept = _kept_mask(OHEMCrossEntropy(thresh=thresh, min_kept=min_kept), labels, logits)
    assert kept.sum() == min_kept
    hardest = np.zeros_like(valid)
    order = np.argsort(np.where(valid, prob, np.inf), axis=None)[:min_kept]
    hardest.ravel()[order] = True
    np.testing.assert_array_equal(kept, hardest)
    loss = OHEMCrossEntropy(thresh=thresh, min_kept=min_kept)
    np.testing.assert_allclose(
        float(loss(labels, logits)), np_ohem(labels, logits, thresh, min_kept), rtol=1e-5
    )


@pytest.mark.jax
def test_ohem_thresh_dominates():
    labels, logits = make_batch(11)
    thresh, min_kept = 0.3, 5
    _, _, valid, prob = np_pixel_terms(labels, logits)
    expected = valid & (prob <= thresh)
    assert expected.sum() > min_kept  # the threshold, not min_kept, decides
    kept = _kept_mask(OHEMCrossEntropy(thresh=thresh, min_kept=min_kept), labels, logits)
    np.testing.assert_array_equal(kept, expected)
    np.testing.assert_array_equal(kept, np_ohem_kept(prob, valid, thresh, min_kept))


@pytest.mark.jax
def test_ohem_zero_sample_weight_pixels_are_not_candidates():
    # A pixel with sample weight 0 is not a valid pixel for the selection
    # either: the k-th smallest probability is taken among the others.
    labels, logits = make_batch(20)
    thresh, min_kept = 0.05, 30
    loss = OHEMCrossEntropy(thresh=thresh, min_kept=min_kept)
    masked = labels.copy()
    masked[0] = IGNORE
    expected = np_ohem(masked, logits, thresh, min_kept)
    assert abs(expected - np_ohem(labels, logits, thresh, min_kept)) > 1e-3
    sw = np.array([0.0, 1.0], np.float32)
    np.testing.assert_allclose(float(loss(labels, logits, sample_weight=sw)), expected, rtol=1e-5)


@pytest.mark.parametrize(
    "thresh,min_kept,weights,low_res",
    [
        pytest.param(0.7, 40, None, False, marks=pytest.mark.jax),
        pytest.param(0.7, 40, [1.0, 0.5, 2.0, 1.5], True, marks=needs_resize),
        pytest.param(0.2, 1000, None, True, marks=needs_resize),
    ],
)
def test_ohem_matches_numpy(thresh, min_kept, weights, low_res):
    labels, logits = make_batch(12, h=16, w=16, lh=8, lw=8) if low_res else make_batch(12)
    loss = OHEMCrossEntropy(thresh=thresh, min_kept=min_kept, class_weights=weights)
    np.testing.assert_allclose(
        float(loss(labels, logits)),
        np_ohem(labels, logits, thresh, min_kept, weights),
        rtol=1e-5,
    )


@pytest.mark.jax
def test_ohem_compiled_gradient_ignores_the_selection():
    # d loss / d logits = (softmax - onehot) * w / sum(w) on kept pixels, 0 elsewhere:
    # no gradient flows through the threshold. Value and gradient are taken in
    # the backend's XLA path (tf.function(jit_compile=True) / jax.jit), where
    # top_k's k must be static.
    labels, logits = make_batch(13)
    weights = [1.0, 2.0, 0.5, 1.0]
    loss = OHEMCrossEntropy(thresh=0.6, min_kept=20, class_weights=weights)
    value, grad = jit(lambda y, x: value_and_grad(lambda z: loss(y, z), x))(labels, logits)
    np.testing.assert_allclose(float(value), np_ohem(labels, logits, 0.6, 20, weights), rtol=1e-5)
    np.testing.assert_allclose(float(value), float(loss(labels, logits)), rtol=1e-6)
    grad = np.asarray(grad)
    _, weight, kept = np_ohem_sums(labels, logits, 0.6, 20, weights)
    assert 20 <= kept.sum() < (labels != IGNORE).sum()  # a real selection
    nll, w, valid, _ = np_pixel_terms(labels, logits, class_weights=weights)
    w = np.where(kept, w, 0.0)
    soft = np.exp(logits - logits.max(-1, keepdims=True))
    soft /= soft.sum(-1, keepdims=True)
    onehot = np.eye(4)[np.where(valid, labels, 0)]
    expected = (soft - onehot) * (w / w.sum())[..., None]
    np.testing.assert_allclose(grad, expected, rtol=1e-4, atol=1e-7)


@needs_resize
@pytest.mark.parametrize(
    "make_loss",
    [
        lambda: SegmentationCrossEntropy(class_weights=[1.0, 2.0, 0.5, 1.0]),
        lambda: OHEMCrossEntropy(thresh=0.7, min_kept=50),
        lambda: OHEMCrossEntropy(thresh=0.05, min_kept=100000),
    ],
)
def test_xla_equals_eager_and_gradients_finite(make_loss):
    labels, logits = make_batch(14, h=16, w=16, lh=8, lw=8)
    loss = make_loss()
    eager = float(loss(labels, logits))
    value, grad = jit(lambda y, x: value_and_grad(lambda z: loss(y, z), x))(labels, logits)
    np.testing.assert_allclose(float(value), eager, rtol=1e-5)
    assert np.isfinite(np.asarray(grad)).all()
    assert np.abs(np.asarray(grad)).sum() > 0


@tf_only
def test_dynamic_shapes_graph_mode():
    import tensorflow as tf

    labels, logits = make_batch(15, h=16, w=16, lh=8, lw=8)
    loss = OHEMCrossEntropy(thresh=0.7, min_kept=30)
    fn = tf.function(
        lambda y, x: loss(y, x),
        input_signature=[
            tf.TensorSpec([None, None, None], tf.int32),
            tf.TensorSpec([None, None, None, 4], tf.float32),
        ],
    )
    np.testing.assert_allclose(
        float(fn(labels, logits)), np_ohem(labels, logits, 0.7, 30), rtol=1e-5
    )


@pytest.mark.parametrize(
    "loss_cls,low_res",
    [
        pytest.param(SegmentationCrossEntropy, True, marks=needs_resize),
        pytest.param(OHEMCrossEntropy, True, marks=needs_resize),
        pytest.param(OHEMCrossEntropy, False, marks=pytest.mark.jax),
    ],
)
def test_bfloat16_logits_computed_in_float32(loss_cls, low_res):
    labels, logits = make_batch(16, h=16, w=16, lh=8, lw=8) if low_res else make_batch(16)
    bf16 = keras.ops.cast(logits, "bfloat16")
    loss = loss_cls()
    value = loss(labels, bf16)
    assert keras.backend.standardize_dtype(value.dtype) == "float32"
    rounded = np.asarray(keras.ops.cast(bf16, "float32"))
    np.testing.assert_allclose(float(value), float(loss(labels, rounded)), rtol=1e-6)
    # ...and it is close to the float32 loss (bf16 rounding only).
    np.testing.assert_allclose(float(value), float(loss(labels, logits)), rtol=2e-2)
    _, grad = jit(lambda y, x: value_and_grad(lambda z: loss(y, z), x))(labels, bf16)
    assert keras.backend.standardize_dtype(grad.dtype) == "bfloat16"
    assert np.isfinite(np.asarray(keras.ops.cast(grad, "float32"))).all()


@pytest.mark.jax
def test_serialization_round_trip(tmp_path):
    # distributed_mean="global" only exists on TensorFlow (see test_global_mean_*).
    mean = "global" if BACKEND == "tensorflow" else "replica"
    losses = [
        SegmentationCrossEntropy(ignore_index=7, class_weights=[1.0, 2.0, 3.0, 0.5], align_corners=True),
        OHEMCrossEntropy(thresh=0.6, min_kept=12, ignore_index=7, distributed_mean=mean),
    ]
    labels, logits = make_batch(17)
    labels[labels == IGNORE] = 7
    for loss in losses:
        config = loss.get_config()
        clone = type(loss).from_config(config)
        assert clone.get_config() == config
        revived = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(loss))
        assert type(revived) is type(loss) and revived.get_config() == config
        np.testing.assert_allclose(float(revived(labels, logits)), float(loss(labels, logits)))

    inputs = keras.Input((None, None, 3))
    model = keras.Model(inputs, keras.layers.Identity()(inputs))
    model.compile(loss=losses[1])
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert isinstance(loaded.loss, OHEMCrossEntropy)
    assert loaded.loss.get_config() == losses[1].get_config()


@pytest.mark.jax
def test_global_mean_is_tensorflow_only():
    labels, logits = make_batch(18)
    if BACKEND == "tensorflow":
        # Outside a replica context "global" is the plain mean.
        value = float(SegmentationCrossEntropy(distributed_mean="global")(labels, logits))
        np.testing.assert_allclose(value, np_ce(labels, logits), rtol=1e-5)
    else:
        with pytest.raises(ValueError, match="needs the TensorFlow backend"):
            OHEMCrossEntropy(distributed_mean="global")


@pytest.mark.jax
def test_fit_step_with_ohem_loss_and_mean_iou_metric():
    # Keras' own compiled train step (jax.jit on JAX, tf.function on TF) traces
    # the loss and the metric; the logged values are those of the weights the
    # step started from.
    from keras_gald.metrics import MeanIoU, confusion_matrix_np, iou_from_confusion

    labels, _ = make_batch(19)
    images = np.random.default_rng(19).normal(size=(2, 8, 8, 3)).astype(np.float32)
    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 3))
    model = keras.Model(inputs, keras.layers.Conv2D(4, 1)(inputs))
    logits = np.asarray(model(images))
    model.compile(
        optimizer=keras.optimizers.SGD(0.1),
        loss=OHEMCrossEntropy(thresh=0.7, min_kept=20),
        metrics=[MeanIoU(num_classes=4)],
    )
    history = model.fit(images, labels, batch_size=2, epochs=1, verbose=0)
    np.testing.assert_allclose(history.history["loss"][0], np_ohem(labels, logits, 0.7, 20), rtol=1e-5)
    expected_miou = iou_from_confusion(confusion_matrix_np(labels, logits.argmax(-1), 4))[1]
    np.testing.assert_allclose(history.history["mean_iou"][0], expected_miou, rtol=1e-5)
    # The step really trained: the logits moved.
    assert np.abs(np.asarray(model(images)) - logits).max() > 1e-4


@pytest.mark.jax
def test_invalid_arguments():
    with pytest.raises(ValueError):
        OHEMCrossEntropy(min_kept=-1)
    with pytest.raises(ValueError):
        SegmentationCrossEntropy(distributed_mean="sum")
    with pytest.raises(ValueError):
        OHEMCrossEntropy(reduction="max")
