"""Segmentation losses: pixel-wise cross-entropy and the GALD authors' OHEM.

Both losses take integer label maps `y_true` of shape `(N, H, W)` (or
`(N, H, W, 1)`) and per-class logits `y_pred` of shape `(N, h, w, C)`. When
`(h, w) != (H, W)` the logits are bilinearly upsampled to the label size first
(`keras_gald.ops.resize_bilinear`), as the authors do for their
1/8-resolution GALD head. All maths runs in float32, whatever the logits'
dtype (e.g. `bfloat16` under `mixed_bfloat16`), in `keras.ops`, so the losses
run (and trace under `jax.jit` / `tf.function(jit_compile=True)`) on every
Keras backend.

Averaging
---------
The loss is a *weighted mean over the counted pixels*::

    loss = sum_p w_p * nll_p / sum_p w_p

over the pixels `p` that are valid (label != `ignore_index` and in
`[0, C)`), kept (OHEM only) and have a non-zero sample weight, where
`w_p = class_weights[label_p] * sample_weight_p` -- exactly PyTorch's
`CrossEntropyLoss(weight=class_weights, ignore_index=ignore_index)` with
`reduction="mean"` when no sample weight is given. A batch without any counted
pixel gives 0 (never NaN).

Distributed semantics (`tf.distribute`, argument `distributed_mean`)
--------------------------------------------------------------------
Keras trains under a strategy by running the loss on every replica, expecting
each replica's loss to be pre-divided by the number of replicas `R`, and then
*summing* gradients over replicas. Inside a replica context with `R > 1`:

* `distributed_mean="replica"` (default, the authors' setting: PyTorch DDP with
  SyncBN, each GPU computing its own OHEM loss and DDP averaging gradients):
  each replica returns `mean_r / R`, where `mean_r` is the weighted mean over
  the replica's own counted pixels. Summed over replicas this is the plain
  average of the replicas' means, so a replica with few valid pixels weighs as
  much as one with many. This equals the single-device loss whenever every
  replica sees the same number of counted pixels (and total weight).
* `distributed_mean="global"`: the denominator is summed over replicas
  (`all_reduce(SUM)`, no gradient through it) and each replica returns
  `num_r / sum_r' den_r'`; summed over replicas this is the exact pixel mean
  over the *global* batch, i.e. the same value (and gradient) as computing
  the cross-entropy on one device. For OHEM the hard-pixel threshold is still
  chosen per replica (on the replica's own batch, as the authors do); only the
  normalisation is global.

`"global"` is TensorFlow-only (constructing it on another backend raises
`ValueError`). On JAX a multi-device step (`keras.distribution`) computes the
loss once over the global batch, so `"replica"` there gives the single-device
value (one mean, one OHEM selection over the whole batch).

Outside a replica context, or with one replica, both modes return the plain
weighted mean; in a cross-replica context under a strategy with `R > 1` (e.g. a
call inside `strategy.scope()` but not inside `strategy.run`) the value is
divided by `R`, like every built-in Keras loss.

Reductions: `"sum_over_batch_size"`/`"mean"`/`"mean_with_sample_weight"`
(the default; all give the weighted mean above), `"sum"` (the numerator
`sum_p w_p * nll_p`, never rescaled for distribution) and `None`/`"none"`
(the per-pixel map `w_p * nll_p` at label resolution, zero at pixels not
counted).
"""

import keras
from keras import ops

from keras_gald.ops.classes import take_class
from keras_gald.ops.resize import resize_bilinear

_MEAN_REDUCTIONS = ("sum_over_batch_size", "mean", "mean_with_sample_weight")
_REDUCTIONS = _MEAN_REDUCTIONS + ("sum", "none", None)


def _is_float(x):
    return "float" in keras.backend.standardize_dtype(x.dtype)


def _labels_to_int(y_true):
    """(N,H,W) or (N,H,W,1) labels (any dtype) -> int32 (N,H,W)."""
    y_true = ops.convert_to_tensor(y_true)
    if len(y_true.shape) == 4:
        y_true = ops.squeeze(y_true, axis=-1)
    if _is_float(y_true):
        y_true = ops.round(y_true)
    return ops.cast(y_true, "int32")


def _logits_to_label_size(y_pred, label_hw, align_corners):
    """Bilinearly resizes `(N,h,w,C)` logits to `label_hw` in float32 when needed.

    `label_hw` holds Python ints where the label size is static (always on JAX)
    and scalar tensors where it is not (a TF graph with dynamic shapes).
    """
    y_pred = ops.convert_to_tensor(y_pred)
    if keras.backend.standardize_dtype(y_pred.dtype) != "float32":
        y_pred = ops.cast(y_pred, "float32")
    static = all(isinstance(d, int) for d in label_hw)
    if static and tuple(y_pred.shape[1:3]) == tuple(label_hw):
        return y_pred
    # With dynamic sizes the resize always runs; at equal sizes it is the
    # identity for both align_corners conventions.
    return resize_bilinear(y_pred, label_hw, align_corners=align_corners)


class _PixelLossBase(keras.losses.Loss):
    """Shared machinery: label/logit handling, weighting and reduction."""

    def __init__(
        self,
        ignore_index=255,
        class_weights=None,
        align_corners=False,
        distributed_mean="replica",
        reduction="sum_over_batch_size",
        name=None,
    ):
        if reduction not in _REDUCTIONS:
            raise ValueError(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}")
        if distributed_mean not in ("replica", "global"):
            raise ValueError(
                f"distributed_mean must be 'replica' or 'global', got {distributed_mean!r}"
            )
        if distributed_mean == "global" and keras.backend.backend() != "tensorflow":
            raise ValueError(
                "distributed_mean='global' needs the TensorFlow backend (its denominator is "
                f"a tf.distribute all-reduce); use 'replica' on {keras.backend.backend()}."
            )
        # The loss always computes (and returns) float32.
        super().__init__(name=name, reduction=reduction, dtype="float32")
        self.ignore_index = int(ignore_index)
        self.class_weights = (
            None if class_weights is None else [float(w) for w in class_weights]
        )
        self.align_corners = bool(align_corners)
        self.distributed_mean = distributed_mean

    # -- per-pixel terms -------------------------------------------------
    def _pixel_terms(self, y_true, y_pred, sample_weight=None):
        """Returns `(nll, weight, valid, labels)`, each `(N, H, W)`.

        `nll` is the per-pixel negative log-likelihood of the label (0 where
        invalid), `weight` the class weight times the sample weight (0 where
        invalid), `valid` a bool mask of counted candidates.
        """
        labels = _labels_to_int(y_true)
        label_shape = ops.shape(labels)
        logits = _logits_to_label_size(
            y_pred, (label_shape[1], label_shape[2]), self.align_corners
        )
        num_classes = logits.shape[-1]
        if num_classes is None:
            raise ValueError("The class axis of y_pred must be static.")
        valid = (labels != self.ignore_index) & (labels >= 0) & (labels < num_classes)
        safe_labels = ops.where(valid, labels, 0)
        # nll_p = -log softmax(z_p)[y_p]
        log_probs = ops.log_softmax(logits, axis=-1)
        nll = -take_class(log_probs, safe_labels)
        weight = ops.ones_like(nll)
        if self.class_weights is not None:
            if len(self.class_weights) != num_classes:
                raise ValueError(
                    f"class_weights has {len(self.class_weights)} entries for "
                    f"{num_classes} classes."
                )
            class_weights = ops.convert_to_tensor(self.class_weights, "float32")
            weight = ops.take(class_weights, safe_labels)
        if sample_weight is not None:
            sw = ops.cast(ops.convert_to_tensor(sample_weight), "float32")
            if len(sw.shape) == 4:
                sw = ops.squeeze(sw, axis=-1)
            while 0 < len(sw.shape) < 3:
                sw = sw[..., None]
            sw = ops.broadcast_to(sw, ops.shape(nll))
            weight = weight * sw
            valid = valid & (sw != 0.0)
        nll = ops.where(valid, nll, 0.0)
        weight = ops.where(valid, weight, 0.0)
        return nll, weight, valid, safe_labels

    def _kept_mask(self, nll, valid):
        """Which valid pixels count (all of them for plain cross-entropy)."""
        return valid

    def call(self, y_true, y_pred):
        """Per-pixel weighted losses `(N, H, W)`, zero where not counted."""
        losses, _ = self._weighted_terms(y_true, y_pred, None)
        return losses

    def _weighted_terms(self, y_true, y_pred, sample_weight):
        nll, weight, valid, _ = self._pixel_terms(y_true, y_pred, sample_weight)
        kept = self._kept_mask(nll, valid)
        weight = ops.where(kept, weight, 0.0)
        return weight * nll, weight

    # -- reduction -------------------------------------------------------
    def __call__(self, y_true, y_pred, sample_weight=None):
        with keras.name_scope(self.name):
            losses, weight = self._weighted_terms(y_true, y_pred, sample_weight)
            if self.reduction in (None, "none"):
                return losses
            numerator = ops.sum(losses)
            if self.reduction == "sum":
                return numerator
            # The normaliser carries no gradient (PyTorch's weighted mean).
            denominator = ops.stop_gradient(ops.sum(weight))
            if keras.backend.backend() == "tensorflow":
                return self._tf_distributed_mean(numerator, denominator)
            # JAX/torch: a multi-device step (keras.distribution) computes the
            # loss once over the global batch, so the plain mean is the answer.
            return ops.divide_no_nan(numerator, denominator)

    def _tf_distributed_mean(self, numerator, denominator):
        """The `tf.distribute` replica semantics of the module docstring."""
        import tensorflow as tf  # TF backend only: JAX users never import it.

        strategy = tf.distribute.get_strategy()
        num_replicas = strategy.num_replicas_in_sync
        replica_ctx = tf.distribute.get_replica_context()
        in_replica = replica_ctx is not None and num_replicas > 1
        if self.distributed_mean == "global" and in_replica:
            global_den = replica_ctx.all_reduce(tf.distribute.ReduceOp.SUM, denominator)
            return tf.math.divide_no_nan(numerator, tf.stop_gradient(global_den))
        loss = tf.math.divide_no_nan(numerator, denominator)
        if num_replicas > 1:
            # Keras sums the replicas' gradients: pre-divide like its own losses.
            loss = loss * (1.0 / num_replicas)
        return loss

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "ignore_index": self.ignore_index,
                "class_weights": self.class_weights,
                "align_corners": self.align_corners,
                "distributed_mean": self.distributed_mean,
            }
        )
        return config


@keras.saving.register_keras_serializable(package="keras_gald")
class SegmentationCrossEntropy(_PixelLossBase):
    """Pixel-wise softmax cross-entropy with an ignore label and class weights.

    Equivalent to PyTorch's
    `CrossEntropyLoss(weight=class_weights, ignore_index=ignore_index)` applied
    after upsampling the logits to the label size. See the module docstring for
    the averaging and the `tf.distribute` semantics.

    Args:
        ignore_index: label value that is never counted (labels outside
            `[0, C)` are not counted either).
        class_weights: optional length-`C` per-class weights; the mean is then
            `sum w[y] nll / sum w[y]` over counted pixels.
        from_logits: must be `True` (the loss takes logits); kept for API
            symmetry with Keras losses.
        align_corners: resize convention when upsampling the logits
            (`False`: half-pixel centres; the authors' code uses `True`).
        distributed_mean: `"replica"` (default) or `"global"`.
        reduction: see the module docstring.
        name: loss name.

    Input shapes: `y_true (N, H, W)` or `(N, H, W, 1)` integer labels;
    `y_pred (N, h, w, C)` logits, any float dtype. `sample_weight`
    broadcastable to `(N, H, W)` (per image `(N,)` or per pixel).
    Output: float32 scalar.

    Example:
    >>> loss = SegmentationCrossEntropy(ignore_index=255)
    >>> labels = np.zeros((2, 64, 64), np.int32)
    >>> logits = np.zeros((2, 8, 8, 19), np.float32)   # 1/8 resolution
    >>> float(loss(labels, logits))                     # log(19)
    2.944...
    """

    def __init__(
        self,
        ignore_index=255,
        class_weights=None,
        from_logits=True,
        align_corners=False,
        distributed_mean="replica",
        reduction="sum_over_batch_size",
        name="segmentation_cross_entropy",
    ):
        if not from_logits:
            raise ValueError("SegmentationCrossEntropy takes logits (from_logits=True).")
        super().__init__(
            ignore_index=ignore_index,
            class_weights=class_weights,
            align_corners=align_corners,
            distributed_mean=distributed_mean,
            reduction=reduction,
            name=name,
        )
        self.from_logits = True

    def get_config(self):
        config = super().get_config()
        config["from_logits"] = self.from_logits
        return config


@keras.saving.register_keras_serializable(package="keras_gald")
class OHEMCrossEntropy(_PixelLossBase):
    """The GALD authors' online hard example mining cross-entropy.

    Among the valid pixels of the (replica's) whole batch, with `p` the softmax
    probability of the ground-truth class, the pixels with
    `p <= max(thresh, p_(k))` are kept, where `p_(k)` is the `k`-th smallest
    ground-truth probability and `k = min_kept`; when the batch has fewer than
    `min_kept` valid pixels all valid pixels are kept. With `min_kept=0` the
    threshold is `thresh` alone. The loss is the (class-weighted) cross-entropy
    averaged over the kept pixels. The selection carries no gradient.

    This follows the authors' `OhemCrossEntropy2dTensor` (thresh 0.7,
    min_kept 100000 in their recipe); ties at the threshold are all kept.
    Works under `tf.function(jit_compile=True)` and `jax.jit`: the `k`-th
    value comes from a `top_k` over all pixels (ignored ones sorted last)
    whose `k` is `min(min_kept, number of pixels)`, static when the batch
    shape is (always on JAX).

    Args:
        thresh: probability threshold.
        min_kept: minimum number of hard pixels kept.
        ignore_index, class_weights, align_corners, distributed_mean,
        reduction, name: as in `SegmentationCrossEntropy`.

    Input shapes: as `SegmentationCrossEntropy`. Output: float32 scalar.

    Example:
    >>> loss = OHEMCrossEntropy(thresh=0.7, min_kept=100000)
    >>> value = loss(labels, logits)   # labels (N,H,W), logits (N,h,w,C)
    """

    def __init__(
        self,
        thresh=0.7,
        min_kept=100000,
        ignore_index=255,
        class_weights=None,
        align_corners=False,
        distributed_mean="replica",
        reduction="sum_over_batch_size",
        name="ohem_cross_entropy",
    ):
        super().__init__(
            ignore_index=ignore_index,
            class_weights=class_weights,
            align_corners=align_corners,
            distributed_mean=distributed_mean,
            reduction=reduction,
            name=name,
        )
        if min_kept < 0:
            raise ValueError(f"min_kept must be >= 0, got {min_kept}")
        self.thresh = float(thresh)
        self.min_kept = int(min_kept)

    def _kept_mask(self, nll, valid):
        # p_gt = exp(-nll); the selection itself carries no gradient.
        gt_prob = ops.stop_gradient(ops.exp(-nll))
        flat_prob = ops.reshape(gt_prob, (-1,))
        flat_valid = ops.reshape(valid, (-1,))
        threshold = self.thresh
        keep_all = False
        if self.min_kept > 0:
            # Invalid pixels sort after every valid one (p <= 1 < 2), so the
            # k-th smallest over all pixels is the k-th smallest valid one
            # whenever k <= num_valid (otherwise every valid pixel is kept).
            # k = min(min_kept, pixels) is static whenever the batch shape is
            # (always on JAX), so this traces under jit / XLA.
            candidates = ops.where(flat_valid, flat_prob, 2.0)
            size = flat_prob.shape[0]
            if size is None:
                k = ops.minimum(self.min_kept, ops.shape(flat_prob)[0])
            else:
                k = min(self.min_kept, int(size))
            if not (isinstance(k, int) and k == 0):  # k == 0: an empty batch
                # top_k(sorted=True) of -p: its last entry is the k-th smallest p.
                smallest = -ops.top_k(-candidates, k=k, sorted=True)[0]
                threshold = ops.maximum(threshold, smallest[-1])
            # The authors' rule, stated as they do (the sentinel above already
            # makes the k-th value 2.0 whenever fewer than k pixels are valid).
            num_valid = ops.sum(ops.cast(flat_valid, "int32"))
            keep_all = num_valid < self.min_kept
        kept = ops.logical_or(keep_all, gt_prob <= threshold)
        return valid & kept

    def get_config(self):
        config = super().get_config()
        config.update({"thresh": self.thresh, "min_kept": self.min_kept})
        return config
