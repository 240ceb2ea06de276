"""`ConvBNReLU`: the authors' `nn.Sequential(conv, BatchNorm, ReLU)`, written once.

Every GA head and the GALD v1 block repeat conv -> BN (eps 1e-5, momentum 0.9,
optionally synchronized) -> ReLU; this helper builds that pair of sublayers and
applies them.

Why a helper object and not a `keras.layers.Layer`: Keras saves a nested
layer's weights under its attribute path. A `ConvBNReLU` *layer* held as
`aspp.conv2` would move `conv2_conv/vars` to `conv2/conv/vars` in `.keras`
and `.weights.h5` files, so files saved by earlier versions would no longer
load, and `keras_gald.convert` addresses the sublayers as `conv2_conv`,
`conv2_bn`. The helper instead creates the conv and the BN with their
historical names and, given an `owner`, sets them on it as the attributes
`<name>_conv` and `<name>_bn`: the owner tracks them exactly as before (same
attribute paths, same tracking order when created in the same order), and the
helper itself holds no state Keras would save.
"""

import keras

from keras_gald.layers.conv import Conv2D
from keras_gald.layers.norm import batch_norm


class ConvBNReLU:
    """conv -> BatchNorm -> ReLU (the ReLU optional), sublayers owned by a layer.

    The conv is the library's `Conv2D` (the same `kernel`/`bias`
    variables as `keras.layers.Conv2D`, with the library's kernels: 1x1
    gradients as two matmuls, dilated and 3x3 kernels on its fast paths), a
    `keras.layers.DepthwiseConv2D` with `depthwise=True`, or `conv_layer`.

    Args:
        filters: output channels (ignored when `depthwise=True`: the depthwise
            conv keeps the input channels).
        kernel_size: int or `(kh, kw)`.
        name: the sublayers are named `f"{name}_conv"` and `f"{name}_bn"`.
        owner: a `keras.layers.Layer` that gets them as the attributes
            `<name>_conv` and `<name>_bn` (and so tracks and saves them), or
            `None` when the caller stores `.conv` and `.bn` itself (e.g. in
            lists).
        strides, padding, dilation_rate, use_bias: the conv's arguments
            (`padding="same"` with dilation `r` and an odd kernel is PyTorch's
            `padding=r * (k - 1) // 2`).
        depthwise: a depthwise conv (`keras.layers.DepthwiseConv2D`).
        relu: apply a ReLU after the BN.
        sync_bn: cross-replica BatchNorm (`batch_norm(synchronized=True)`).
        gamma_initializer: the BN's gamma initializer (`"zeros"` makes a
            residual branch start as the identity, as in `NonLocal`).
        conv_layer: the conv class for `depthwise=False`; default
            `Conv2D`.
        dtype: the dtype policy of both sublayers (pass the owner's).
        **conv_kwargs: more arguments of the conv (e.g. `kernel_initializer`).

    In a functional model, `block.functional(x)` applies the conv, the BN and a
    `keras.layers.ReLU` layer named `f"{name}_relu"`.

    Input shape: `(N, H, W, C)`. Output shape: `(N, H', W', filters)`.

    Example:
    >>> class Head(keras.layers.Layer):
    ...     def __init__(self, **kwargs):
    ...         super().__init__(**kwargs)
    ...         self.reduce = ConvBNReLU(16, 3, name="reduce", owner=self)
    ...     def call(self, x, training=None):
    ...         return self.reduce(x, training=training)
    >>> head = Head()
    >>> head(keras.ops.zeros((1, 9, 9, 4))).shape
    TensorShape([1, 9, 9, 16])
    >>> [w.path for w in head.weights][:2]
    ['head/reduce_conv/kernel', 'head/reduce_bn/gamma']
    """

    def __init__(
        self,
        filters,
        kernel_size,
        name,
        owner=None,
        strides=1,
        padding="same",
        dilation_rate=1,
        use_bias=False,
        depthwise=False,
        relu=True,
        sync_bn=False,
        gamma_initializer="ones",
        conv_layer=None,
        dtype=None,
        **conv_kwargs,
    ):
        if depthwise:
            self.conv = keras.layers.DepthwiseConv2D(
                kernel_size, strides=strides, padding=padding, dilation_rate=dilation_rate,
                use_bias=use_bias, name=f"{name}_conv", dtype=dtype, **conv_kwargs,
            )
        else:
            self.conv = (conv_layer or Conv2D)(
                filters, kernel_size, strides=strides, padding=padding,
                dilation_rate=dilation_rate, use_bias=use_bias, name=f"{name}_conv", dtype=dtype,
                **conv_kwargs,
            )
        self.bn = batch_norm(
            name=f"{name}_bn", synchronized=sync_bn, dtype=dtype,
            gamma_initializer=gamma_initializer,
        )
        self.relu = bool(relu)
        self.name = name
        if owner is not None:
            # Attribute order = tracking order: conv first, then BN, as before.
            setattr(owner, f"{name}_conv", self.conv)
            setattr(owner, f"{name}_bn", self.bn)

    def build(self, input_shape):
        """Builds the conv for `input_shape` and the BN for the conv's output."""
        self.conv.build(tuple(input_shape))
        output_shape = self.conv.compute_output_shape(tuple(input_shape))
        self.bn.build(output_shape)
        return output_shape

    def __call__(self, inputs, training=None):
        y = self.bn(self.conv(inputs), training=training)
        return keras.ops.relu(y) if self.relu else y

    def functional(self, inputs):
        """Applies the block to a `keras.KerasTensor` in a functional model, the
        ReLU as a layer named `f"{name}_relu"` (the models' historical layer names)."""
        y = self.bn(self.conv(inputs))
        return keras.layers.ReLU(name=f"{self.name}_relu")(y) if self.relu else y

    def compute_output_shape(self, input_shape):
        return self.conv.compute_output_shape(tuple(input_shape))

    def __repr__(self):
        return f"<ConvBNReLU {self.name!r}: {self.conv.__class__.__name__}, relu={self.relu}>"
