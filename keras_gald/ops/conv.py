"""Convolution kernels: one entry point per backend, TF's fast dilated path.

`conv2d` is what `keras_gald.layers.Conv2D` calls: it picks the kernel for
a convolution's geometry. On JAX every convolution is
`jax.lax.conv_general_dilated` (NHWC / HWIO): XLA has native dilated kernels,
and lax differentiates them with dilation in both gradients, so JAX needs no
hand-written gradient. Other backends take `keras.ops.conv`. Everything
below this paragraph is the TensorFlow path.

Stock `keras.layers.Conv2D(dilation_rate > 1)` lowers through
`tf.nn.convolution`, which rewrites a dilated convolution as
space-to-batch + convolution + batch-to-space: slower on CPU, and
pathological for the backward pass under XLA. Calling
`tf.nn.conv2d(..., dilations=...)` directly reaches oneDNN's (and cuDNN's)
native dilated kernels and computes the same numbers.

TF's CPU backward kernels (`Conv2DBackpropInput/Filter`) reject dilations > 1
(unless oneDNN is on), so the gradient is written out here: the input gradient
is itself a dilated stride-1 convolution (of the output gradient with the
flipped, transposed kernel), and the kernel gradient is k*k matmuls of shifted
input slices against the output gradient — the same FLOPs as the forward pass,
and no space-to-batch anywhere.

At rate 1 the same hand-written gradient is kept for k x k kernels (k > 1):
TF's `Conv2DBackpropInput` is slower on CPU than a forward conv with the
flipped kernel. Small kernels (`Policy.tf_filter_grad_max_weights`) take TF's
`Conv2DBackpropFilter` for the kernel gradient, which beats k*k window
matmuls there. 1x1 stride-1 convolutions get their gradients as the two
matmuls they are (`pointwise_conv2d`).

The CPU fast paths below are switched and tuned by `keras_gald.ops.Policy`
(defaults per machine; see that module and benchmarks/README.md):

- taps: when the dilation is large against the map (ASPP's rates 12/24/36 on
  the 64x64 map of a 512x512 image) most taps of a "SAME" convolution read
  padding; each tap is then one matmul over the region where it reads the
  image (forward and both gradients), skipping the zeros exactly. With
  oneDNN, bfloat16 forwards stay one dilated conv (its bf16 kernel skips
  those taps itself; `taps_direct_forward_bf16`).
- conv_slices: with oneDNN, wide float32 kernels (the heads' 3x3 2048 -> 512
  convs) run as convolutions over 512-channel slices (`conv2d_sliced`),
  forward and input gradient: oneDNN's fp32 kernel reaches less of the
  machine on one whole wide convolution.
- winograd: with oneDNN, wide 3x3 "SAME" float32 (and, with bf16
  instructions, bfloat16) convolutions run by Winograd F(2x2, 3x3)
  (`keras_gald.ops.winograd`): 4/9 of the multiply-adds as 16 batched
  matmuls between tile transforms, in graphs traced outside
  `portable_ops()`. bfloat16 ones round about as much as the machine's own
  bf16 kernels (tests/layers/test_winograd.py).
"""

import keras

from keras_gald.ops.optional_tensorflow import tf
from keras_gald.ops.portable import gpu_visible, inside_xla_cluster, may_use_xla
from keras_gald.ops.sequencing import after
from keras_gald.ops.winograd import extended_size, winograd_conv3x3
from keras_gald.ops.policy import Policy


# The switches and thresholds of these paths are fields of
# `keras_gald.ops.Policy`, read at trace time; their defaults depend on the
# machine (`keras_gald.ops.machine()`). Each was measured in whole networks and
# single convs, in turns, on both kinds of CPU kernels (oneDNN on and off):
# `python benchmarks/library_vs_stock.py --changes <name>` (taps:
# `benchmarks/speed.py --sections dilated_conv`); the tables are in
# benchmarks/README.md, "Dispatch per machine".
_METHODS = ("auto", "conv", "taps", "winograd")


def winograd_fraction(height, width, dilation):
    """Winograd F(2x2, 3x3)'s multiply-adds as a share of a dense 3x3 conv's:
    4/9, times the zero extension of the map to whole tiles on every phase grid."""
    extended = extended_size(height, dilation) * extended_size(width, dilation)
    return 4 / 9 * extended / (height * width)


def winograd_input_bytes(batch, height, width, channels, dilation, itemsize=4):
    """Bytes of Winograd's transformed input: 16 values per 2x2 block of the
    zero-extended map, per channel."""
    return 4 * batch * extended_size(height, dilation) * extended_size(width, dilation) \
        * channels * itemsize


def auto_method(height, width, kernel_shape, dilations, padding, dtype, winograd_allowed=True,
                batch=1):
    """The method `dilated_conv2d(method="auto")` picks for a static input size.

    Args:
        height, width: the input's `H, W` (`None` if not static).
        kernel_shape: `(kh, kw, C_in, C_out)`.
        dilations: `(rh, rw)`.
        padding: `"SAME"` or `"VALID"`.
        dtype: the input's dtype.
        winograd_allowed: whether the caller may run Winograd at all
            (`dilated_conv2d`: a graph traced outside `portable_ops()` on a
            machine without GPUs; cuDNN picks its own algorithms).
        batch: the batch size (1 where it is not static).

    Returns:
        `"taps"` when `H, W` are static, the padding `"SAME"` and the taps touch
        at most `taps_max_fraction` of the dense work, else `"conv"`; either
        replaced by `"winograd"` for float32 3x3 kernels with equal rates and at
        least `winograd_min_weights` weights per tap where `winograd_cost *
        winograd_fraction` is below that path's share of the dense work and
        the transformed input fits in `winograd_max_bytes`, on maps of at least
        `winograd_min_pixels` output pixels; for bfloat16 the same with
        `winograd_min_weights_bf16` and `winograd_cost_bf16`. Other dtypes
        never take Winograd. The switches and thresholds are those of the
        current `keras_gald.ops.Policy`.
    """
    kh, kw, c_in, c_out = (int(v) for v in kernel_shape)
    rh, rw = int(dilations[0]), int(dilations[1])
    if padding != "SAME" or height is None or width is None:
        return "conv"
    policy = Policy.current()
    fraction = taps_fraction(height, width, (kh, kw), (rh, rw))
    if policy.taps and fraction <= policy.taps_max_fraction:
        method, share = "taps", fraction
    else:
        method, share = "conv", 1.0
    dtype = tf.as_dtype(dtype)
    min_weights, cost = {
        tf.float32: (policy.winograd_min_weights, policy.winograd_cost)
        if policy.winograd else (None, None),
        tf.bfloat16: (policy.winograd_min_weights_bf16, policy.winograd_cost_bf16)
        if policy.winograd_bf16 else (None, None),
    }.get(dtype, (None, None))
    if (
        winograd_allowed
        and min_weights is not None
        and (kh, kw) == (3, 3)
        and rh == rw
        and c_in * c_out >= min_weights
        and cost * winograd_fraction(height, width, rh) < share
        and winograd_input_bytes(batch, height, width, c_in, rh, dtype.size)
        <= policy.winograd_max_bytes
        and batch * height * width >= policy.winograd_min_pixels
    ):
        return "winograd"
    return method


def same_padding_taps(height, width, kernel_size, dilations):
    """Taps of a stride-1 `"SAME"` dilated conv that read the image.

    Returns `[(i, j, y0, y1, x0, x1, dy, dx), ...]`: tap `(i, j)` adds to output
    rows `y0:y1`, columns `x0:x1`, reading input rows `y0+dy:y1+dy`, columns
    `x0+dx:x1+dx`; everywhere else it reads zero padding. Taps entirely in the
    padding are left out.
    """
    (kh, kw), (rh, rw) = kernel_size, dilations
    taps = []
    for i in range(kh):
        dy = (i - (kh - 1) // 2) * rh
        y0, y1 = max(0, -dy), min(height, height - dy)
        for j in range(kw):
            dx = (j - (kw - 1) // 2) * rw
            x0, x1 = max(0, -dx), min(width, width - dx)
            if y1 > y0 and x1 > x0:
                taps.append((i, j, y0, y1, x0, x1, dy, dx))
    return taps


def taps_fraction(height, width, kernel_size, dilations):
    """Share of a dense `"SAME"` dilated conv's multiply-adds that touch the image."""
    taps = same_padding_taps(height, width, kernel_size, dilations)
    area = sum((y1 - y0) * (x1 - x0) for _, _, y0, y1, x0, x1, _, _ in taps)
    return area / (kernel_size[0] * kernel_size[1] * height * width)


def _conv_by_taps(x, k, taps, height, width):
    """`"SAME"` dilated conv as one matmul per tap over the region it reads."""
    batch, c_in, c_out = tf.shape(x)[0], x.shape[-1], k.shape[-1]
    out = None
    for i, j, y0, y1, x0, x1, dy, dx in taps:
        with after(out):
            window = x[:, y0 + dy : y1 + dy, x0 + dx : x1 + dx, :]
        part = tf.matmul(tf.reshape(window, [-1, c_in]), k[i, j])
        part = tf.reshape(part, tf.stack([batch, y1 - y0, x1 - x0, c_out]))
        part = tf.pad(part, [[0, 0], [y0, height - y1], [x0, width - x1], [0, 0]])
        out = part if out is None else out + part
    return out


def _taps_grad(x, k, dy_out, taps, height, width):
    """Input and kernel gradients of `_conv_by_taps`, over the same regions."""
    batch, c_in, c_out = tf.shape(x)[0], x.shape[-1], k.shape[-1]
    dx, kernel_taps, previous = None, {}, None
    for i, j, y0, y1, x0, x1, dy, dxx in taps:
        with after(dx):
            g = tf.reshape(dy_out[:, y0:y1, x0:x1, :], [-1, c_out])
        part = tf.matmul(g, k[i, j], transpose_b=True)
        part = tf.reshape(part, tf.stack([batch, y1 - y0, x1 - x0, c_in]))
        part = tf.pad(
            part,
            [[0, 0], [y0 + dy, height - y1 - dy], [x0 + dxx, width - x1 - dxx], [0, 0]],
        )
        dx = part if dx is None else dx + part
        with after(previous):  # one input window alive at a time
            window = tf.reshape(x[:, y0 + dy : y1 + dy, x0 + dxx : x1 + dxx, :], [-1, c_in])
        previous = kernel_taps[(i, j)] = tf.matmul(window, g, transpose_a=True)
    kh, kw = int(k.shape[0]), int(k.shape[1])
    zeros = tf.zeros((c_in, c_out), k.dtype)
    dk = tf.stack([kernel_taps.get((i, j), zeros) for i in range(kh) for j in range(kw)])
    return dx, tf.reshape(dk, tf.shape(k))


def _shifted_kernel_grad(x_pad, dy, kernel_size, dilations):
    """Kernel gradient of a stride-1 conv: one matmul per tap, `window^T @ dy`."""
    (kh, kw), (rh, rw) = kernel_size, dilations
    out_h, out_w = tf.shape(dy)[1], tf.shape(dy)[2]
    channels_in, channels_out = tf.shape(x_pad)[3], tf.shape(dy)[3]
    dy_flat = tf.reshape(dy, [-1, channels_out])
    taps = []
    for i in range(kh):
        for j in range(kw):
            # One shifted copy of the input alive at a time.
            with after(taps[-1] if taps else None):
                window = x_pad[:, i * rh : i * rh + out_h, j * rw : j * rw + out_w, :]
            window = tf.reshape(window, [-1, channels_in])
            taps.append(tf.matmul(window, dy_flat, transpose_a=True))
    return tf.reshape(tf.stack(taps), [kh, kw, channels_in, channels_out])


def _sliced_channels(kernel):
    """The kernel axis (2: input, 3: output channels) `conv2d_sliced` splits, or None."""
    if kernel.dtype != tf.float32 or gpu_visible():
        return None
    policy = Policy.current()
    c_in, c_out = int(kernel.shape[2]), int(kernel.shape[3])
    if not policy.conv_slices or max(c_in, c_out) < policy.slice_min_channels \
            or (kernel.shape[0], kernel.shape[1]) == (1, 1):
        return None
    return 2 if c_in >= c_out else 3


def conv2d_sliced(x, kernel, padding, dilations):
    """Stride-1 `tf.nn.conv2d`, run over channel slices for wide float32 kernels on CPU.

    Args:
        x: `(N, H, W, C_in)`.
        kernel: `(kh, kw, C_in, C_out)`.
        padding: `"SAME"` or `"VALID"`.
        dilations: `[1, rh, rw, 1]`.

    Returns:
        `(N, H', W', C_out)`, `tf.nn.conv2d`'s result (up to float32 summation
        order when the input channels are sliced).
    """
    axis = _sliced_channels(kernel)
    if axis is None:
        return tf.nn.conv2d(x, kernel, strides=1, padding=padding, dilations=dilations)
    parts, step = [], int(Policy.current().channel_slice)
    for start in range(0, int(kernel.shape[axis]), step):
        stop = start + step
        if axis == 2:
            part = tf.nn.conv2d(x[..., start:stop], kernel[:, :, start:stop, :], strides=1,
                                padding=padding, dilations=dilations)
        else:
            part = tf.nn.conv2d(x, kernel[..., start:stop], strides=1, padding=padding,
                                dilations=dilations)
        parts.append(part)
    return tf.concat(parts, axis=-1) if axis == 3 else tf.add_n(parts)


def dilated_conv2d(inputs, kernel, dilations, padding, method="auto"):
    """Stride-1 dilated 2-D convolution with a fast custom gradient.

    Args:
        inputs: `(N, H, W, C)`.
        kernel: `(kh, kw, C, O)` with odd `kh`, `kw` when `padding="SAME"`.
        dilations: `(rh, rw)`.
        padding: `"SAME"` or `"VALID"`.
        method: `"conv"` (`tf.nn.conv2d(dilations=...)`), `"taps"` (one matmul
            per tap over the region it reads; `"SAME"` with static `H, W`
            only; bfloat16 on CPU runs its forward as the direct conv,
            `Policy.taps_direct_forward_bf16`), `"winograd"` (F(2x2, 3x3),
            `keras_gald.ops.winograd`;
            3x3 `"SAME"` with equal rates and static `H, W` only) or `"auto"`
            (default): `auto_method`'s choice, Winograd only in graphs traced
            outside `portable_ops()` and outside a whole-function XLA compile
            (`jit_compile=True`), on machines without GPUs (eager calls and
            exports keep `tf.nn.conv2d`).
            The methods are TensorFlow kernels: on JAX (and other backends)
            every method computes the same numbers with
            `lax.conv_general_dilated` (`keras.ops.conv`), after the same
            argument checks.

    Returns:
        `(N, H', W', O)`, equal to `tf.nn.convolution` with the same arguments.

    Example:
    >>> x = keras.ops.ones((1, 9, 9, 2))
    >>> dilated_conv2d(x, keras.ops.ones((3, 3, 2, 4)), (2, 2), "SAME").shape
    TensorShape([1, 9, 9, 4])
    """
    rh, rw = int(dilations[0]), int(dilations[1])
    kh, kw = int(kernel.shape[0]), int(kernel.shape[1])
    padding = padding.upper()
    if method not in _METHODS:
        raise ValueError(f"method must be one of {_METHODS}, got {method!r}")
    tensorflow = keras.backend.backend() == "tensorflow"
    inputs = tf.convert_to_tensor(inputs) if tensorflow else keras.ops.convert_to_tensor(inputs)
    height, width = inputs.shape[1], inputs.shape[2]
    taps_ok = padding == "SAME" and height is not None and width is not None
    if method == "taps" and not taps_ok:
        raise ValueError(
            'method="taps" needs padding="SAME" and a static H, W; got padding='
            f"{padding!r} and input shape {tuple(inputs.shape)}"
        )
    if method == "winograd" and not (taps_ok and (kh, kw) == (3, 3) and rh == rw):
        raise ValueError(
            'method="winograd" needs a 3x3 kernel, equal rates, padding="SAME" and a '
            f"static H, W; got kernel {tuple(kernel.shape)}, rates {(rh, rw)}, padding="
            f"{padding!r} and input shape {tuple(inputs.shape)}"
        )
    if not tensorflow:
        return _conv_other_backend(inputs, kernel, (1, 1), padding, (rh, rw))
    if method == "auto":
        # Not inside a whole-function XLA compile: XLA then constant-folds the
        # transforms for minutes (the R50 + ASPP + LDv2 XLA training step had
        # not compiled after 12 min; 28.8 s without Winograd,
        # benchmarks/results/xla_r50_avx512.json), and it would run the matmuls
        # itself, off oneDNN's fast path.
        winograd_allowed = (
            may_use_xla()
            and not inside_xla_cluster()
            and not gpu_visible()
        )
        method = auto_method(height, width, kernel.shape, (rh, rw), padding, inputs.dtype,
                             winograd_allowed, inputs.shape[0] or 1)
    if method == "winograd":
        return winograd_conv3x3(inputs, kernel, rh)
    if method == "taps":
        taps = same_padding_taps(height, width, (kh, kw), (rh, rw))

        # A lone centre tap is one matmul over the whole map, no window copy.
        direct_forward = (
            inputs.dtype == tf.bfloat16
            and Policy.current().taps_direct_forward_bf16
            and len(taps) > 1
            and not gpu_visible()
        )

        @tf.custom_gradient
        def conv_taps(x, k):
            def grad(dy):
                return _taps_grad(x, k, dy, taps, height, width)

            if direct_forward:
                y = tf.nn.conv2d(x, k, strides=1, padding="SAME", dilations=[1, rh, rw, 1])
            else:
                y = _conv_by_taps(x, k, taps, height, width)
            return y, grad

        return conv_taps(inputs, tf.identity(kernel))

    c_in, c_out = int(kernel.shape[2]), int(kernel.shape[3])
    tf_filter_grad = (rh, rw) == (1, 1) \
        and c_in * c_out <= Policy.current().tf_filter_grad_max_weights

    @tf.custom_gradient
    def conv(x, k):
        y = conv2d_sliced(x, k, padding, [1, rh, rw, 1])

        def grad(dy):
            flipped = tf.transpose(tf.reverse(k, axis=[0, 1]), [0, 1, 3, 2])
            if padding == "VALID":
                ph, pw = (kh - 1) * rh, (kw - 1) * rw
                dy_in = tf.pad(dy, [[0, 0], [ph, ph], [pw, pw], [0, 0]])
            else:
                dy_in = dy
            dx = conv2d_sliced(dy_in, flipped, padding, [1, rh, rw, 1])
            if tf_filter_grad:
                dk = tf.raw_ops.Conv2DBackpropFilter(
                    input=x, filter_sizes=tf.shape(k), out_backprop=dy,
                    strides=[1, 1, 1, 1], padding=padding,
                )
            else:
                x_pad = x
                if padding == "SAME":
                    ph, pw = (kh - 1) * rh // 2, (kw - 1) * rw // 2
                    x_pad = tf.pad(x, [[0, 0], [ph, ph], [pw, pw], [0, 0]])
                dk = _shifted_kernel_grad(x_pad, dy, (kh, kw), (rh, rw))
            return dx, dk

        return y, grad

    # Read variables outside the custom-gradient scope so it sees plain tensors.
    return conv(inputs, tf.identity(kernel))


def pointwise_conv2d(inputs, kernel):
    """1x1 stride-1 convolution with a matmul gradient.

    The forward is `tf.nn.conv2d` (the same numbers as `keras.layers.Conv2D`);
    the gradients are the two matmuls a 1x1 convolution is, `dy @ K^T` and
    `X^T @ dy` over the `N*H*W` pixels, which TF's CPU `Conv2DBackpropInput` /
    `Conv2DBackpropFilter` run slower (`benchmarks/speed.py --sections
    train_layers`).

    On JAX (and other backends) it is `lax.conv_general_dilated`
    (`keras.ops.conv`), differentiated by autodiff.

    Args:
        inputs: `(N, H, W, C)`.
        kernel: `(1, 1, C, O)`.

    Returns:
        `(N, H, W, O)`.
    """
    if keras.backend.backend() != "tensorflow":
        return _conv_other_backend(inputs, kernel, (1, 1), "VALID", (1, 1))
    c_in, c_out = int(kernel.shape[2]), int(kernel.shape[3])

    @tf.custom_gradient
    def conv(x, k):
        def grad(dy):
            k2 = tf.reshape(k, [c_in, c_out])
            dy2 = tf.reshape(dy, [-1, c_out])
            dx = tf.reshape(tf.matmul(dy2, k2, transpose_b=True), tf.shape(x))
            dk = tf.matmul(tf.reshape(x, [-1, c_in]), dy2, transpose_a=True)
            return dx, tf.reshape(dk, [1, 1, c_in, c_out])

        return tf.nn.conv2d(x, k, strides=1, padding="VALID"), grad

    return conv(tf.convert_to_tensor(inputs), tf.identity(kernel))


def _pair(value, what):
    if isinstance(value, int):
        return (value, value)
    value = tuple(int(v) for v in value)
    if len(value) != 2:
        raise ValueError(f"{what} must be an int or a pair of ints, got {value!r}")
    return value


def _conv_other_backend(inputs, kernel, strides, padding, dilations):
    """The convolution on JAX (lax) or another Keras backend (`keras.ops.conv`)."""
    if keras.backend.backend() == "jax":
        from jax import lax  # only JAX users import jax

        return lax.conv_general_dilated(
            keras.ops.convert_to_tensor(inputs),
            keras.ops.convert_to_tensor(kernel),
            window_strides=strides,
            padding=padding,  # "SAME" pads as TF does (the extra row/column at the end)
            rhs_dilation=dilations,
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
        )
    return keras.ops.conv(inputs, kernel, strides=strides, padding=padding.lower(),
                          data_format="channels_last", dilation_rate=dilations)


def conv2d(inputs, kernel, strides=1, padding="valid", dilation_rate=1):
    """2-D convolution (NHWC, HWIO) on the fastest kernel for its geometry.

    The entry point of `keras_gald.layers.Conv2D`. On TensorFlow it picks:

    - dilated, odd kernel (or `"valid"`): `dilated_conv2d` (native dilated
      kernels, hand-written gradient; taps / Winograd where they pay);
    - dilated, even kernel with `"same"`: `keras.ops.conv` (TF then pads
      asymmetrically itself);
    - odd k x k (k > 1), stride 1: `dilated_conv2d` at rate 1 (same forward
      as `tf.nn.conv2d`; its gradient beats TF's CPU backprop kernels,
      `benchmarks/speed.py --sections dilated_conv`);
    - 1x1, stride 1: `pointwise_conv2d` (matmul gradients);
    - anything else (strided): `tf.nn.conv2d`.

    On JAX it is `lax.conv_general_dilated` for every geometry (autodiff
    gradients); on other backends `keras.ops.conv`.

    Args:
        inputs: `(N, H, W, C)`.
        kernel: `(kh, kw, C, O)`.
        strides: int or `(sh, sw)`; strides > 1 need `dilation_rate` 1.
        padding: `"same"` or `"valid"` (either case); `"same"` pads as TF
            does (any extra row/column at the bottom/right).
        dilation_rate: int or `(rh, rw)`.

    Returns:
        `(N, H', W', O)`: `keras.ops.conv` with the same arguments, up to
        float summation order.

    Example:
    >>> x = keras.ops.ones((1, 8, 8, 3))
    >>> conv2d(x, keras.ops.ones((3, 3, 3, 5)), strides=2, padding="same").shape
    TensorShape([1, 4, 4, 5])
    """
    strides = _pair(strides, "strides")
    dilations = _pair(dilation_rate, "dilation_rate")
    padding = padding.upper()
    if padding not in ("SAME", "VALID"):
        raise ValueError(f'padding must be "same" or "valid", got {padding.lower()!r}')
    dilated = any(r > 1 for r in dilations)
    if dilated and any(s > 1 for s in strides):
        raise ValueError(
            f"strides > 1 are not supported with dilation_rate > 1; got strides={strides} "
            f"and dilation_rate={dilations}"
        )
    if keras.backend.backend() != "tensorflow":
        return _conv_other_backend(inputs, kernel, strides, padding, dilations)
    kernel_size = (int(kernel.shape[0]), int(kernel.shape[1]))
    odd = all(k % 2 == 1 for k in kernel_size)
    unit_stride = strides == (1, 1)
    if dilated and (odd or padding == "VALID"):
        return dilated_conv2d(inputs, kernel, dilations, padding)
    if dilated:  # even kernel with "same": let TF handle the asymmetric pad
        return keras.ops.conv(inputs, kernel, strides=list(strides), padding=padding.lower(),
                              dilation_rate=dilations, data_format="channels_last")
    if odd and max(kernel_size) > 1 and unit_stride:
        return dilated_conv2d(inputs, kernel, (1, 1), padding)
    if kernel_size == (1, 1) and unit_stride:
        return pointwise_conv2d(inputs, kernel)
    return tf.nn.conv2d(inputs, kernel, strides=[1, *strides, 1], padding=padding)
