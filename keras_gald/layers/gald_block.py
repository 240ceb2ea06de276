"""The GALD authors' `GALDBlock` (v1): downsample -> CGNL -> upsample -> LDv1."""

import keras

from keras_gald.layers.cgnl import CGNL
from keras_gald.layers.conv_bn_relu import ConvBNReLU
from keras_gald.layers.ldv1 import AUTHORS_LDV1_OPTIONS, LDv1
from keras_gald.ops.resize import resize_bilinear

DOWN_PADDINGS = ("valid", "symmetric")


@keras.saving.register_keras_serializable(package="keras_gald")
class GALDBlockV1(keras.layers.Layer):
    """Global aggregation then local distribution, as the authors' `GALDBlock`.

    1. `down`: depthwise 3x3 conv, stride 2, with bias (authors: PyTorch
       padding 0, i.e. `down_padding="valid"`) -> BatchNorm -> ReLU;
    2. `long_relation`: `CGNL(planes, groups, use_scale)`;
    3. bilinear upsample back to the input size (`align_corners=True` like
       the authors) = `u`;
    4. `local_attention`: `LDv1` on `u`; the block returns `LD(u) + u`,
       i.e. `2u + u*M` (the authors' code; the paper's Eq. (2) writes
       `M*X_g + X_g`, which is `LD(u)` alone).

    Every default reproduces the authors' module (GALD-DGCNet, commit
    be7ebfe); the `ld_*` arguments default to `AUTHORS_LDV1_OPTIONS`
    (`padding="valid"`, `mask_activation="relu_sigmoid"`), so with the
    defaults the input must be at least 15x15 (`LDv1` raises a clear error
    otherwise). Pass `ld_padding="symmetric"` (and `down_padding="symmetric"`)
    for smaller feature maps.

    `compute_mask_map(x)` returns the LDv1 mask `M` computed inside the block
    (same shape as `x`), for visualisation.

    Args:
        planes: CGNL inner channels (the authors: 256 for 512 input channels).
        groups: CGNL groups (8).
        use_scale: CGNL affinity scaling (authors: `False`).
        down_padding: `"valid"` (authors, PyTorch padding 0) or `"symmetric"`
            (zero-pad 1 on every side, PyTorch padding 1) for `down`.
        align_corners: upsampling convention after the CGNL (authors: `True`).
        ld_downsample_rate, ld_padding, ld_mask_activation, ld_align_corners:
            the `LDv1` options (`downsample_rate`, `padding`,
            `mask_activation`, `align_corners`); defaults are the authors'.
        sync_bn: synchronized BatchNorm in `down` and the LDv1 stack.
        **kwargs: `keras.layers.Layer` arguments.

    Input shape: `(N, H, W, C)`. Output shape: `(N, H, W, C)`.

    Example:
    >>> block = GALDBlockV1(32, groups=8)  # the fixture's GALDBlock(64, 32)
    >>> block(keras.ops.ones((1, 33, 47, 64))).shape
    TensorShape([1, 33, 47, 64])
    """

    def __init__(
        self,
        planes,
        groups=8,
        use_scale=False,
        down_padding="valid",
        align_corners=True,
        ld_downsample_rate=AUTHORS_LDV1_OPTIONS["downsample_rate"],
        ld_padding=AUTHORS_LDV1_OPTIONS["padding"],
        ld_mask_activation=AUTHORS_LDV1_OPTIONS["mask_activation"],
        ld_align_corners=AUTHORS_LDV1_OPTIONS["align_corners"],
        sync_bn=False,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if down_padding not in DOWN_PADDINGS:
            raise ValueError(
                f"GALDBlockV1: down_padding must be one of {DOWN_PADDINGS}, got {down_padding!r}"
            )
        self.planes = int(planes)
        self.groups = int(groups)
        self.use_scale = bool(use_scale)
        self.down_padding = down_padding
        self.align_corners = bool(align_corners)
        self.ld_downsample_rate = int(ld_downsample_rate)
        self.ld_padding = ld_padding
        self.ld_mask_activation = ld_mask_activation
        self.ld_align_corners = bool(ld_align_corners)
        self.sync_bn = bool(sync_bn)
        # Authors' `down` = Sequential(depthwise 3x3 conv, stride 2, BN, ReLU);
        # "symmetric" zero-pads the input by 1 first (`_global`).
        self.down = ConvBNReLU(
            None, 3, name="down", owner=self, strides=2, padding="valid", use_bias=True,
            depthwise=True, sync_bn=self.sync_bn, dtype=self.dtype_policy,
        )
        self.long_relation = CGNL(
            self.planes,
            groups=self.groups,
            use_scale=self.use_scale,
            dtype=self.dtype_policy,
            name="long_relation",
        )
        self.local_attention = LDv1(
            downsample_rate=self.ld_downsample_rate,
            padding=self.ld_padding,
            mask_activation=self.ld_mask_activation,
            align_corners=self.ld_align_corners,
            sync_bn=self.sync_bn,
            dtype=self.dtype_policy,
            name="local_attention",
        )

    def _down_shape(self, input_shape):
        pad = 2 if self.down_padding == "symmetric" else 0
        padded = tuple(
            None if s is None else s + pad if i in (1, 2) else s
            for i, s in enumerate(input_shape)
        )
        if any(s is not None and s < 3 for s in padded[1:3]):
            raise ValueError(
                f"GALDBlockV1(down_padding='valid') needs inputs of at least 3x3; "
                f"got {input_shape[1]}x{input_shape[2]}"
            )
        return padded

    def build(self, input_shape):
        input_shape = tuple(input_shape)
        padded = self._down_shape(input_shape)
        down_shape = self.down.build(padded)
        self.long_relation.build(down_shape)
        self.local_attention.build(input_shape)
        self.built = True

    def _global(self, x, training=None):
        """`u`: down -> CGNL -> upsample to the input size."""
        _, h, w, _ = keras.ops.shape(x)
        y = x
        if self.down_padding == "symmetric":
            y = keras.ops.pad(y, ((0, 0), (1, 1), (1, 1), (0, 0)))
        y = self.long_relation(self.down(y, training=training))
        return resize_bilinear(y, (h, w), self.align_corners)

    def call(self, inputs, training=None):
        u = self._global(inputs, training=training)
        return self.local_attention(u, training=training) + u

    def compute_mask_map(self, inputs, training=None):
        """Returns the LDv1 mask `M` the block applies to its input `inputs`."""
        x = keras.ops.cast(keras.ops.convert_to_tensor(inputs), self.compute_dtype)
        if not self.built:
            self.build(tuple(x.shape))
        u = self._global(x, training=training)
        return self.local_attention.compute_mask_map(u, training=training)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "planes": self.planes,
                "groups": self.groups,
                "use_scale": self.use_scale,
                "down_padding": self.down_padding,
                "align_corners": self.align_corners,
                "ld_downsample_rate": self.ld_downsample_rate,
                "ld_padding": self.ld_padding,
                "ld_mask_activation": self.ld_mask_activation,
                "ld_align_corners": self.ld_align_corners,
                "sync_bn": self.sync_bn,
            }
        )
        return config
