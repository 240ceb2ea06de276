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
import tensorflow as tf

from keras_gald.layers.conv import DilatedConv2D
from keras_gald.layers.norm import batch_norm
from keras_gald.layers.validation import check_nhwc as _check_nhwc
from keras_gald.ops.resize import resize_bilinear




@keras.saving.register_keras_serializable(package="keras_gald")
class ASPP(keras.layers.Layer):
    """Atrous spatial pyramid pooling, as the GALD authors' `ASPPModule`.

    Branches (each conv without bias, then BN + ReLU), in concatenation order:
    1. image pooling: global average -> 1x1 conv -> BN -> ReLU -> bilinear
       upsample to `H x W` (authors' `conv1`);
    2. 1x1 conv (authors' `conv2`);
    3. one 3x3 conv per rate in `dilation_rates` (authors' `conv3`..`conv5`),
       `DilatedConv2D` with `"same"` padding (= PyTorch `padding=rate`).
    Then concat -> 1x1 conv (`filters`) -> BN -> ReLU -> channel dropout.

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

        width = self.branch_width
        policy = self.dtype_policy

        def bn(name):
            return batch_norm(name=name, synchronized=self.sync_bn, dtype=policy)

        # Authors' conv1 = (AdaptiveAvgPool2d(1), conv, BN): image pooling.
        self.conv1_conv = keras.layers.Conv2D(
            width, 1, use_bias=False, name="conv1_conv", dtype=policy
        )
        self.conv1_bn = bn("conv1_bn")
        # Authors' conv2 = (1x1 conv, BN).
        self.conv2_conv = keras.layers.Conv2D(
            width, 1, use_bias=False, name="conv2_conv", dtype=policy
        )
        self.conv2_bn = bn("conv2_bn")
        # Authors' conv3, conv4, conv5 = (3x3 dilated conv, BN).
        self.atrous_convs = [
            DilatedConv2D(
                width, 3, padding="same", dilation_rate=rate, use_bias=False,
                name=f"conv{3 + i}_conv", dtype=policy,
            )
            for i, rate in enumerate(rates)
        ]
        self.atrous_bns = [bn(f"conv{3 + i}_bn") for i in range(len(rates))]
        self.bottleneck_conv = keras.layers.Conv2D(
            self.filters, 1, use_bias=False, name="bottleneck_conv", dtype=policy
        )
        self.bottleneck_bn = bn("bottleneck_bn")
        self.dropout_layer = keras.layers.SpatialDropout2D(
            self.dropout, name="dropout", dtype=policy
        )

    @property
    def branch_width(self):
        """Channels of each branch."""
        return self.filters if self.branch_filters is None else self.branch_filters

    def build(self, input_shape):
        n, h, w, c = _check_nhwc(self, input_shape)
        width = self.branch_width
        self.conv1_conv.build((n, 1, 1, c))
        self.conv1_bn.build((n, 1, 1, width))
        for conv, bn in [(self.conv2_conv, self.conv2_bn), *zip(self.atrous_convs, self.atrous_bns)]:
            conv.build((n, h, w, c))
            bn.build((n, h, w, width))
        self.bottleneck_conv.build((n, h, w, (2 + len(self.dilation_rates)) * width))
        self.bottleneck_bn.build((n, h, w, self.filters))
        self.dropout_layer.build((n, h, w, self.filters))
        self.built = True

    def call(self, inputs, training=None):
        shape = tf.shape(inputs)
        pooled = tf.reduce_mean(tf.cast(inputs, tf.float32), axis=[1, 2], keepdims=True)
        pooled = tf.cast(pooled, inputs.dtype)
        pooled = tf.nn.relu(self.conv1_bn(self.conv1_conv(pooled), training=training))
        branches = [resize_bilinear(pooled, (shape[1], shape[2]), self.align_corners)]
        for conv, bn in [(self.conv2_conv, self.conv2_bn), *zip(self.atrous_convs, self.atrous_bns)]:
            branches.append(tf.nn.relu(bn(conv(inputs), training=training)))
        y = tf.concat(branches, axis=-1)
        y = tf.nn.relu(self.bottleneck_bn(self.bottleneck_conv(y), training=training))
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
