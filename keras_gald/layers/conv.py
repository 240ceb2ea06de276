"""`Conv2D`: `keras.layers.Conv2D` on the library's convolution kernels.

The kernels, their gradients and the per-machine fast paths live in
`keras_gald.ops.conv`; this layer holds the weights and hands the
convolution to `keras_gald.ops.conv2d`, which picks the kernel for the
geometry (dilated or not, k x k or 1x1, strided or not) and the backend.
`DilatedConv2D` is the same layer under its former name.
"""

import keras

from keras_gald.ops.conv import conv2d, dilated_conv2d, pointwise_conv2d  # noqa: F401


@keras.saving.register_keras_serializable(package="keras_gald", name="Conv2D")
class Conv2D(keras.layers.Conv2D):
    """`keras.layers.Conv2D` whose convolution runs on `keras_gald.ops.conv2d`.

    Same constructor, weights layout (kernel `(kh, kw, C_in // groups, filters)`)
    and config as `keras.layers.Conv2D`, and the same numbers up to float
    summation order; use it for every convolution of the networks. On
    TensorFlow, dilated convolutions run on the native dilated kernels
    instead of space-to-batch, stride-1 k x k and 1x1 convolutions get
    hand-written gradients that beat TF's CPU backprop kernels, and large
    rates on small maps (one matmul per tap over the region it reads) or
    wide 3x3 kernels traced in a graph on CPU (Winograd F(2x2, 3x3)) take
    faster paths chosen by `keras_gald.ops.Policy`. On JAX it is
    `lax.conv_general_dilated`. Grouped convolutions and `channels_first`
    fall back to Keras' own op.

    Args: those of `keras.layers.Conv2D`.

    Input shape: `(N, H, W, C_in)`. Output shape: `(N, H', W', filters)`.

    Example:
    >>> conv = Conv2D(64, 3, padding="same", dilation_rate=12)
    >>> tuple(conv(keras.ops.zeros((1, 33, 47, 32))).shape)
    (1, 33, 47, 64)
    """

    def convolution_op(self, inputs, kernel):
        if self.groups != 1 or self.data_format != "channels_last":
            return super().convolution_op(inputs, kernel)
        return conv2d(inputs, kernel, self.strides, self.padding, self.dilation_rate)


@keras.saving.register_keras_serializable(package="keras_gald", name="DilatedConv2D")
class DilatedConv2D(Conv2D):
    """`Conv2D` under the name it had when it was only used dilated.

    Identical behaviour; kept so that `.keras` files naming it load and code
    importing it runs. New code uses `Conv2D`.
    """


# Keras keys a layer's weights in `.weights.h5` / `.keras` files on the
# snake-cased Python class name and its rank among the model's layers of that
# name (`dilated_conv2d_3/vars/0`), not on the layer's name. Every convolution
# that is a `Conv2D` now was a `DilatedConv2D` before, so `Conv2D` keeps that
# class name: weight files saved before the rename load into models built
# after it, and the reverse. (Its unnamed instances are also still called
# `dilated_conv2d_N`.) The registered names above stay distinct.
Conv2D.__name__ = Conv2D.__qualname__ = "DilatedConv2D"
