"""Tests of keras_gald.metrics (and the losses under a 2-replica strategy).

Tests marked `jax` are backend-neutral and also run under `KERAS_BACKEND=jax`;
the `tf.distribute` ones run a TensorFlow subprocess.
"""

import os
import pathlib

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from keras_gald.losses import OHEMCrossEntropy, SegmentationCrossEntropy  # noqa: E402
from keras_gald.metrics import (  # noqa: E402
    DEFAULT_BOUNDARY_THRESHOLDS,
    BoundaryFScoreAccumulator,
    MeanIoU,
    boundary_f_score,
    boundary_tolerance_px,
    confusion_matrix_np,
    format_iou_table,
    iou_from_confusion,
    seg_to_boundary,
)
from tests.harness import last_json, run_python  # noqa: E402

IGNORE = 255
BACKEND = keras.backend.backend()
WORKER = pathlib.Path(__file__).resolve().parent / "_strategy_worker.py"


def _resize_runs_compiled():
    """Whether keras_gald.ops.resize_bilinear traces under jax.jit (TF: always)."""
    if BACKEND == "tensorflow":
        return True
    try:
        import jax

        from keras_gald.ops import resize_bilinear

        jax.jit(lambda x: resize_bilinear(x, (4, 4)))(np.zeros((1, 2, 2, 1), np.float32))
        return True
    except Exception:  # a TF-only kernel fails on JAX tracers
        return False


# Low-resolution logits need the resize kernel; such tests join the JAX pass by
# themselves once keras_gald.ops.resize runs there.
needs_resize = pytest.mark.skipif(
    not _resize_runs_compiled(), reason=f"resize_bilinear has no {BACKEND} path yet"
)


def np_resize_bilinear(x, out_h, out_w):
    """Half-pixel-centre bilinear resize of NHWC (PyTorch align_corners=False)."""
    x = np.asarray(x, np.float64)
    _, in_h, in_w, _ = x.shape

    def axis(out_n, in_n):
        src = np.clip((np.arange(out_n) + 0.5) * (in_n / out_n) - 0.5, 0, in_n - 1)
        lo = np.floor(src).astype(int)
        return lo, np.minimum(lo + 1, in_n - 1), src - lo

    y0, y1, fy = axis(out_h, in_h)
    x0, x1, fx = axis(out_w, in_w)
    fx = fx[None, None, :, None]
    top = x[:, y0][:, :, x0] * (1 - fx) + x[:, y0][:, :, x1] * fx
    bot = x[:, y1][:, :, x0] * (1 - fx) + x[:, y1][:, :, x1] * fx
    return top * (1 - fy)[None, :, None, None] + bot * fy[None, :, None, None]


def np_confusion_loop(gt, pred, num_classes, ignore_index=IGNORE):
    """Deliberately naive reference for confusion_matrix_np."""
    cm = np.zeros((num_classes, num_classes), np.int64)
    for g, p in zip(np.ravel(gt), np.ravel(pred)):
        if g != ignore_index and 0 <= g < num_classes:
            cm[g, p] += 1
    return cm


def make_batch(seed, n=2, h=8, w=8, lh=None, lw=None, c=5, ignore_frac=0.2):
    """Labels (n, h, w) and logits; the JAX tests share the default shape
    (eager JAX compiles each op once per shape)."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, c, (n, h, w)).astype(np.int32)
    labels[rng.random((n, h, w)) < ignore_frac] = IGNORE
    logits = rng.normal(size=(n, lh or h, lw or w, c)).astype(np.float32)
    return labels, logits


# ---------------------------------------------------------------------------
# NumPy helpers
# ---------------------------------------------------------------------------
def test_confusion_matrix_np_matches_loop_and_ignores():
    rng = np.random.default_rng(0)
    gt = rng.integers(0, 4, (3, 7, 9))
    gt[rng.random(gt.shape) < 0.3] = IGNORE
    gt[0, 0, 0] = 9  # outside [0, C): not counted either
    pred = rng.integers(0, 4, gt.shape)
    cm = confusion_matrix_np(gt, pred, 4)
    assert cm.dtype == np.int64
    np.testing.assert_array_equal(cm, np_confusion_loop(gt, pred, 4))
    assert cm.sum() == ((gt != IGNORE) & (gt < 4)).sum()
    with pytest.raises(ValueError):
        confusion_matrix_np(np.array([0]), np.array([4]), 4)


def test_iou_from_confusion_hand_case():
    # gt [0,0,1,1,3], pred [0,1,1,1,3] with 4 classes:
    # class 0: TP 1, union 2 -> 1/2; class 1: TP 2, union 3 -> 2/3;
    # class 2 absent from gt and pred -> NaN, excluded; class 3: 1/1.
    cm = confusion_matrix_np([0, 0, 1, 1, 3], [0, 1, 1, 1, 3], 4)
    iou, miou = iou_from_confusion(cm)
    np.testing.assert_allclose(iou[[0, 1, 3]], [0.5, 2 / 3, 1.0])
    assert np.isnan(iou[2])
    np.testing.assert_allclose(miou, (0.5 + 2 / 3 + 1.0) / 3)
    # A class predicted but absent from the gt has IoU 0 and is counted.
    iou, miou = iou_from_confusion(confusion_matrix_np([0, 0], [0, 2], 3))
    np.testing.assert_allclose(iou[[0, 2]], [0.5, 0.0])
    np.testing.assert_allclose(miou, 0.25)
    assert iou_from_confusion(np.zeros((3, 3)))[1] == 0.0


def test_format_iou_table():
    text = format_iou_table(
        [0.5, np.nan, 0.25],
        ["road", "sky", "car"],
        extra_columns={"Acc": [1.0, np.nan, 0.5]},
        title="val",
    )
    expected = "\n".join(
        [
            "val",
            "class |   IoU |    Acc",
            "------+-------+-------",
            "road  | 50.00 | 100.00",
            "sky   |   n/a |    n/a",
            "car   | 25.00 |  50.00",
            "------+-------+-------",
            "mean  | 37.50 |  75.00",
        ]
    )
    assert text == expected
    assert format_iou_table([0.123], percent=False, digits=3).splitlines()[2] == "class_0 | 0.123"
    with pytest.raises(ValueError):
        format_iou_table([0.1, 0.2], ["one"])


# ---------------------------------------------------------------------------
# MeanIoU
# ---------------------------------------------------------------------------
@pytest.mark.jax
def test_mean_iou_streams_over_updates():
    metric = MeanIoU(num_classes=5)
    total = np.zeros((5, 5), np.int64)
    for seed in range(3):
        labels, logits = make_batch(seed)
        metric.update_state(labels, logits)
        total += confusion_matrix_np(labels, logits.argmax(-1), 5)
    np.testing.assert_array_equal(np.asarray(metric.confusion_matrix()), total)
    iou, miou = iou_from_confusion(total)
    np.testing.assert_allclose(float(metric.result()), miou, rtol=1e-6)
    # float64 statistics (float32 on JAX without x64).
    rtol = 1e-12 if keras.backend.standardize_dtype(metric.per_class_iou().dtype) == "float64" else 1e-6
    np.testing.assert_allclose(np.asarray(metric.per_class_iou()), iou, rtol=rtol)
    np.testing.assert_allclose(
        float(metric.pixel_accuracy()), np.trace(total) / total.sum(), rtol=rtol
    )
    np.testing.assert_allclose(
        float(metric.mean_accuracy()), np.mean(np.diag(total) / total.sum(1)), rtol=rtol
    )
    metric.reset_state()
    assert int(np.asarray(metric.confusion_matrix()).sum()) == 0
    assert float(metric.result()) == 0.0


@needs_resize
@pytest.mark.jax
def test_mean_iou_low_resolution_logits_are_upsampled():
    labels, logits = make_batch(5, h=24, w=32, lh=6, lw=8, c=4)
    metric = MeanIoU(num_classes=4)
    metric.update_state(labels, logits)
    pred = np_resize_bilinear(logits, 24, 32).argmax(-1)
    expected = confusion_matrix_np(labels, pred, 4)
    np.testing.assert_array_equal(np.asarray(metric.confusion_matrix()), expected)
    # Nearest/any other upsampling would give a different matrix here.
    nearest = np.repeat(np.repeat(logits, 4, axis=1), 4, axis=2).argmax(-1)
    assert not np.array_equal(confusion_matrix_np(labels, nearest, 4), expected)


@pytest.mark.jax
def test_mean_iou_class_ids_absent_classes_and_ignore():
    # Hand case in the first 6 pixels of a batch shaped like make_batch's (the
    # other pixels ignored): gt [0,0,1,1,3,255], pred [0,1,1,1,3,2] with 5
    # classes; the 2 sits on an ignored pixel, classes 2 and 4 are absent.
    metric = MeanIoU(num_classes=5, from_logits=False)
    gt = np.full((2, 8, 8), IGNORE, np.int32)
    pred = np.zeros((2, 8, 8), np.int32)
    gt.flat[:6] = [0, 0, 1, 1, 3, 255]
    pred.flat[:6] = [0, 1, 1, 1, 3, 2]
    metric.update_state(gt[..., None], pred[..., None])
    iou = np.asarray(metric.per_class_iou())
    np.testing.assert_allclose(iou[[0, 1, 3]], [0.5, 2 / 3, 1.0], rtol=1e-6)
    assert np.isnan(iou[2]) and np.isnan(iou[4])
    np.testing.assert_allclose(float(metric.result()), (0.5 + 2 / 3 + 1.0) / 3, rtol=1e-6)
    np.testing.assert_allclose(float(metric.pixel_accuracy()), 4 / 5, rtol=1e-6)
    np.testing.assert_allclose(float(metric.mean_accuracy()), (0.5 + 1.0 + 1.0) / 3, rtol=1e-6)


@pytest.mark.jax
def test_mean_iou_sample_weight_is_a_mask():
    labels, logits = make_batch(6)
    metric = MeanIoU(num_classes=5)
    metric.update_state(labels, logits, sample_weight=np.array([0.0, 2.0]))
    expected = confusion_matrix_np(labels[1:], logits[1:].argmax(-1), 5)
    np.testing.assert_array_equal(np.asarray(metric.confusion_matrix()), expected)
    # A per-pixel (N, H, W, 1) weight map masks pixel by pixel.
    metric.reset_state()
    mask = np.random.default_rng(6).random(labels.shape) < 0.5
    metric.update_state(labels, logits, sample_weight=mask[..., None].astype(np.float32))
    expected = confusion_matrix_np(np.where(mask, labels, IGNORE), logits.argmax(-1), 5)
    np.testing.assert_array_equal(np.asarray(metric.confusion_matrix()), expected)


@pytest.mark.jax
def test_mean_iou_counts_are_exact_beyond_float_precision():
    metric = MeanIoU(num_classes=5, from_logits=False)
    dtype = keras.backend.standardize_dtype(metric.confusion_matrix().dtype)
    if dtype == "int64":
        big = 2**53  # float64 (and float32 far earlier) cannot represent big + 1
    else:
        big = 2**30  # int32 counts (JAX without x64): float32 cannot represent big + 1
    start = np.zeros((5, 5), np.int64)
    start[0, 0] = big
    metric.total_confusion.assign(keras.ops.convert_to_tensor(start, dtype))
    zeros = np.zeros((2, 8, 8), np.int32)
    metric.update_state(zeros, zeros)
    zeros[0, 0, 0] = 1  # one pixel in cell (1, 0)
    metric.update_state(zeros, zeros * 0)
    cm = np.asarray(metric.confusion_matrix())
    assert int(cm[0, 0]) == big + 2 * 128 - 1 and int(cm[1, 0]) == 1


@pytest.mark.jax
def test_mean_iou_compiled_update_matches_numpy():
    labels, logits = make_batch(7)
    metric = MeanIoU(num_classes=5)
    for _ in range(2):  # two compiled updates accumulate
        if BACKEND == "tensorflow":
            import tensorflow as tf

            tf.function(metric.update_state, jit_compile=True)(labels, logits)
        elif BACKEND == "jax":
            import jax

            state = [v.value for v in metric.variables]
            state = jax.jit(metric.stateless_update_state)(state, labels, logits)
            for variable, value in zip(metric.variables, state):
                variable.assign(value)
        else:
            pytest.skip(f"no compiled update for the {BACKEND} backend in this test")
    expected = 2 * confusion_matrix_np(labels, logits.argmax(-1), 5)
    np.testing.assert_array_equal(np.asarray(metric.confusion_matrix()), expected)


def test_mean_iou_serialization(tmp_path):
    metric = MeanIoU(num_classes=3, ignore_index=9, class_names=["a", "b", "c"], name="miou")
    config = metric.get_config()
    clone = MeanIoU.from_config(config)
    assert clone.get_config() == config
    revived = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(metric))
    assert isinstance(revived, MeanIoU) and revived.get_config() == config
    assert "a " in metric.summary().splitlines()[2]

    inputs = keras.Input((None, None, 3))
    model = keras.Model(inputs, keras.layers.Identity()(inputs))
    model.compile(loss=SegmentationCrossEntropy(ignore_index=9), metrics=[metric])
    labels, logits = make_batch(8, c=3)
    labels[labels == IGNORE] = 9
    logs = model.evaluate(logits, labels, verbose=0, return_dict=True)
    expected = iou_from_confusion(confusion_matrix_np(labels, logits.argmax(-1), 3, 9))[1]
    np.testing.assert_allclose(logs["miou"], expected, rtol=1e-6)
    path = tmp_path / "m.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    logs2 = loaded.evaluate(logits, labels, verbose=0, return_dict=True)
    np.testing.assert_allclose(logs2["miou"], expected, rtol=1e-6)


# ---------------------------------------------------------------------------
# MirroredStrategy (2 logical CPUs, in a subprocess)
# ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def strategy_run(tmp_path_factory):
    rng = np.random.default_rng(42)
    c = 4
    labels = rng.integers(0, c, (4, 12, 12)).astype(np.int32)
    # Unequal ignore areas per replica: replica 0 (images 0, 1) has far fewer
    # valid pixels than replica 1, so "replica" and "global" means differ.
    labels[0, :7] = IGNORE
    labels[1, :, :5] = IGNORE
    logits = (1.5 * rng.normal(size=(4, 6, 6, c))).astype(np.float32)
    class_weights = np.array([1.0, 2.0, 0.5, 1.5])
    path = tmp_path_factory.mktemp("strategy") / "inputs.npz"
    np.savez(path, labels=labels, logits=logits, class_weights=class_weights)
    proc = run_python([WORKER, path], logical_cpus=2, timeout=540)
    out = last_json(proc.stdout)
    assert out["num_replicas"] == 2
    return out, labels, logits, class_weights


def _np_weighted_sums(labels, logits, class_weights=None, kept=None):
    labels = np.asarray(labels)
    x = np_resize_bilinear(logits, labels.shape[1], labels.shape[2])
    x = x - x.max(-1, keepdims=True)
    logp = x - np.log(np.exp(x).sum(-1, keepdims=True))
    valid = labels != IGNORE
    safe = np.where(valid, labels, 0)
    nll = -np.take_along_axis(logp, safe[..., None], -1)[..., 0]
    w = np.ones_like(nll) if class_weights is None else class_weights[safe]
    counted = valid if kept is None else valid & kept
    w = np.where(counted, w, 0.0)
    return (w * nll).sum(), w.sum(), np.exp(-nll), valid


def _np_ohem_sums(labels, logits, thresh, min_kept):
    _, _, prob, valid = _np_weighted_sums(labels, logits)
    p = prob[valid]
    kept = valid.copy()
    if min_kept <= valid.sum():
        threshold = max(thresh, np.sort(p)[min_kept - 1])
        kept = valid & (prob <= threshold)
    num, den, _, _ = _np_weighted_sums(labels, logits, kept=kept)
    return num, den


def test_mean_iou_under_mirrored_strategy(strategy_run):
    out, labels, logits, _ = strategy_run
    pred = np_resize_bilinear(logits, 12, 12).argmax(-1)
    expected = confusion_matrix_np(labels, pred, 4)
    np.testing.assert_array_equal(np.array(out["metric"]["confusion"]), expected)
    np.testing.assert_allclose(out["metric"]["mean_iou"], iou_from_confusion(expected)[1], rtol=1e-6)
    np.testing.assert_allclose(out["metric"]["pixel_accuracy"], np.trace(expected) / expected.sum())
    # Each replica really counted only its own half of the batch.
    local = out["metric"]["local_totals"]
    valid = labels != IGNORE
    assert sorted(local) == sorted([int(valid[:2].sum()), int(valid[2:].sum())])
    # Keras' own evaluate loop under the strategy reads the summed matrix too.
    np.testing.assert_allclose(out["evaluate_mean_iou"], iou_from_confusion(expected)[1], rtol=1e-6)


def test_cross_entropy_under_mirrored_strategy(strategy_run):
    out, labels, logits, cw = strategy_run
    halves = [slice(0, 2), slice(2, 4)]
    sums = [_np_weighted_sums(labels[s], logits[s], cw)[:2] for s in halves]
    replica_means = [num / den for num, den in sums]
    global_mean = sum(n for n, _ in sums) / sum(d for _, d in sums)
    single_device = float(SegmentationCrossEntropy(class_weights=cw)(labels, logits))
    np.testing.assert_allclose(single_device, global_mean, rtol=1e-5)
    assert abs(np.mean(replica_means) - global_mean) > 1e-3  # the modes really differ

    # "replica": each replica returns its own mean / 2; Keras sums them.
    ce_replica = out["losses"]["ce_replica"]
    np.testing.assert_allclose(ce_replica, np.array(replica_means) / 2, rtol=1e-5)
    # "global": the summed replica losses equal the single-device loss.
    ce_global = out["losses"]["ce_global"]
    np.testing.assert_allclose(sum(ce_global), single_device, rtol=1e-5)
    np.testing.assert_allclose(ce_global, [n / sum(d for _, d in sums) for n, _ in sums], rtol=1e-5)


def test_ohem_under_mirrored_strategy(strategy_run):
    out, labels, logits, _ = strategy_run
    halves = [slice(0, 2), slice(2, 4)]
    sums = [_np_ohem_sums(labels[s], logits[s], 0.7, 50) for s in halves]
    # The OHEM selection is per replica: each half's single-device OHEM loss.
    per_half = [float(OHEMCrossEntropy(thresh=0.7, min_kept=50)(labels[s], logits[s])) for s in halves]
    np.testing.assert_allclose(per_half, [n / d for n, d in sums], rtol=1e-5)
    np.testing.assert_allclose(out["losses"]["ohem_replica"], np.array(per_half) / 2, rtol=1e-5)
    np.testing.assert_allclose(
        sum(out["losses"]["ohem_global"]), sum(n for n, _ in sums) / sum(d for _, d in sums), rtol=1e-5
    )


# ---------------------------------------------------------------------------
# Boundary F-score
# ---------------------------------------------------------------------------
def np_seg2bmap_loop(mask):
    """Independent, pixel-by-pixel transcription of the BSDS seg2bmap rules."""
    m = np.asarray(mask, bool)
    h, w = m.shape
    out = np.zeros_like(m)

    def at(y, x):
        return m[y, x] if (y < h and x < w) else False

    for y in range(h):
        for x in range(w):
            if y == h - 1 and x == w - 1:
                continue
            if x == w - 1:
                out[y, x] = m[y, x] != at(y + 1, x)
            elif y == h - 1:
                out[y, x] = m[y, x] != at(y, x + 1)
            else:
                out[y, x] = m[y, x] != m[y, x + 1] or m[y, x] != m[y + 1, x] or m[y, x] != m[y + 1, x + 1]
    return out


def np_boundary_counts_bruteforce(pred, gt, c, radius, ignore_index=IGNORE):
    ignore = gt == ignore_index
    fb = np_seg2bmap_loop((pred == c) & ~ignore)
    gb = np_seg2bmap_loop((gt == c) & ~ignore)
    fp, gp = np.argwhere(fb), np.argwhere(gb)

    def matched(a, b):
        if len(a) == 0 or len(b) == 0:
            return 0
        d2 = ((a[:, None, :] - b[None, :, :]) ** 2).sum(-1)
        return int((d2.min(1) <= radius * radius).sum())

    return matched(fp, gp), len(fp), matched(gp, fp), len(gp)


def test_tolerances_at_cityscapes_resolution():
    tol = [boundary_tolerance_px((1024, 2048), t) for t in DEFAULT_BOUNDARY_THRESHOLDS]
    assert tol == [3, 5, 9, 12]
    assert boundary_tolerance_px((10, 10), 4) == 4  # >= 1: pixels


def test_square_boundary_is_the_shifted_perimeter():
    # An 8x8 square on rows/cols 4..11: its own right column and bottom row
    # (15 px) plus the outside pixels whose right, lower or lower-right
    # neighbour is inside (left column x=3, top row y=3, corner (3,3): 17 px)
    # -> the 32-pixel perimeter of the 9x9 square on rows/cols 3..11.
    mask = np.zeros((20, 20), bool)
    mask[4:12, 4:12] = True
    expected = np.zeros((20, 20), bool)
    expected[3:12, 3:12] = True
    expected[4:11, 4:11] = False
    np.testing.assert_array_equal(seg_to_boundary(mask), expected)
    assert seg_to_boundary(mask).sum() == 32


def test_offset_squares_hand_checked():
    # gt square rows/cols 4..11, pred square rows/cols 5..12 (offset 1 px
    # diagonally). Boundaries: gt = perimeter P_g of [3, 11]^2, pred =
    # perimeter P_p of [4, 12]^2, 32 pixels each.
    # * tolerance 0 (exact overlap): P_g and P_p share only (4, 11) and
    #   (11, 4) -> P = R = 2/32, F = 1/16.
    # * tolerance 1 (4-neighbours): every pred pixel except the far corner
    #   (12, 12) has a gt pixel one step up or left (e.g. (4, x) -> (3, x),
    #   (y, 12) -> (y, 11) for y <= 11, (12, 4) -> (11, 4)); (12, 12)'s nearest
    #   gt pixel (11, 11) is sqrt(2) away. Symmetrically only gt (3, 3) misses.
    #   P = R = 31/32 -> F = 31/32.
    # * tolerance 2: sqrt(2) <= 2, everything matches -> F = 1.
    # Class 0 (the background) has the same two boundaries, so the same scores.
    gt = np.zeros((20, 20), np.int32)
    gt[4:12, 4:12] = 1
    pred = np.zeros((20, 20), np.int32)
    pred[5:13, 5:13] = 1
    out = boundary_f_score(pred, gt, num_classes=2, thresholds=(0.0, 1, 2))
    for key in ("per_class_f", "per_class_precision", "per_class_recall"):
        np.testing.assert_allclose(out[key][:, 1], [1 / 16, 31 / 32, 1.0])
        np.testing.assert_allclose(out[key][:, 0], [1 / 16, 31 / 32, 1.0])
    np.testing.assert_allclose(out["mean_f"], [1 / 16, 31 / 32, 1.0])
    pooled = boundary_f_score(pred, gt, num_classes=2, thresholds=(0.0, 1, 2), protocol="pooled")
    np.testing.assert_allclose(pooled["mean_f"], [1 / 16, 31 / 32, 1.0])


def _blobby_labels(rng, shape, c):
    """Label maps with regions (not salt-and-pepper): upsampled coarse noise."""
    coarse = rng.integers(0, c, (shape[0] // 4 + 1, shape[1] // 4 + 1))
    labels = np.repeat(np.repeat(coarse, 4, 0), 4, 1)[: shape[0], : shape[1]]
    flip = rng.random(shape) < 0.05
    return np.where(flip, rng.integers(0, c, shape), labels)


def test_boundary_counts_match_bruteforce():
    rng = np.random.default_rng(3)
    c = 3
    acc = BoundaryFScoreAccumulator(c, thresholds=(1, 2, 3, 5))
    expected = np.zeros((4, 4, c), np.int64)
    for _ in range(3):
        gt = _blobby_labels(rng, (23, 29), c)
        gt[rng.random(gt.shape) < 0.05] = IGNORE
        pred = _blobby_labels(rng, (23, 29), c)
        acc.update(pred, gt)
        for t, radius in enumerate((1, 2, 3, 5)):
            for k in range(c):
                expected[:, t, k] += np_boundary_counts_bruteforce(pred, gt, k, radius)
    got = np.stack([acc.fg_match, acc.n_fg, acc.gt_match, acc.n_gt])
    np.testing.assert_array_equal(got, expected)
    res = acc.result()
    p = expected[0] / expected[1]
    r = expected[2] / expected[3]
    np.testing.assert_allclose(res["per_class_f"], 2 * p * r / (p + r))
    np.testing.assert_allclose(res["mean_f"], (2 * p * r / (p + r)).mean(1))


def test_perfect_prediction_scores_one():
    rng = np.random.default_rng(4)
    gt = np.stack([_blobby_labels(rng, (30, 40), 4) for _ in range(2)])
    gt[:, :3] = IGNORE
    pred = gt.copy()
    pred[gt == IGNORE] = 1  # predictions under ignored pixels do not matter
    for protocol in ("gscnn", "pooled"):
        out = boundary_f_score(pred, gt, 4, protocol=protocol)
        np.testing.assert_allclose(out["per_class_f"], 1.0)
        np.testing.assert_allclose(out["mean_f"], 1.0)
        assert out["num_images"] == 2


def test_empty_class_handling():
    gt = np.zeros((16, 16), np.int32)
    gt[4:10, 4:10] = 1  # class 1 in gt only
    pred = np.zeros((16, 16), np.int32)
    pred[2:6, 8:14] = 2  # class 2 in pred only; class 3 nowhere
    out = boundary_f_score(pred, gt, num_classes=4, thresholds=(2,))
    # G-SCNN table: gt-only -> P 1, R 0, F 0; pred-only -> P 0, R 1, F 0;
    # absent from both -> P = R = F = 1 (and it counts in the mean).
    np.testing.assert_allclose(out["per_class_precision"][0, 1:], [1.0, 0.0, 1.0])
    np.testing.assert_allclose(out["per_class_recall"][0, 1:], [0.0, 1.0, 1.0])
    np.testing.assert_allclose(out["per_class_f"][0, 1:], [0.0, 0.0, 1.0])
    np.testing.assert_allclose(out["mean_f"][0], out["per_class_f"][0].mean())
    # Pooled: the never-seen class is NaN and left out of the mean.
    pooled = boundary_f_score(pred, gt, num_classes=4, thresholds=(2,), protocol="pooled")
    assert np.isnan(pooled["per_class_f"][0, 3])
    np.testing.assert_allclose(pooled["per_class_f"][0, 1:3], [0.0, 0.0])
    np.testing.assert_allclose(pooled["mean_f"][0], np.mean(pooled["per_class_f"][0, :3]))


def test_gscnn_averages_images_pooled_sums_counts():
    rng = np.random.default_rng(5)
    gts = [_blobby_labels(rng, (20, 24), 3) for _ in range(3)]
    preds = [_blobby_labels(rng, (20, 24), 3) for _ in range(3)]
    per_image = [boundary_f_score(p, g, 3, thresholds=(1, 3)) for p, g in zip(preds, gts)]
    batch = boundary_f_score(np.stack(preds), np.stack(gts), 3, thresholds=(1, 3))
    np.testing.assert_allclose(
        batch["per_class_f"], np.mean([o["per_class_f"] for o in per_image], axis=0)
    )
    acc = BoundaryFScoreAccumulator(3, thresholds=(1, 3))
    for p, g in zip(preds, gts):
        acc.update(p, g)
    np.testing.assert_allclose(acc.result("gscnn")["per_class_f"], batch["per_class_f"])
    pooled = acc.result()
    p = acc.fg_match / acc.n_fg
    r = acc.gt_match / acc.n_gt
    np.testing.assert_allclose(pooled["per_class_f"], 2 * p * r / (p + r))
    # The two aggregations are genuinely different numbers here.
    assert np.abs(pooled["per_class_f"] - batch["per_class_f"]).max() > 1e-3
    acc.reset()
    assert acc.num_images == 0 and np.isnan(acc.result()["mean_f"]).all()
    with pytest.raises(ValueError):
        acc.result("other")
