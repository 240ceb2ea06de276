"""Atrous spatial pyramid pooling (DeepLabv3, Chen et al. 2017), the GALD authors' way.

Follows the authors' `operators.ASPPModule` (github lxtGH/GALD-DGCNet,
`libs/core/operators.py`): branches are concatenated in the order
`[image pooling, 1x1, rate r1, rate r2, rate r3]` (DeepLabv3 puts image
pooling last; the order only matters for loading weights), every conv has no
bias and is followed by BN + ReLU, and the projection is followed by channel
dropout (PyTorch `Dropout2d`, here `SpatialDropout2D`).

Dilation rates: (12, 24, 36) for output stride 8 (GALD's dilated ResNet, the
default); DeepLabv3 uses (6, 12, 18) at output stride 16.
"""

import keras

from keras_gald.layers.conv_bn_relu import ConvBNReLU
from keras_gald.layers.validation import check_nhwc as _check_nhwc
from keras_gald.ops.adaptive_pool import adaptive_average_pool2d
from keras_gald.ops.resize import resize_bilinear


@keras.saving.register_keras_serializable(package="keras_gald")
class ASPP(keras.layers.Layer):
    """Atrous spatial pyramid pooling, as the GALD authors' `ASPPModule`.

    Branches (each conv without bias, then BN + ReLU), in concatenation order:
    1. image pooling: global average -> 1x1 conv -> BN -> ReLU -> bilinear
       upsample to `H x W` (authors' `conv1`);
    2. 1x1 conv (authors' `conv2`);
    3. one 3x3 conv per rate in `dilation_rates` (authors' `conv3`..`conv5`),
       `"same"` padding (= PyTorch `padding=rate`).
    Then concat -> 1x1 conv (`filters`) -> BN -> ReLU -> channel dropout.

    Each conv -> BN -> ReLU is a `ConvBNReLU` on the library's `Conv2D`
    (native dilated kernels; 1x1 gradients as two matmuls), with the weights
    of `keras.layers.Conv2D` under the historical names (`conv1_conv`,
    `conv1_bn`, ..., `bottleneck_bn`).

    Args:
        filters: output channels (the authors' `out_features`).
        branch_filters: channels of every branch (the authors'
            `inner_features`); `None` = `filters`.
        dilation_rates: rates of the 3x3 branches; (12, 24, 36) for output
            stride 8 (default, GALD), (6, 12, 18) for output stride 16.
        dropout: channel-dropout rate after the projection.
        align_corners: bilinear convention of the image-pooling upsample
            (a 1x1 map, so both conventions give the same broadcast).
        sync_bn: cross-replica BatchNorm.
        **kwargs: `keras.layers.Layer` arguments (`name`, `dtype`, ...).

    Input shape: `(N, H, W, C)`. Output shape: `(N, H, W, filters)`.

    Example:
    >>> aspp = ASPP(filters=64, branch_filters=32, dilation_rates=(6, 12, 18))
    >>> aspp(keras.ops.zeros((2, 33, 47, 128))).shape
    TensorShape([2, 33, 47, 64])
    """

    def __init__(
        self,
        filters=256,
        branch_filters=None,
        dilation_rates=(12, 24, 36),
        dropout=0.1,
        align_corners=True,
        sync_bn=False,
        **kwargs,
    ):
        super().__init__(**kwargs)
        rates = tuple(int(r) for r in dilation_rates)
        if not rates or min(rates) < 1:
            raise ValueError(
                f"dilation_rates must be a non-empty sequence of positive ints, got {dilation_rates}"
            )
        if int(filters) < 1:
            raise ValueError(f"filters must be positive, got {filters}")
        if branch_filters is not None and int(branch_filters) < 1:
            raise ValueError(f"branch_filters must be positive or None, got {branch_filters}")
        if not 0.0 <= float(dropout) < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        self.filters = int(filters)
        self.branch_filters = None if branch_filters is None else int(branch_filters)
        self.dilation_rates = rates
        self.dropout = float(dropout)
        self.align_corners = bool(align_corners)
        self.sync_bn = bool(sync_bn)

        # The authors' Sequentials, under their Keras names (`<name>_conv`,
        # `<name>_bn`): conv1 = image pooling (1x1 conv on the pooled vector),
        # conv2 = 1x1, conv3.. = 3x3 at each rate, bottleneck = 1x1 projection.
        branch = dict(sync_bn=self.sync_bn, dtype=self.dtype_policy)
        width = self.branch_width
        self.image_pool = ConvBNReLU(width, 1, name="conv1", owner=self, **branch)
        self.pointwise = ConvBNReLU(width, 1, name="conv2", owner=self, **branch)
        self.atrous = [
            ConvBNReLU(width, 3, name=f"conv{3 + i}", dilation_rate=rate, **branch)
            for i, rate in enumerate(rates)
        ]
        # Lists, as before: Keras saves list items by class name and position.
        self.atrous_convs = [block.conv for block in self.atrous]
        self.atrous_bns = [block.bn for block in self.atrous]
        self.bottleneck = ConvBNReLU(self.filters, 1, name="bottleneck", owner=self, **branch)
        self.dropout_layer = keras.layers.SpatialDropout2D(
            self.dropout, name="dropout", dtype=self.dtype_policy
        )

    @property
    def branch_width(self):
        """Channels of each branch."""
        return self.filters if self.branch_filters is None else self.branch_filters

    def build(self, input_shape):
        n, h, w, c = _check_nhwc(self, input_shape)
        self.image_pool.build((n, 1, 1, c))
        for block in (self.pointwise, *self.atrous):
            block.build((n, h, w, c))
        self.bottleneck.build((n, h, w, (2 + len(self.atrous)) * self.branch_width))
        self.dropout_layer.build((n, h, w, self.filters))
        self.built = True

    def call(self, inputs, training=None):
        _, h, w, _ = keras.ops.shape(inputs)
        # Image pooling: a global average, projected, broadcast back to H x W.
        pooled = self.image_pool(adaptive_average_pool2d(inputs, 1), training=training)
        branches = [resize_bilinear(pooled, (h, w), self.align_corners)]
        branches += [block(inputs, training=training) for block in (self.pointwise, *self.atrous)]
        y = self.bottleneck(keras.ops.concatenate(branches, axis=-1), training=training)
        return self.dropout_layer(y, training=training)

    def compute_output_shape(self, input_shape):
        n, h, w, _ = _check_nhwc(self, input_shape)
        return (n, h, w, self.filters)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "filters": self.filters,
                "branch_filters": self.branch_filters,
                "dilation_rates": list(self.dilation_rates),
                "dropout": self.dropout,
                "align_corners": self.align_corners,
                "sync_bn": self.sync_bn,
            }
        )
        return config
