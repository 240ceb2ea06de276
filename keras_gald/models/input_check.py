"""Input validation that names the problem instead of failing deep inside a conv."""

import keras

from keras_gald.ops.assertions import assert_min_spatial_size


@keras.saving.register_keras_serializable(package="keras_gald")
class InputCheck(keras.layers.Layer):
    """Identity layer that checks image channels and minimum spatial size.

    Static shapes are checked when the model is built or traced; dynamic sizes
    (TensorFlow) are checked at run time by an assertion
    (`keras_gald.ops.assertions.assert_min_spatial_size`).

    Args:
        channels: expected number of channels.
        min_size: smallest allowed height and width in pixels.

    Input shape: `(N, H, W, channels)`. Output: the same tensor.
    """

    def __init__(self, channels=3, min_size=32, **kwargs):
        super().__init__(**kwargs)
        self.channels = int(channels)
        self.min_size = int(min_size)

    @staticmethod
    def min_size_for(output_stride):
        """Smallest input side: the stage-4 map must be at least 2x2."""
        return 2 * int(output_stride)

    def _message(self, height, width):
        return (
            f"input images of size {height}x{width} are too small for this "
            f"network: the minimum height and width is {self.min_size} pixels"
        )

    def build(self, input_shape):
        self._check_static(input_shape)

    def _check_static(self, shape):
        if len(shape) != 4:
            raise ValueError(
                f"expected images of rank 4 (N, H, W, {self.channels}); got shape {tuple(shape)}"
            )
        if shape[-1] is not None and shape[-1] != self.channels:
            raise ValueError(
                f"expected images with {self.channels} channels (N, H, W, {self.channels}); "
                f"got {shape[-1]} channels, shape {tuple(shape)}"
            )
        h, w = shape[1], shape[2]
        if (h is not None and h < self.min_size) or (w is not None and w < self.min_size):
            raise ValueError(self._message(h, w))

    def call(self, inputs):
        self._check_static(tuple(inputs.shape))
        return assert_min_spatial_size(inputs, self.min_size, self._message("H", "W"))

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update({"channels": self.channels, "min_size": self.min_size})
        return config
