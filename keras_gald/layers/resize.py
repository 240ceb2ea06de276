"""`ResizeLike`: bilinear resize to another tensor's size (both PyTorch conventions,
see `keras_gald.ops.resize`)."""

import keras
from keras import ops

from keras_gald.ops.resize import resize_bilinear


@keras.saving.register_keras_serializable(package="keras_gald")
class ResizeLike(keras.layers.Layer):
    """Resizes `inputs[0]` bilinearly to the spatial size of `inputs[1]`.

    Works with dynamic H, W in TensorFlow graphs (the target size is then read
    at run time).

    Args:
        align_corners: see `resize_bilinear`.

    Input shape: `[(N, h, w, C), (N, H, W, *)]`. Output shape: `(N, H, W, C)`.

    Example:
    >>> x = keras.ops.ones((1, 9, 13, 4)); ref = keras.ops.ones((1, 65, 97, 3))
    >>> tuple(ResizeLike()([x, ref]).shape)
    (1, 65, 97, 4)
    """

    def __init__(self, align_corners=False, **kwargs):
        super().__init__(**kwargs)
        self.align_corners = bool(align_corners)

    def call(self, inputs):
        x, reference = inputs
        shape = ops.shape(reference)
        return resize_bilinear(x, (shape[1], shape[2]), self.align_corners)

    def compute_output_shape(self, input_shape):
        x_shape, ref_shape = input_shape
        return (x_shape[0], ref_shape[1], ref_shape[2], x_shape[-1])

    def get_config(self):
        config = super().get_config()
        config.update({"align_corners": self.align_corners})
        return config
