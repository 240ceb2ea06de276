"""LDv1: the GALD paper's local distribution mask (Eq. (1)-(2)).

`M = sigmoid(upsample(W_d X_g))`, `X_gald = M * X_g + X_g`, where `W_d` is a
stack of strided depthwise 3x3 convolutions with overall downsampling rate
`d`. The authors' released `LocalAttenModule` differs from the paper in three
details; each is an explicit option here (see `LDv1`), and
`AUTHORS_LDV1_OPTIONS` collects the settings that reproduce their module.
"""

import math

import keras
from keras import ops

from keras_gald.layers.norm import batch_norm
from keras_gald.ops.local_attention import assert_min_height_width
from keras_gald.ops.resize import resize_bilinear

PADDINGS = ("symmetric", "valid")
MASK_ACTIVATIONS = ("sigmoid", "relu_sigmoid")

# Options that make `LDv1` compute exactly what the authors'
# `LocalAttenModule` (GALD-DGCNet, libs/models/GALDNet.py) computes.
AUTHORS_LDV1_OPTIONS = {
    "downsample_rate": 8,
    "padding": "valid",
    "mask_activation": "relu_sigmoid",
    "align_corners": True,
}


def num_stride2_convs(downsample_rate):
    """Number of stride-2 convs for `downsample_rate` (a power of two >= 2)."""
    rate = int(downsample_rate)
    if rate < 2 or rate & (rate - 1) or rate != downsample_rate:
        raise ValueError(
            f"downsample_rate must be a power of two >= 2, got {downsample_rate!r}"
        )
    return int(math.log2(rate))


def min_valid_size(downsample_rate):
    """Smallest H (and W) that `n` unpadded 3x3 stride-2 convs accept: 2**(n+1) - 1."""
    return 2 ** (num_stride2_convs(downsample_rate) + 1) - 1


@keras.saving.register_keras_serializable(package="keras_gald")
class LDv1(keras.layers.Layer):
    """Local distribution v1: a per-pixel, per-channel sigmoid mask on GA features.

    `n = log2(downsample_rate)` blocks of [depthwise 3x3 conv, stride 2, with
    bias -> BatchNorm -> ReLU] shrink the input by `downsample_rate`; the
    result is bilinearly upsampled to the input size and squashed into the
    mask `M`; the layer returns `M * x + x` (paper Eq. (2)).

    Defaults follow the paper and work on any input size; the authors'
    released code differs in three places, each an option:

    | option | default (paper / library) | authors' `LocalAttenModule` |
    |---|---|---|
    | `padding` | `"symmetric"`: zero-pad 1 on every side, = PyTorch `padding=1` | `"valid"` (PyTorch `padding=0`): needs H, W >= `2**(n+1)-1` (15 for rate 8) |
    | `mask_activation` | `"sigmoid"`: the last block has no ReLU, `M = sigmoid(.)` in (0, 1) as in Eq. (1) | `"relu_sigmoid"`: the last block keeps its ReLU, so `M` lies in [0.5, 1) |
    | `align_corners` | `False` (half-pixel centres, the library's convention) | `True` |

    `LDv1(C, **AUTHORS_LDV1_OPTIONS)` reproduces the authors' module exactly.
    With `padding="valid"`, an input smaller than the minimum raises a
    `ValueError` (static shapes) or, in TensorFlow graphs with shapes known
    only at run time, `tf.errors.InvalidArgumentError`, naming the minimum size.

    `compute_mask_map(x)` returns the mask `M` itself (e.g. to plot the
    channel-mean mask of the paper's Fig. 7).

    Args:
        downsample_rate: overall stride `d` of the depthwise stack, a power of
            two >= 2 (8 = three stride-2 convs, the paper's and authors' setting).
        padding: `"symmetric"` (default) or `"valid"`, see above.
        mask_activation: `"sigmoid"` (default, paper) or `"relu_sigmoid"`
            (authors), see above.
        align_corners: bilinear upsampling convention, see above.
        sync_bn: use synchronized (cross-replica) BatchNorm.
        **kwargs: `keras.layers.Layer` arguments (`name`, `dtype`, ...).

    Input shape: `(N, H, W, C)`. Output shape: `(N, H, W, C)`.

    Example:
    >>> ld = LDv1()  # paper defaults: works on a 9x13 map (1/8 of 65x97)
    >>> tuple(ld(keras.ops.ones((1, 9, 13, 32))).shape)
    (1, 9, 13, 32)
    >>> authors = LDv1(**AUTHORS_LDV1_OPTIONS)  # needs H, W >= 15
    """

    def __init__(
        self,
        downsample_rate=8,
        padding="symmetric",
        mask_activation="sigmoid",
        align_corners=False,
        sync_bn=False,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.num_convs = num_stride2_convs(downsample_rate)
        self.downsample_rate = int(downsample_rate)
        if padding not in PADDINGS:
            raise ValueError(f"LDv1: padding must be one of {PADDINGS}, got {padding!r}")
        if mask_activation not in MASK_ACTIVATIONS:
            raise ValueError(
                f"LDv1: mask_activation must be one of {MASK_ACTIVATIONS}, got {mask_activation!r}"
            )
        self.padding = padding
        self.mask_activation = mask_activation
        self.align_corners = bool(align_corners)
        self.sync_bn = bool(sync_bn)
        # Authors' `dconv{i}` = Sequential(conv, BN, ReLU), i = 1..n.
        self.dconv_convs = [
            keras.layers.DepthwiseConv2D(
                3,
                strides=2,
                padding="valid",
                use_bias=True,
                dtype=self.dtype_policy,
                name=f"dconv{i}_conv",
            )
            for i in range(1, self.num_convs + 1)
        ]
        self.dconv_bns = [
            batch_norm(name=f"dconv{i}_bn", synchronized=self.sync_bn, dtype=self.dtype_policy)
            for i in range(1, self.num_convs + 1)
        ]

    @property
    def min_input_size(self):
        """Smallest accepted H and W (1 with symmetric padding)."""
        return min_valid_size(self.downsample_rate) if self.padding == "valid" else 1

    def _size_error(self, height=None, width=None):
        got = "a smaller input" if height is None else f"{height}x{width}"
        return (
            f"LDv1(padding='valid', downsample_rate={self.downsample_rate}) needs inputs of "
            f"at least {self.min_input_size}x{self.min_input_size} ({self.num_convs} unpadded "
            f"3x3 stride-2 convs); got {got}. Use padding='symmetric' for small "
            f"feature maps."
        )

    def _check_static_size(self, shape):
        height, width = shape[1], shape[2]
        for size in (height, width):
            if size is not None and size < self.min_input_size:
                raise ValueError(self._size_error(height, width))

    def build(self, input_shape):
        input_shape = tuple(input_shape)
        self._check_static_size(input_shape)
        shape = input_shape
        pad = 2 if self.padding == "symmetric" else 0
        for conv, bn in zip(self.dconv_convs, self.dconv_bns):
            padded = (
                shape[0],
                None if shape[1] is None else shape[1] + pad,
                None if shape[2] is None else shape[2] + pad,
                shape[3],
            )
            conv.build(padded)
            shape = conv.compute_output_shape(padded)
            bn.build(shape)
        self.built = True

    def compute_mask_map(self, inputs, training=None):
        """Returns the mask `M` (same shape as `inputs`), before `M * x + x`.

        Takes concrete tensors / arrays (eager, inside `tf.function` or
        `jax.jit`), not symbolic `keras.Input`s; BatchNorm runs in inference
        mode unless `training=True`.
        """
        x = ops.convert_to_tensor(inputs)
        if keras.backend.standardize_dtype(x.dtype) != self.compute_dtype:
            x = ops.cast(x, self.compute_dtype)
        if not self.built:
            self.build(tuple(x.shape))
        self._check_static_size(tuple(x.shape))
        _, height, width, _ = ops.shape(x)
        y = x
        if self.padding == "valid":
            # Sizes known only at run time (TensorFlow graphs): checked then.
            y = assert_min_height_width(y, self.min_input_size, self._size_error())
        # Eq. (1): W_d, n blocks of strided depthwise conv + BN + ReLU ...
        last = self.num_convs - 1
        for i, (conv, bn) in enumerate(zip(self.dconv_convs, self.dconv_bns)):
            if self.padding == "symmetric":
                y = ops.pad(y, ((0, 0), (1, 1), (1, 1), (0, 0)))
            y = bn(conv(y), training=training)
            if i < last or self.mask_activation == "relu_sigmoid":
                y = ops.relu(y)
        # ... upsampled back to the input size and squashed into M.
        y = resize_bilinear(y, (height, width), self.align_corners)
        return ops.sigmoid(y)

    def call(self, inputs, training=None):
        mask = self.compute_mask_map(inputs, training=training)
        return inputs * mask + inputs  # Eq. (2): X_gald = M * X_g + X_g

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "downsample_rate": self.downsample_rate,
                "padding": self.padding,
                "mask_activation": self.mask_activation,
                "align_corners": self.align_corners,
                "sync_bn": self.sync_bn,
            }
        )
        return config
