"""`DilatedConv2D`: `keras.layers.Conv2D` on the library's convolution kernels.

The kernels, their custom gradients and the per-machine fast paths live in
`keras_gald.ops.conv`; this layer holds the weights and picks the kernel.
"""

import keras
import tensorflow as tf

from keras_gald.ops.conv import dilated_conv2d, pointwise_conv2d


@keras.saving.register_keras_serializable(package="keras_gald")
class DilatedConv2D(keras.layers.Conv2D):
    """`keras.layers.Conv2D` whose dilation runs through `tf.nn.conv2d`.

    Same constructor, weights layout (kernel `(kh, kw, C_in // groups, filters)`)
    and config as `keras.layers.Conv2D`; use it wherever `dilation_rate > 1`
    (at rate 1 the forward is plain `tf.nn.conv2d`, identical to `Conv2D`;
    stride-1 kernels keep hand-written gradients, faster than TF's CPU
    backprop kernels: `dilated_conv2d`'s for k x k, `pointwise_conv2d`'s
    matmuls for 1x1). Grouped
    convolutions fall back to Keras' own path. With `padding="same"` and a
    static input size where at most `Policy.taps_max_fraction` of the taps' work
    reads the image (large rates on small maps), it runs one matmul per tap
    over the region that tap reads; wide float32 and bfloat16 3x3 kernels
    traced in a graph on CPU run by Winograd F(2x2, 3x3)
    (`dilated_conv2d(method="auto")`).

    Input shape: `(N, H, W, C_in)`. Output shape: `(N, H', W', filters)`.

    Example:
    >>> conv = DilatedConv2D(64, 3, padding="same", dilation_rate=12)
    >>> conv(keras.ops.zeros((1, 33, 47, 32))).shape
    TensorShape([1, 33, 47, 64])
    """

    def convolution_op(self, inputs, kernel):
        if (
            self.groups != 1
            or self.data_format != "channels_last"
            or keras.backend.backend() != "tensorflow"
        ):
            return super().convolution_op(inputs, kernel)
        dilated = any(r > 1 for r in self.dilation_rate)
        odd = all(k % 2 == 1 for k in self.kernel_size)
        unit_stride = all(s == 1 for s in self.strides)
        if dilated and (odd or self.padding == "valid"):
            return dilated_conv2d(inputs, kernel, self.dilation_rate, self.padding)
        if dilated:  # even kernel with "same": let TF handle the asymmetric pad
            return super().convolution_op(inputs, kernel)
        if odd and max(self.kernel_size) > 1 and unit_stride:
            # Same forward (tf.nn.conv2d); the hand-written gradient beats TF's
            # CPU backprop kernels at rate 1 too (`benchmarks/speed.py
            # --sections dilated_conv`, benchmarks/results/dilated_conv_cpu.json).
            return dilated_conv2d(inputs, kernel, (1, 1), self.padding)
        if self.kernel_size == (1, 1) and unit_stride:
            return pointwise_conv2d(inputs, kernel)
        return tf.nn.conv2d(
            inputs, kernel, strides=[1, *self.strides, 1], padding=self.padding.upper()
        )
