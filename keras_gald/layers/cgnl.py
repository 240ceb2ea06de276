"""Compact Generalized Non-Local block (Yue et al., NeurIPS 2018), GALD's GA op.

A faithful NHWC port of the GALD authors' `SpatialCGNL` (GALD-DGCNet,
`libs/models/GALDNet.py`): the "dot-product kernel, spatial + channel"
variant, where each channel group collapses to a single scalar affinity.
"""

import keras

from keras_gald.layers.conv import Conv2D

GN_EPSILON = 1e-5


@keras.saving.register_keras_serializable(package="keras_gald")
class CGNL(keras.layers.Layer):
    """Compact generalized non-local block, exactly as the authors' `SpatialCGNL`.

    With `C` input channels and `planes` inner channels split into `groups`
    groups of `c = planes // groups` channels:

    1. `t, p, g = conv1x1(x)` (no bias, `C -> planes`);
    2. per sample and group, one scalar `att = sum_{h,w,c} p * g`
       (divided by `sqrt(c * h * w)` when `use_scale=True`, the CGNL paper's
       option; the authors run GALD with `use_scale=False`);
    3. the group's output is `att * t`;
    4. `z`: grouped (`groups`) 1x1 conv `planes -> C` without bias,
       `GroupNorm(groups, eps=1e-5)`, plus the input.

    The affinity is a sum over `c*h*w` products, so it is always computed in
    float32 (also under `mixed_bfloat16`), and `att * t` is formed in float32
    before returning to the compute dtype.

    Note: because `z`'s groups coincide with GroupNorm's groups, GroupNorm
    normalizes each group's `att * t` back to unit scale; only the sign of
    `att` (and its size relative to `sqrt(eps)`) reaches the output. This is
    the authors' design and is reproduced as is.

    Args:
        planes: inner channels of `t`, `p`, `g`; divisible by `groups`.
        groups: channel groups (the authors use 8). `C` must also be
            divisible by `groups`.
        use_scale: divide the affinity by `sqrt(c * h * w)`. Default `False`
            (the authors' setting).
        **kwargs: `keras.layers.Layer` arguments (`name`, `dtype`, ...).

    Input shape: `(N, H, W, C)`. Output shape: `(N, H, W, C)`.

    Example:
    >>> cgnl = CGNL(32, groups=8)
    >>> cgnl(keras.ops.zeros((2, 16, 16, 64))).shape
    TensorShape([2, 16, 16, 64])
    """

    def __init__(self, planes, groups=8, use_scale=False, **kwargs):
        super().__init__(**kwargs)
        self.planes = int(planes)
        self.groups = int(groups)
        self.use_scale = bool(use_scale)
        if self.groups < 1:
            raise ValueError(f"CGNL: groups must be >= 1, got {groups}")
        if self.planes % self.groups:
            raise ValueError(
                f"CGNL: planes ({self.planes}) must be divisible by groups ({self.groups})"
            )
        conv_kwargs = dict(kernel_size=1, use_bias=False, dtype=self.dtype_policy)
        self.t = Conv2D(self.planes, name="t", **conv_kwargs)
        self.p = Conv2D(self.planes, name="p", **conv_kwargs)
        self.g = Conv2D(self.planes, name="g", **conv_kwargs)
        # `z` and `gn` depend on the input channels: created in `build`.
        self.z = None
        self.gn = None

    def build(self, input_shape):
        channels = input_shape[-1]
        if channels is None:
            raise ValueError("CGNL needs a known channel dimension")
        if channels % self.groups:
            raise ValueError(
                f"CGNL: input channels ({channels}) must be divisible by groups ({self.groups})"
            )
        self.z = keras.layers.Conv2D(
            channels,
            kernel_size=1,
            groups=self.groups,
            use_bias=False,
            dtype=self.dtype_policy,
            name="z",
        )
        self.gn = keras.layers.GroupNormalization(
            groups=self.groups, epsilon=GN_EPSILON, dtype=self.dtype_policy, name="gn"
        )
        for conv in (self.t, self.p, self.g):
            conv.build(input_shape)
        inner_shape = (*input_shape[:-1], self.planes)
        self.z.build(inner_shape)
        self.gn.build(tuple(input_shape))
        self.built = True

    def _aggregate(self, x):
        """Returns the concatenated group outputs `att * t` (before `z`)."""
        t, p, g = self.t(x), self.p(x), self.g(x)
        n, h, w, _ = keras.ops.shape(t)
        c = self.planes // self.groups

        def grouped(v):
            # (N, H, W, planes) -> (N, H, W, groups, c): contiguous channel
            # groups, PyTorch's `torch.split(t, c, dim=1)`.
            return keras.ops.reshape(keras.ops.cast(v, "float32"), (n, h, w, self.groups, c))

        # One scalar affinity per sample and group: sum over h, w, c of p * g.
        att = keras.ops.sum(grouped(p) * grouped(g), axis=(1, 2, 4))  # (N, groups)
        if self.use_scale:
            att = att / keras.ops.sqrt(keras.ops.cast(c * h * w, "float32"))
        out = grouped(t) * att[:, None, None, :, None]
        out = keras.ops.reshape(out, (n, h, w, self.planes))
        return keras.ops.cast(out, self.compute_dtype)

    def _grouped_pointwise(self, y):
        """`self.z(y)` written as one batched matmul over the groups.

        Keras' TF backend runs grouped convolutions on CPU inside an XLA
        function that tf2onnx cannot convert; a batched matmul with the same
        kernel (contiguous groups, like PyTorch) exports everywhere.
        """
        n, h, w, _ = keras.ops.shape(y)
        groups, c = self.groups, self.planes // self.groups
        out_per_group = self.z.filters // groups
        kernel = keras.ops.cast(self.z.kernel, y.dtype)  # (1, 1, c, groups * out_per_group)
        kernel = keras.ops.transpose(
            keras.ops.reshape(kernel, (c, groups, out_per_group)), (1, 0, 2)
        )  # (groups, c, out_per_group)
        y = keras.ops.transpose(keras.ops.reshape(y, (-1, groups, c)), (1, 0, 2))  # (groups, NHW, c)
        out = keras.ops.matmul(y, kernel)  # (groups, NHW, out_per_group)
        out = keras.ops.transpose(out, (1, 0, 2))
        return keras.ops.reshape(out, (n, h, w, self.z.filters))

    def call(self, inputs):
        y = self._aggregate(inputs)
        return inputs + self.gn(self._grouped_pointwise(y))

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    def get_config(self):
        config = super().get_config()
        config.update(
            {"planes": self.planes, "groups": self.groups, "use_scale": self.use_scale}
        )
        return config
