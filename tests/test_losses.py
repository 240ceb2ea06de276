"""Tests of keras_gald.losses against NumPy references."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

from keras_gald.losses import OHEMCrossEntropy, SegmentationCrossEntropy  # noqa: E402

IGNORE = 255


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


def make_batch(seed, n=2, h=12, w=16, lh=None, lw=None, c=5, ignore_frac=0.2):
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


def test_ce_uniform_logits_is_log_c():
    labels = np.zeros((2, 64, 64), np.int32)
    logits = np.zeros((2, 8, 8, 19), np.float32)
    np.testing.assert_allclose(float(SegmentationCrossEntropy()(labels, logits)), np.log(19), rtol=1e-5)


def test_ce_class_weights_and_low_resolution_logits():
    labels, logits = make_batch(1, h=24, w=32, lh=6, lw=8, c=4)
    weights = [0.5, 2.0, 1.0, 3.0]
    loss = SegmentationCrossEntropy(class_weights=weights)
    expected = np_ce(labels, logits, class_weights=weights)
    np.testing.assert_allclose(float(loss(labels, logits)), expected, rtol=1e-5)
    # The weighted mean differs from the unweighted one (the weights matter).
    assert abs(expected - np_ce(labels, logits)) > 1e-3


def test_ce_ignores_ignore_pixels_whatever_the_logits():
    labels, logits = make_batch(2, c=3)
    other = logits.copy()
    other[labels == IGNORE] = 1e3 * np.random.default_rng(0).normal(size=(3,))
    loss = SegmentationCrossEntropy()
    np.testing.assert_allclose(float(loss(labels, logits)), float(loss(labels, other)), rtol=1e-6)
    # ...and the mean is over valid pixels only, not over all pixels.
    nll, _, valid, _ = np_pixel_terms(labels, logits)
    np.testing.assert_allclose(float(loss(labels, logits)), nll[valid].mean(), rtol=1e-5)


def test_ce_label_channel_axis_and_float_labels():
    labels, logits = make_batch(3)
    loss = SegmentationCrossEntropy()
    ref = float(loss(labels, logits))
    np.testing.assert_allclose(float(loss(labels[..., None], logits)), ref, rtol=1e-7)
    np.testing.assert_allclose(float(loss(labels.astype(np.float32), logits)), ref, rtol=1e-7)


def test_ce_all_ignored_is_zero_not_nan():
    labels = np.full((1, 4, 4), IGNORE, np.int32)
    logits = np.random.default_rng(0).normal(size=(1, 4, 4, 3)).astype(np.float32)
    for loss in (SegmentationCrossEntropy(), OHEMCrossEntropy(min_kept=3)):
        assert float(loss(labels, logits)) == 0.0


def test_ce_sample_weight_and_reductions():
    labels, logits = make_batch(4, n=3, c=4)
    loss = SegmentationCrossEntropy()
    nll, weight, _, _ = np_pixel_terms(labels, logits)
    sw = np.array([1.0, 0.0, 3.0], np.float32)
    w = weight * sw[:, None, None]
    np.testing.assert_allclose(
        float(loss(labels, logits, sample_weight=sw)), (w * nll).sum() / w.sum(), rtol=1e-5
    )
    per_pixel = SegmentationCrossEntropy(reduction=None)(labels, logits)
    assert per_pixel.shape == labels.shape
    np.testing.assert_allclose(np.asarray(per_pixel), nll, rtol=1e-5, atol=1e-6)
    total = SegmentationCrossEntropy(reduction="sum")(labels, logits)
    np.testing.assert_allclose(float(total), nll.sum(), rtol=1e-5)


def test_ce_rejects_probabilities_and_bad_weights():
    with pytest.raises(ValueError):
        SegmentationCrossEntropy(from_logits=False)
    labels, logits = make_batch(5, c=3)
    with pytest.raises(ValueError):
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


def test_ohem_hand_built_probabilities():
    # One row of 12 pixels, 2 classes, label 0 everywhere except two ignored
    # pixels; logits (log(p/(1-p)), 0) give the gt probability p exactly:
    # p = 0.05, 0.15, ..., 0.95 on the 10 valid pixels.
    probs = np.arange(0.05, 1.0, 0.1)
    labels = np.zeros((1, 1, 12), np.int32)
    labels[0, 0, [3, 8]] = IGNORE
    logits = np.zeros((1, 1, 12, 2), np.float32)
    valid_cols = [i for i in range(12) if i not in (3, 8)]
    logits[0, 0, valid_cols, 0] = np.log(probs / (1 - probs))
    nll = -np.log(probs)
    # thresh 0.7 dominates (3rd smallest = 0.25 < 0.7): keep p <= 0.7 -> 7 pixels.
    loss = OHEMCrossEntropy(thresh=0.7, min_kept=3)
    np.testing.assert_allclose(float(loss(labels, logits)), nll[:7].mean(), rtol=1e-5)
    # min_kept 9 dominates (9th smallest = 0.85 > 0.7): keep 9 pixels.
    loss = OHEMCrossEntropy(thresh=0.7, min_kept=9)
    np.testing.assert_allclose(float(loss(labels, logits)), nll[:9].mean(), rtol=1e-5)
    # min_kept 11 > 10 valid pixels: everything valid is kept.
    loss = OHEMCrossEntropy(thresh=0.7, min_kept=11)
    np.testing.assert_allclose(float(loss(labels, logits)), nll.mean(), rtol=1e-5)
    # min_kept 0: thresh alone.
    loss = OHEMCrossEntropy(thresh=0.4, min_kept=0)
    np.testing.assert_allclose(float(loss(labels, logits)), nll[:4].mean(), rtol=1e-5)


def test_ohem_min_kept_dominates_keeps_exactly_the_hardest():
    labels, logits = make_batch(10, h=10, w=12, c=4)
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


def test_ohem_thresh_dominates():
    labels, logits = make_batch(11, h=10, w=12, c=4)
    thresh, min_kept = 0.3, 5
    _, _, valid, prob = np_pixel_terms(labels, logits)
    expected = valid & (prob <= thresh)
    assert expected.sum() > min_kept  # the threshold, not min_kept, decides
    kept = _kept_mask(OHEMCrossEntropy(thresh=thresh, min_kept=min_kept), labels, logits)
    np.testing.assert_array_equal(kept, expected)
    np.testing.assert_array_equal(kept, np_ohem_kept(prob, valid, thresh, min_kept))


@pytest.mark.parametrize(
    "thresh,min_kept,weights,low_res",
    [(0.7, 40, None, False), (0.7, 40, [1.0, 0.5, 2.0, 1.5], True), (0.2, 1000, None, True)],
)
def test_ohem_matches_numpy(thresh, min_kept, weights, low_res):
    labels, logits = make_batch(
        12, h=16, w=16, lh=8 if low_res else None, lw=8 if low_res else None, c=4
    )
    loss = OHEMCrossEntropy(thresh=thresh, min_kept=min_kept, class_weights=weights)
    np.testing.assert_allclose(
        float(loss(labels, logits)),
        np_ohem(labels, logits, thresh, min_kept, weights),
        rtol=1e-5,
    )


def test_ohem_gradient_ignores_the_selection():
    # d loss / d logits = (softmax - onehot) * w / sum(w) on kept pixels, 0 elsewhere:
    # no gradient flows through the threshold.
    labels, logits = make_batch(13, h=8, w=8, c=4)
    weights = [1.0, 2.0, 0.5, 1.0]
    loss = OHEMCrossEntropy(thresh=0.6, min_kept=20, class_weights=weights)
    x = tf.Variable(logits)
    with tf.GradientTape() as tape:
        value = loss(labels, x)
    grad = tape.gradient(value, x).numpy()
    _, weight, kept = np_ohem_sums(labels, logits, 0.6, 20, weights)
    nll, w, valid, _ = np_pixel_terms(labels, logits, class_weights=weights)
    w = np.where(kept, w, 0.0)
    soft = np.exp(logits - logits.max(-1, keepdims=True))
    soft /= soft.sum(-1, keepdims=True)
    onehot = np.eye(4)[np.where(valid, labels, 0)]
    expected = (soft - onehot) * (w / w.sum())[..., None]
    np.testing.assert_allclose(grad, expected, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize(
    "make_loss",
    [
        lambda: SegmentationCrossEntropy(class_weights=[1.0, 2.0, 0.5, 1.0]),
        lambda: OHEMCrossEntropy(thresh=0.7, min_kept=50),
        lambda: OHEMCrossEntropy(thresh=0.05, min_kept=100000),
    ],
)
def test_xla_equals_eager_and_gradients_finite(make_loss):
    labels, logits = make_batch(14, h=16, w=16, lh=8, lw=8, c=4)
    loss = make_loss()
    eager = float(loss(labels, logits))

    @tf.function(jit_compile=True)
    def xla_value_and_grad(y, x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            value = loss(y, x)
        return value, tape.gradient(value, x)

    value, grad = xla_value_and_grad(tf.constant(labels), tf.constant(logits))
    np.testing.assert_allclose(float(value), eager, rtol=1e-5)
    assert np.isfinite(grad.numpy()).all()
    assert np.abs(grad.numpy()).sum() > 0


def test_dynamic_shapes_graph_mode():
    labels, logits = make_batch(15, h=16, w=16, lh=8, lw=8, c=4)
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


@pytest.mark.parametrize("loss_cls", [SegmentationCrossEntropy, OHEMCrossEntropy])
def test_bfloat16_logits_computed_in_float32(loss_cls):
    labels, logits = make_batch(16, h=16, w=16, lh=8, lw=8, c=4)
    bf16 = tf.cast(logits, tf.bfloat16)
    loss = loss_cls()
    value = loss(labels, bf16)
    assert value.dtype == tf.float32
    rounded = tf.cast(bf16, tf.float32).numpy()
    np.testing.assert_allclose(float(value), float(loss(labels, rounded)), rtol=1e-6)
    # ...and it is close to the float32 loss (bf16 rounding only).
    np.testing.assert_allclose(float(value), float(loss(labels, logits)), rtol=2e-2)
    x = tf.Variable(bf16)
    with tf.GradientTape() as tape:
        out = loss(labels, x)
    grad = tape.gradient(out, x)
    assert grad.dtype == tf.bfloat16 and np.isfinite(tf.cast(grad, tf.float32).numpy()).all()


def test_serialization_round_trip(tmp_path):
    losses = [
        SegmentationCrossEntropy(ignore_index=7, class_weights=[1.0, 2.0, 3.0], align_corners=True),
        OHEMCrossEntropy(thresh=0.6, min_kept=12, ignore_index=7, distributed_mean="global"),
    ]
    labels, logits = make_batch(17, c=3)
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


def test_invalid_arguments():
    with pytest.raises(ValueError):
        OHEMCrossEntropy(min_kept=-1)
    with pytest.raises(ValueError):
        SegmentationCrossEntropy(distributed_mean="sum")
    with pytest.raises(ValueError):
        OHEMCrossEntropy(reduction="max")
