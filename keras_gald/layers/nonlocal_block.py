"""Embedded-Gaussian non-local block (Wang et al., "Non-local neural networks", 2018).

`z = x + BN(W(softmax(theta(x) phi(x)^T) g(x)))` over all `N = H * W`
positions. The BN's gamma starts at zero, so a freshly built block is the
identity and can be dropped into a pretrained network.

Sub-sampling: with `downsample=True`, phi and g are 2x2 max-pooled with
stride 2 in *ceil* mode (TF `"same"` padding; padded cells never win the max),
so odd sizes keep their last row/column and even 1xW inputs work. The
reference PyTorch implementation floors (`MaxPool2d(2)`), silently dropping the
last row/column of odd maps and failing on a 1-pixel side; on even sizes the
two agree.
"""

import keras

from keras_gald.layers.conv import Conv2D
from keras_gald.layers.conv_bn_relu import ConvBNReLU
from keras_gald.layers.validation import check_nhwc as _check_nhwc


@keras.saving.register_keras_serializable(package="keras_gald")
class NonLocal(keras.layers.Layer):
    """Embedded-Gaussian non-local block with a zero-initialised residual.

    `theta, phi, g`: 1x1 convs (with bias, as in Wang et al.) `C -> inter_channels`;
    phi and g optionally 2x2 max-pooled (stride 2, ceil mode); attention
    `softmax_j(theta_i . phi_j)` (no scaling, computed in float32);
    `y = attention @ g`; `W`: 1x1 conv (no bias, it is followed by BN)
    `inter_channels -> C`; BN with `gamma = 0` at init; output `x + BN(W(y))`.

    Memory is `O((H W)^2 / 4)` with `downsample=True` (`O((H W)^2)` without):
    use it on 1/8- or 1/16-resolution features.

    Args:
        inter_channels: embedding channels; `None` = `max(C // 2, 1)`.
        downsample: max-pool phi and g by 2 (Wang et al.'s "sub-sampling").
        sync_bn: cross-replica BatchNorm.
        **kwargs: `keras.layers.Layer` arguments (`name`, `dtype`, ...).

    Input shape: `(N, H, W, C)`. Output shape: `(N, H, W, C)`.

    Example:
    >>> block = NonLocal(inter_channels=32)
    >>> block(keras.ops.ones((2, 33, 47, 64))).shape
    TensorShape([2, 33, 47, 64])
    """

    def __init__(self, inter_channels=None, downsample=True, sync_bn=False, **kwargs):
        super().__init__(**kwargs)
        if inter_channels is not None and int(inter_channels) < 1:
            raise ValueError(f"inter_channels must be positive or None, got {inter_channels}")
        self.inter_channels = None if inter_channels is None else int(inter_channels)
        self.downsample = bool(downsample)
        self.sync_bn = bool(sync_bn)

    def _inter(self, channels):
        if self.inter_channels is not None:
            return self.inter_channels
        return max(channels // 2, 1)

    def build(self, input_shape):
        n, h, w, c = _check_nhwc(self, input_shape)
        inter = self._inter(c)
        policy = self.dtype_policy
        # 1x1 embeddings (Wang et al. keep their biases).
        self.theta = Conv2D(inter, 1, name="theta", dtype=policy)
        self.phi = Conv2D(inter, 1, name="phi", dtype=policy)
        self.g = Conv2D(inter, 1, name="g", dtype=policy)
        self.pool = keras.layers.MaxPooling2D(2, 2, padding="same", name="pool", dtype=policy)
        # W: 1x1 conv + BN with gamma = 0, no ReLU (the block starts as identity).
        self.w_block = ConvBNReLU(
            c, 1, name="W", relu=False, gamma_initializer="zeros",
            sync_bn=self.sync_bn, dtype=policy,
        )
        self.w_conv, self.w_bn = self.w_block.conv, self.w_block.bn
        for conv in (self.theta, self.phi, self.g):
            conv.build((n, h, w, c))
        self.w_block.build((n, h, w, inter))
        self.built = True

    def call(self, inputs, training=None):
        n, h, w, _ = keras.ops.shape(inputs)
        theta = self.theta(inputs)
        phi, g = self.phi(inputs), self.g(inputs)
        if self.downsample:  # sub-sampling: attend to a 2x-pooled grid of keys
            phi, g = self.pool(phi), self.pool(g)
        inter = theta.shape[-1]
        theta = keras.ops.reshape(theta, (n, h * w, inter))
        phi = keras.ops.reshape(phi, (n, -1, inter))
        g = keras.ops.reshape(g, (n, -1, inter))
        # f(x_i, x_j) = softmax_j(theta_i . phi_j), in float32 (a sum over HW').
        logits = keras.ops.matmul(theta, keras.ops.transpose(phi, (0, 2, 1)))
        attention = keras.ops.softmax(keras.ops.cast(logits, "float32"), axis=-1)
        y = keras.ops.matmul(keras.ops.cast(attention, g.dtype), g)  # (N, HW, inter)
        y = keras.ops.reshape(y, (n, h, w, inter))
        return inputs + self.w_block(y, training=training)

    def compute_output_shape(self, input_shape):
        return _check_nhwc(self, input_shape)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "inter_channels": self.inter_channels,
                "downsample": self.downsample,
                "sync_bn": self.sync_bn,
            }
        )
        return config
