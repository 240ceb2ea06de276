"""Pyramid pooling module (PSPNet, Zhao et al. 2017) as the GALD authors wrote it.

The authors' `PSPNet.PSPModule` (github lxtGH/GALD-DGCNet, `libs/models/PSPNet.py`)
differs from the PSPNet paper in three places; the defaults here follow the
authors' code so their checkpoints load and reproduce their numbers:

- every pyramid branch keeps `filters` channels (paper: `C_in / len(bins)`);
  set `branch_filters` to change it;
- a branch is pool -> 1x1 conv -> BN with *no* activation (paper: BN + ReLU);
  set `branch_activation="relu"` for the paper's variant;
- the 3x3 bottleneck sees `concat([branch_1, ..., branch_k, input])`, i.e. the
  input comes *last* (paper figure: input first). Only weight loading cares.

Adaptive average pooling is implemented here with PyTorch's bin edges
(`start = floor(i * H / b)`, `end = ceil((i + 1) * H / b)`) as two small
matrix products, so it works with dynamic H, W, in graph mode and under XLA,
uses only ONNX-friendly ops (Range, comparisons, Einsum/MatMul) and has no
cumulative-sum cancellation error (an integral image loses precision on large
maps and is unusable in bfloat16).
"""

import keras
import tensorflow as tf

from keras_gald.layers.norm import batch_norm
from keras_gald.layers.validation import check_nhwc as _check_nhwc
from keras_gald.ops.resize import resize_bilinear


def _adaptive_pool_matrix(length, bins, dtype):
    """`(bins, length)` matrix whose row i averages PyTorch's i-th adaptive bin."""
    length = tf.cast(length, tf.int32)
    index = tf.range(bins, dtype=tf.int32)
    start = (index * length) // bins  # floor(i * L / b)
    end = ((index + 1) * length + bins - 1) // bins  # ceil((i + 1) * L / b)
    position = tf.range(length, dtype=tf.int32)
    inside = (position[None, :] >= start[:, None]) & (position[None, :] < end[:, None])
    counts = tf.cast(end - start, dtype)
    return tf.cast(inside, dtype) / counts[:, None]


def adaptive_average_pool2d(inputs, output_size):
    """PyTorch `F.adaptive_avg_pool2d` for NHWC tensors with dynamic H, W.

    Bin `(i, j)` averages rows `[floor(i*H/bh), ceil((i+1)*H/bh))` and columns
    `[floor(j*W/bw), ceil((j+1)*W/bw))`; bins may overlap and every bin is
    non-empty, so any `H, W >= 1` works, including sizes smaller than the
    number of bins. Computed in float32 (the result keeps the input's dtype).

    Args:
        inputs: `(N, H, W, C)` float tensor.
        output_size: `int` or `(bh, bw)` of Python ints.

    Returns:
        `(N, bh, bw, C)` tensor of the input's dtype.
    """
    if isinstance(output_size, int):
        output_size = (output_size, output_size)
    bins_h, bins_w = (int(b) for b in output_size)
    if bins_h < 1 or bins_w < 1:
        raise ValueError(f"output_size must be positive, got {output_size}")
    dtype = inputs.dtype
    x = tf.cast(inputs, tf.float32)
    if bins_h == 1 and bins_w == 1:  # GlobalAveragePooling2D(keepdims=True)
        return tf.cast(tf.reduce_mean(x, axis=[1, 2], keepdims=True), dtype)
    shape = tf.shape(x)
    pool_h = _adaptive_pool_matrix(shape[1], bins_h, tf.float32)
    pool_w = _adaptive_pool_matrix(shape[2], bins_w, tf.float32)
    x = tf.einsum("ih,nhwc->niwc", pool_h, x)
    x = tf.einsum("jw,niwc->nijc", pool_w, x)
    return tf.cast(x, dtype)




@keras.saving.register_keras_serializable(package="keras_gald")
class PSP(keras.layers.Layer):
    """Pyramid pooling module, exactly as in the GALD authors' `PSPModule`.

    For each bin size `b`: adaptive average pool to `b x b` -> 1x1 conv
    (`branch_filters`, no bias) -> BN [-> `branch_activation`] -> bilinear
    upsample to `H x W`. Then `concat([branch_1, ..., branch_k, input])` ->
    3x3 conv (`filters`, no bias) -> BN -> ReLU -> channel dropout
    (`SpatialDropout2D`, PyTorch's `Dropout2d`).

    Inputs smaller than the largest bin work (PyTorch's adaptive bins then
    overlap), down to 1x1.

    Args:
        filters: output channels (the authors' `out_features`; 512 in PSPNet).
        bins: pyramid bin sizes, positive ints.
        branch_filters: channels of each pyramid branch; `None` = `filters`
            (authors' code). The PSPNet paper uses `C_in // len(bins)`.
        branch_activation: activation after each branch BN; `None` (authors'
            code) or e.g. `"relu"` (PSPNet paper).
        dropout: channel-dropout rate after the bottleneck.
        align_corners: bilinear upsampling convention (`True` = authors').
        sync_bn: cross-replica BatchNorm.
        **kwargs: `keras.layers.Layer` arguments (`name`, `dtype`, ...).

    Input shape: `(N, H, W, C)`. Output shape: `(N, H, W, filters)`.

    Example:
    >>> psp = PSP(filters=64, bins=(1, 2, 3, 6))
    >>> psp(keras.ops.zeros((2, 33, 47, 128))).shape
    TensorShape([2, 33, 47, 64])
    """

    def __init__(
        self,
        filters=512,
        bins=(1, 2, 3, 6),
        branch_filters=None,
        branch_activation=None,
        dropout=0.1,
        align_corners=True,
        sync_bn=False,
        **kwargs,
    ):
        super().__init__(**kwargs)
        bins = tuple(int(b) for b in bins)
        if not bins or min(bins) < 1:
            raise ValueError(f"bins must be a non-empty sequence of positive ints, got {bins}")
        if int(filters) < 1:
            raise ValueError(f"filters must be positive, got {filters}")
        if branch_filters is not None and int(branch_filters) < 1:
            raise ValueError(f"branch_filters must be positive or None, got {branch_filters}")
        if not 0.0 <= float(dropout) < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        self.filters = int(filters)
        self.bins = bins
        self.branch_filters = None if branch_filters is None else int(branch_filters)
        self.branch_activation = (
            None if branch_activation is None
            else keras.activations.serialize(keras.activations.get(branch_activation))
        )
        self.dropout = float(dropout)
        self.align_corners = bool(align_corners)
        self.sync_bn = bool(sync_bn)
        self._branch_activation_fn = (
            None if branch_activation is None else keras.activations.get(branch_activation)
        )

        width = self.filters if self.branch_filters is None else self.branch_filters
        policy = self.dtype_policy
        # stages[i] = (AdaptiveAvgPool, conv, BN) in the authors' code.
        self.stage_convs = [
            keras.layers.Conv2D(width, 1, use_bias=False, name=f"stages_{i}_conv", dtype=policy)
            for i in range(len(bins))
        ]
        self.stage_bns = [
            batch_norm(name=f"stages_{i}_bn", synchronized=self.sync_bn, dtype=policy)
            for i in range(len(bins))
        ]
        self.bottleneck_conv = keras.layers.Conv2D(
            self.filters, 3, padding="same", use_bias=False, name="bottleneck_conv", dtype=policy
        )
        self.bottleneck_bn = batch_norm(
            name="bottleneck_bn", synchronized=self.sync_bn, dtype=policy
        )
        self.dropout_layer = keras.layers.SpatialDropout2D(
            self.dropout, name="dropout", dtype=policy
        )

    @property
    def branch_width(self):
        """Channels of each pyramid branch."""
        return self.filters if self.branch_filters is None else self.branch_filters

    def build(self, input_shape):
        n, h, w, c = _check_nhwc(self, input_shape)
        for conv, bn in zip(self.stage_convs, self.stage_bns):
            conv.build((n, None, None, c))
            bn.build((n, None, None, self.branch_width))
        concat_channels = len(self.bins) * self.branch_width + c
        self.bottleneck_conv.build((n, h, w, concat_channels))
        self.bottleneck_bn.build((n, h, w, self.filters))
        self.dropout_layer.build((n, h, w, self.filters))
        self.built = True

    def call(self, inputs, training=None):
        shape = tf.shape(inputs)
        size = (shape[1], shape[2])
        priors = []
        for bin_size, conv, bn in zip(self.bins, self.stage_convs, self.stage_bns):
            y = adaptive_average_pool2d(inputs, bin_size)
            y = bn(conv(y), training=training)
            if self._branch_activation_fn is not None:
                y = self._branch_activation_fn(y)
            priors.append(resize_bilinear(y, size, self.align_corners))
        priors.append(inputs)
        y = tf.concat(priors, axis=-1)
        y = self.bottleneck_bn(self.bottleneck_conv(y), training=training)
        y = tf.nn.relu(y)
        return self.dropout_layer(y, training=training)

    def compute_output_shape(self, input_shape):
        n, h, w, _ = _check_nhwc(self, input_shape)
        return (n, h, w, self.filters)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "filters": self.filters,
                "bins": list(self.bins),
                "branch_filters": self.branch_filters,
                "branch_activation": self.branch_activation,
                "dropout": self.dropout,
                "align_corners": self.align_corners,
                "sync_bn": self.sync_bn,
            }
        )
        return config
