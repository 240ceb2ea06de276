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

Adaptive average pooling with PyTorch's bins is the kernel
`keras_gald.ops.adaptive_pool.adaptive_average_pool2d` (re-exported here).
"""

import keras

from keras_gald.layers.conv_bn_relu import ConvBNReLU
from keras_gald.layers.validation import check_nhwc as _check_nhwc
from keras_gald.ops.adaptive_pool import adaptive_average_pool2d
from keras_gald.ops.resize import resize_bilinear

__all__ = ["PSP", "adaptive_average_pool2d"]


@keras.saving.register_keras_serializable(package="keras_gald")
class PSP(keras.layers.Layer):
    """Pyramid pooling module, exactly as in the GALD authors' `PSPModule`.

    For each bin size `b`: adaptive average pool to `b x b` -> 1x1 conv
    (`branch_filters`, no bias) -> BN [-> `branch_activation`] -> bilinear
    upsample to `H x W`. Then `concat([branch_1, ..., branch_k, input])` ->
    3x3 conv (`filters`, no bias) -> BN -> ReLU -> channel dropout
    (`SpatialDropout2D`, PyTorch's `Dropout2d`).

    The bottleneck's 3x3 conv is the library's `Conv2D` (its fast
    kernels for wide 3x3 convs); the pyramid's 1x1 convs see `b x b` maps and
    stay `keras.layers.Conv2D`. Weights keep their historical names
    (`stages_{i}_conv`, `stages_{i}_bn`, `bottleneck_conv`, `bottleneck_bn`).

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

        # stages[i] = (AdaptiveAvgPool, conv, BN) in the authors' code. These
        # convs stay stock `keras.layers.Conv2D`: they see b x b maps (nothing
        # to gain), and Keras saves list items by class name, so another
        # class would rename them in weight files.
        branch = dict(sync_bn=self.sync_bn, dtype=self.dtype_policy)
        self.stages = [
            ConvBNReLU(self.branch_width, 1, name=f"stages_{i}", relu=False,
                       conv_layer=keras.layers.Conv2D, **branch)
            for i in range(len(bins))
        ]
        self.stage_convs = [stage.conv for stage in self.stages]
        self.stage_bns = [stage.bn for stage in self.stages]
        self.bottleneck = ConvBNReLU(self.filters, 3, name="bottleneck", owner=self, **branch)
        self.dropout_layer = keras.layers.SpatialDropout2D(
            self.dropout, name="dropout", dtype=self.dtype_policy
        )

    @property
    def branch_width(self):
        """Channels of each pyramid branch."""
        return self.filters if self.branch_filters is None else self.branch_filters

    def build(self, input_shape):
        n, h, w, c = _check_nhwc(self, input_shape)
        for stage in self.stages:
            stage.build((n, None, None, c))
        self.bottleneck.build((n, h, w, len(self.bins) * self.branch_width + c))
        self.dropout_layer.build((n, h, w, self.filters))
        self.built = True

    def _prior(self, inputs, bin_size, stage, training):
        """One pyramid level at `bin_size x bin_size`: pool, project (BN, no ReLU
        in the authors' code)."""
        y = stage(adaptive_average_pool2d(inputs, bin_size), training=training)
        if self._branch_activation_fn is not None:
            y = self._branch_activation_fn(y)
        return y

    def call(self, inputs, training=None):
        _, h, w, _ = keras.ops.shape(inputs)
        priors = [
            resize_bilinear(self._prior(inputs, b, stage, training), (h, w), self.align_corners)
            for b, stage in zip(self.bins, self.stages)
        ]
        # The input comes last (the authors' order; their weights depend on it).
        y = self.bottleneck(keras.ops.concatenate([*priors, inputs], axis=-1), training=training)
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
