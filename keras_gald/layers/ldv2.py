"""LDv2: the GALD paper's dynamic local distribution module (Sec. III-B).

Every position `i` of `x = concat(X_g, X_l)` attends over a `k x k`
neighbourhood sampled with dilation `r` (Eq. (6)-(7)):

    X_gald(i) = sum_n softmax_n(q(i) . k(i + d_n)) v(i + d_n)          (Eq. (8))

with `q, k, v` 1x1 projections of `x`. The result is combined with the local
feature `X_l` (Fig. 5(b)) and handed to the segmentation head.

Two implementations compute the same numbers:

* `impl="patches"`: the reference. The `(N, H, W, k*k, heads, d)`
  neighbourhood tensors of keys and values (`tf.image.extract_patches` on
  TensorFlow, `jax.lax.conv_general_dilated_patches` on JAX), then two
  einsums. Simple and obviously right, but it materialises `k^2` (25 by
  default) copies of the key and value maps, forward and backward.
* `impl="slices"` (default): pads the key/value maps once and takes `k^2`
  shifted slices; the logits of neighbour `n` are `sum_c q * shift_n(k)`, the
  output `sum_n w_n * shift_n(v)`. Only `(N, H, W, heads, k^2)` logits and
  weights are stacked. On TensorFlow both primitives carry a custom gradient
  written with the same shifted-slice accumulation (TF's autodiff would keep
  `k^2` full-size gradient tensors alive for one `AddN`); on JAX the slices
  are the steps of a `lax.scan` that JAX differentiates. See
  `keras_gald.ops.local_attention`.
  It also applies the output 1x1 conv before the sum, folded into the value
  projection, when that narrows the summed values (`LDv2.folds_output_projection`).

The kernels live in `keras_gald.ops.local_attention`; this file holds the
weights and Eq. (8) in `keras.ops`, so it runs on the TensorFlow and JAX
backends with the same weights.
"""

import math

import keras
from keras import ops

from keras_gald.layers.conv import Conv2D
from keras_gald.layers.norm import batch_norm
from keras_gald.ops import Policy
from keras_gald.ops.local_attention import (  # noqa: F401  (neighbour_offsets: re-exported)
    assert_same_height_width,
    local_aggregate,
    local_aggregate_reference,
    local_logits,
    local_logits_reference,
    neighbour_offsets,
    valid_neighbours,
    valid_neighbours_reference,
)

_PADDINGS = ("zeros", "mask")
_COMBINES = ("concat", "none")
_IMPLS = ("patches", "slices")
# Logit given to excluded (out-of-image) neighbours under padding="mask".
# exp(-1e9 - max) is exactly 0 in float32; the centre neighbour is always
# inside the image, so every softmax row keeps at least one finite logit.
_MASKED_LOGIT = -1e9


@keras.saving.register_keras_serializable(package="keras_gald")
class LDv2(keras.layers.Layer):
    """Dynamic local distribution (GALD paper, Sec. III-B, Eq. (6)-(8), Fig. 5(b)).

    `x = concat(X_g, X_l)`; `q, k, v` are 1x1 convolutions of `x` (Table II(c):
    query and key both from `X_l || X_g` is the paper's best). Each position
    attends over its `kernel_size x kernel_size` neighbourhood sampled with
    `dilation_rate` (softmax over the `k^2` neighbours, per head), the
    attended values go through a 1x1 conv + BN + ReLU, and the result
    `X_gald` is concatenated with `X_l` (`combine="concat"`, what the
    segmentation head consumes, as Eq. (3) does for LDv1).

    Design choices the paper leaves open (and why):
    * `key_channels=256`: query/key only produce `k^2` scalars per position,
      so a 9x reduction of the 2304 input channels is plenty; `value_channels=512`:
      the values carry the distributed content, so they get the wider bottleneck.
    * Logits are scaled by `1/sqrt(key_channels / num_heads)` (`scale=True`):
      with 256-d unscaled dot products a 25-way softmax saturates to one-hot at
      initialisation and its gradients vanish.
    * Output projection (`out_channels`, default: the channels of `X_g`) with
      BN + ReLU: `X_gald` then has the GA head's width and the BN'd, rectified
      statistics of both ASPP's output and the ResNet feature it is
      concatenated with, so `concat([X_gald, X_l])` is a drop-in for Eq. (3).
    * These widths put the module at the paper's Table IV budget (+2.3M over
      the ASPP model, ResNet-50). Default config, `X_g` 256 + `X_l` 2048
      channels: query 590,080 + key 590,080 + value 1,180,160 (1x1 convs
      with bias, 2304 -> 256/256/512) + out conv 131,072 (512 -> 256, no bias)
      + BN 1,024 (512 trainable, 512 moving statistics) = **2,492,416**
      parameters, 2,491,904 trainable.
    * Softmax, logits and the weighted sum are computed in float32 whatever the
      dtype policy (a bfloat16 sum of 25 weighted terms loses ~3 digits); the
      projections run in the layer's compute dtype.

    Border handling (`padding`): neighbours outside the image are read from a
    zero-padded key/value map.
    * `"zeros"` (the paper's "zero padding"): out-of-image neighbours have key
      and value 0, so logit 0 and contribution 0, and still take part in the
      softmax (they absorb probability mass near borders). The key bias is
      applied before padding, so padding stays exactly zero.
    * `"mask"`: out-of-image neighbours are excluded from the softmax (their
      weight is exactly 0). The key bias then cancels in the softmax (its
      gradient is 0).
    Maps smaller than the dilated extent `(k - 1) * r + 1` are fine: the
    centre neighbour is always inside the image.

    Implementations (`impl`): `"slices"` (default, fast, `k^2` shifted slices of
    a once-padded map with custom gradients; never builds an `N x k^2 x C`
    tensor, forward or backward; folds the output conv into the value
    projection, see `folds_output_projection`) and `"patches"` (reference,
    materialised neighbourhoods). Both give the same values and gradients on
    either backend; both work under `tf.function(jit_compile=True)` and
    `jax.jit`; `"slices"` exports to ONNX (opset 17) with dynamic batch and
    spatial size (TensorFlow).

    Args:
        kernel_size: odd int `k`, neighbourhood is `k x k`. Default 5.
        dilation_rate: int `r`, spacing of the sampled neighbours. Default 3
            (Table II(b): k=5, r=3 is the paper's chosen setting).
        key_channels: query/key width (all heads together). Default 256.
        value_channels: value width (all heads together). Default 512.
        out_channels: width of `X_gald` after the output 1x1 conv + BN + ReLU;
            `None` (default) uses the channels of `X_g`.
        output_projection: `False` drops the output conv/BN/ReLU, so `X_gald` is
            exactly Eq. (8) with `value_channels` channels (`out_channels`
            must then be `None`). Default `True`.
        num_heads: attention heads; `key_channels` and `value_channels` must
            be divisible by it. Default 1 (the paper's single affinity).
        padding: `"zeros"` (default, the paper's) or `"mask"`, see above.
        combine: `"concat"` (default) returns `concat([X_gald, X_l])`;
            `"none"` returns `X_gald` alone.
        impl: `"slices"` (default) or `"patches"`.
        jit_slices: TensorFlow only (JAX compiles everything with XLA anyway):
            with `impl="slices"`, run each shifted-slice primitive
            (logits, weighted sum and their gradients) as an XLA-compiled
            function when the layer is traced into a graph (`model.predict`,
            `fit`, `tf.function`); the rest of the model is unaffected. XLA
            compiles once per input shape. Eager calls and graphs traced
            under `portable_ops()` (all of `keras_gald.export`) use plain TF
            ops. Default None: the current `keras_gald.ops.Policy`'s
            `jit_slices` (True unless changed), decided per machine at trace
            time rather than stored in the saved model.
        scale: divide the logits by `sqrt(key_channels / num_heads)`. Default True.
        sync_bn: synchronized BatchNorm for the output BN. Default False.
        **kwargs: `keras.layers.Layer` arguments (`name`, `dtype`, ...).

    Input: `[x_global, x_local]`, `(N, H, W, C_g)` and `(N, H, W, C_l)` with the
    same `N, H, W` (`H, W` may be dynamic).

    Output: `(N, H, W, C_out + C_l)` for `combine="concat"`, `(N, H, W, C_out)`
    for `"none"`, where `C_out = out_channels or C_g` (or `value_channels`
    without the output projection). Compute dtype of the layer.

    `layer.attention_weights([x_global, x_local])` returns the float32 local
    affinities `(N, H, W, num_heads, k*k)` (neighbour order: row-major over
    the window, see `neighbour_offsets`).

    Example:
    >>> ld = LDv2()
    >>> xg = keras.ops.zeros((1, 33, 47, 256)); xl = keras.ops.zeros((1, 33, 47, 2048))
    >>> tuple(ld([xg, xl]).shape)
    (1, 33, 47, 2304)
    >>> tuple(ld.attention_weights([xg, xl]).shape)
    (1, 33, 47, 1, 25)
    """

    def __init__(
        self,
        kernel_size=5,
        dilation_rate=3,
        key_channels=256,
        value_channels=512,
        out_channels=None,
        output_projection=True,
        num_heads=1,
        padding="zeros",
        combine="concat",
        impl="slices",
        jit_slices=None,
        scale=True,
        sync_bn=False,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.kernel_size = int(kernel_size)
        self.dilation_rate = int(dilation_rate)
        self.key_channels = int(key_channels)
        self.value_channels = int(value_channels)
        self.out_channels = None if out_channels is None else int(out_channels)
        self.output_projection = bool(output_projection)
        self.num_heads = int(num_heads)
        self.padding = padding
        self.combine = combine
        self.impl = impl
        self.jit_slices = None if jit_slices is None else bool(jit_slices)
        self.scale = bool(scale)
        self.sync_bn = bool(sync_bn)

        if self.kernel_size < 1 or self.kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be a positive odd int, got {kernel_size}")
        if self.dilation_rate < 1:
            raise ValueError(f"dilation_rate must be >= 1, got {dilation_rate}")
        if self.num_heads < 1:
            raise ValueError(f"num_heads must be >= 1, got {num_heads}")
        widths = (("key_channels", self.key_channels), ("value_channels", self.value_channels))
        for name, value in widths:
            if value < 1 or value % self.num_heads:
                raise ValueError(
                    f"{name}={value} must be a positive multiple of num_heads={self.num_heads}"
                )
        if padding not in _PADDINGS:
            raise ValueError(f"padding must be one of {_PADDINGS}, got {padding!r}")
        if combine not in _COMBINES:
            raise ValueError(f"combine must be one of {_COMBINES}, got {combine!r}")
        if impl not in _IMPLS:
            raise ValueError(f"impl must be one of {_IMPLS}, got {impl!r}")
        if not self.output_projection and self.out_channels is not None:
            raise ValueError("out_channels needs output_projection=True")

        self._offsets = neighbour_offsets(self.kernel_size, self.dilation_rate)
        self._pad = (self.kernel_size - 1) // 2 * self.dilation_rate

        # Query / key / value: W_theta, W_phi, W_g of Eq. (8).
        # Conv2D: at 1x1 the forward of keras.layers.Conv2D with its two
        # gradients as two matmuls instead of TF's CPU backprop kernels (see
        # `python benchmarks/speed.py --sections train_layers`); same weights.
        self.query_conv = Conv2D(
            self.key_channels, 1, name="query_conv", dtype=self.dtype_policy
        )
        self.key_conv = Conv2D(
            self.key_channels, 1, name="key_conv", dtype=self.dtype_policy
        )
        self.value_conv = Conv2D(
            self.value_channels, 1, name="value_conv", dtype=self.dtype_policy
        )
        # out_conv needs C_g when out_channels is None: created in build().
        self.out_conv = None
        self.out_bn = None

    # ------------------------------------------------------------------ shapes

    @staticmethod
    def _check_shapes(shapes):
        if not isinstance(shapes, (list, tuple)) or len(shapes) != 2:
            raise ValueError(
                "LDv2 expects a list of two tensors [x_global, x_local]; "
                f"got input shape {shapes}"
            )
        shapes = [tuple(s) if isinstance(s, (list, tuple)) else s for s in shapes]
        for name, shape in zip(("x_global", "x_local"), shapes):
            if not isinstance(shape, tuple):
                raise ValueError(
                    "LDv2 expects a list of two tensors [x_global, x_local]; "
                    f"got {shapes}"
                )
            if len(shape) != 4:
                raise ValueError(f"LDv2: {name} must be rank 4 (N, H, W, C), got shape {shape}")
            if shape[-1] is None:
                raise ValueError(f"LDv2: the channels of {name} must be known, got shape {shape}")
        for axis, dim in ((1, "H"), (2, "W")):
            a, b = shapes[0][axis], shapes[1][axis]
            if a is not None and b is not None and a != b:
                raise ValueError(
                    f"LDv2: x_global and x_local must share {dim}; got shapes "
                    f"{shapes[0]} and {shapes[1]} (resize X_g to X_l first)"
                )
        return shapes

    def _x_gald_channels(self, global_channels):
        if not self.output_projection:
            return self.value_channels
        return self.out_channels or global_channels

    def build(self, input_shape):
        g_shape, l_shape = self._check_shapes(input_shape)
        c_in = g_shape[-1] + l_shape[-1]
        x_shape = (None, None, None, c_in)
        self.query_conv.build(x_shape)
        self.key_conv.build(x_shape)
        self.value_conv.build(x_shape)
        if self.output_projection:
            if self.out_conv is None:
                self.out_conv = Conv2D(
                    self._x_gald_channels(g_shape[-1]),
                    1,
                    use_bias=False,
                    name="out_conv",
                    dtype=self.dtype_policy,
                )
                self.out_bn = batch_norm(
                    name="out_bn", synchronized=self.sync_bn, dtype=self.dtype_policy
                )
            self.out_conv.build((None, None, None, self.value_channels))
            self.out_bn.build((None, None, None, self.out_conv.filters))
        self.built = True

    def compute_output_shape(self, input_shape):
        g_shape, l_shape = self._check_shapes(input_shape)
        channels = self._x_gald_channels(g_shape[-1])
        if self.combine == "concat":
            channels += l_shape[-1]
        height = l_shape[1] if l_shape[1] is not None else g_shape[1]
        width = l_shape[2] if l_shape[2] is not None else g_shape[2]
        batch = l_shape[0] if l_shape[0] is not None else g_shape[0]
        return (batch, height, width, channels)

    # -------------------------------------------------------------------- maths

    def _split_heads(self, x):
        """`(N, H, W, heads * d)` -> `(N, H, W, heads, d)`."""
        batch, height, width, channels = ops.shape(x)
        heads = self.num_heads
        return ops.reshape(x, (batch, height, width, heads, channels // heads))

    def _prepare(self, inputs):
        """Checks inputs, returns `(x_local, q, k, v)`: q, k, v float32 (N,H,W,h,d)."""
        if not isinstance(inputs, (list, tuple)) or len(inputs) != 2:
            raise ValueError(
                "LDv2 expects a list of two tensors [x_global, x_local]; "
                f"got {type(inputs).__name__}"
            )
        x_global, x_local = inputs
        self._check_shapes([tuple(x_global.shape), tuple(x_local.shape)])
        x_global = ops.cast(x_global, self.compute_dtype)
        x_local = ops.cast(x_local, self.compute_dtype)
        # Static shapes were checked above; dynamic ones (TensorFlow graphs) are
        # checked at run time.
        x_local = assert_same_height_width(
            x_global, x_local, "LDv2: x_global and x_local must share H and W"
        )
        x = ops.concatenate([x_global, x_local], axis=-1)
        q = self._split_heads(ops.cast(self.query_conv(x), "float32"))
        k = self._split_heads(ops.cast(self.key_conv(x), "float32"))
        if self.folds_output_projection:
            v = self._folded_values(x)
        else:
            v = self.value_conv(x)
        v = self._split_heads(ops.cast(v, "float32"))
        if self.scale:
            q = q * (1.0 / math.sqrt(self.key_channels // self.num_heads))
        return x_local, q, k, v

    @property
    def folds_output_projection(self):
        """Whether `call` applies the output 1x1 conv before the neighbourhood sum.

        Eq. (8)'s weighted sum is linear in `v`, and the output conv has no
        bias, so per head `W_o,h (sum_n w_n v_h(i + d_n)) = sum_n w_n
        (W_o,h v_h)(i + d_n)`, with out-of-image neighbours zero on both sides.
        Folding `W_o` into the value projection (`W_v,h W_o,h`, computed from
        the two kernels on every call, so the weights and their gradients stay
        those of the two convs) turns the 2304 -> 512 -> 256 default into one
        2304 -> 256 projection (4.8 instead of 10.7 GFLOP on the 64 x 64 map)
        and halves the channels of the neighbourhood sum. Taken with
        `impl="slices"` whenever it narrows the summed values
        (`num_heads * C_out < value_channels`); `impl="patches"` keeps Eq. (8)
        literally, as the reference.
        """
        return (
            Policy.current().ldv2_fold  # off: `library_vs_stock.py --changes ldv2_fold`
            and self.impl == "slices"
            and self.output_projection
            and self.out_conv is not None
            and self.num_heads * self.out_conv.filters < self.value_channels
        )

    def _folded_values(self, x):
        """`(N, H, W, num_heads * C_out)`: head h holds `W_o,h v_h` (compute dtype)."""
        heads, c_out = self.num_heads, self.out_conv.filters
        depth = self.value_channels // heads
        c_in = x.shape[-1]
        # (heads, C_in, d) @ (heads, d, C_out) -> (C_in, heads * C_out)
        w_v = ops.transpose(ops.reshape(self.value_conv.kernel, (c_in, heads, depth)), (1, 0, 2))
        w_o = ops.reshape(self.out_conv.kernel, (heads, depth, c_out))
        kernel = ops.reshape(ops.transpose(ops.matmul(w_v, w_o), (1, 0, 2)), (1, 1, c_in, -1))
        bias = ops.reshape(ops.matmul(ops.reshape(self.value_conv.bias, (heads, 1, depth)), w_o), (-1,))
        kernel = ops.cast(kernel, self.compute_dtype)
        # The value conv's own 1x1 convolution (the library's kernel on each
        # backend), applied with the folded kernel.
        values = self.value_conv.convolution_op(x, kernel)
        return ops.add(values, ops.cast(bias, self.compute_dtype))

    def _logits(self, q, k):
        if self.impl == "patches":
            logits = local_logits_reference(q, k, self.kernel_size, self.dilation_rate)
        else:
            logits = local_logits(q, k, self._offsets, self._pad, jit=self._jit_slices())
        if self.padding == "mask":
            logits = ops.where(self._valid(q), logits, _MASKED_LOGIT)
        return logits

    def _valid(self, q):
        _, height, width, _, _ = ops.shape(q)
        if self.impl == "patches":
            return valid_neighbours_reference(height, width, self.kernel_size, self.dilation_rate)
        return valid_neighbours(height, width, self._offsets)

    def _aggregate(self, w, v):
        if self.impl == "patches":
            return local_aggregate_reference(w, v, self.kernel_size, self.dilation_rate)
        return local_aggregate(w, v, self._offsets, self._pad, jit=self._jit_slices())

    def attention_weights(self, inputs):
        """Local affinities, float32 `(N, H, W, num_heads, kernel_size**2)`.

        Row `[b, y, x, h]` is the softmax of Eq. (8) of position (y, x), head h,
        over the neighbours `neighbour_offsets(kernel_size, dilation_rate)`
        (row-major; excluded neighbours under `padding="mask"` get 0).
        """
        if not self.built:
            if not isinstance(inputs, (list, tuple)):
                self._check_shapes(inputs)  # raises the usual error
            self.build([tuple(t.shape) for t in inputs])
        _, q, k, _ = self._prepare(inputs)
        return ops.softmax(self._logits(q, k), axis=-1)

    def call(self, inputs, training=None):
        x_local, q, k, v = self._prepare(inputs)
        # Eq. (8): softmax over the k^2 neighbours, then their weighted values.
        weights = ops.softmax(self._logits(q, k), axis=-1)
        attended = self._aggregate(weights, v)
        if self.folds_output_projection:
            # Heads hold their share of the output conv: summing them completes it
            # (one head: a size-1 reduction, which Grappler and XLA turn into a reshape).
            x_gald = ops.cast(ops.sum(attended, axis=3), self.compute_dtype)
        else:
            batch, height, width, _, _ = ops.shape(attended)
            # An explicit channel count (no -1): tf2onnx handles it better.
            attended = ops.reshape(attended, (batch, height, width, self.value_channels))
            x_gald = ops.cast(attended, self.compute_dtype)
            if self.output_projection:
                x_gald = self.out_conv(x_gald)
        if self.output_projection:
            x_gald = self.out_bn(x_gald, training=training)
            x_gald = ops.relu(x_gald)
        if self.combine == "concat":
            return ops.concatenate([x_gald, x_local], axis=-1)
        return x_gald

    def _jit_slices(self):
        """The layer's `jit_slices`, else the current `keras_gald.ops.Policy`'s."""
        return Policy.current().jit_slices if self.jit_slices is None else self.jit_slices

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "kernel_size": self.kernel_size,
                "dilation_rate": self.dilation_rate,
                "key_channels": self.key_channels,
                "value_channels": self.value_channels,
                "out_channels": self.out_channels,
                "output_projection": self.output_projection,
                "num_heads": self.num_heads,
                "padding": self.padding,
                "combine": self.combine,
                "impl": self.impl,
                "jit_slices": self.jit_slices,
                "scale": self.scale,
                "sync_bn": self.sync_bn,
            }
        )
        return config
