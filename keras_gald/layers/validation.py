"""Input-shape checks shared by the layers."""


def check_nhwc(layer, input_shape):
    """Returns `input_shape` as a tuple; raises naming the layer unless it is
    rank-4 NHWC with a known channel count."""
    input_shape = tuple(input_shape)
    if len(input_shape) != 4:
        raise ValueError(
            f"{type(layer).__name__} expects a 4D NHWC input (N, H, W, C), "
            f"got shape {input_shape}"
        )
    if input_shape[-1] is None:
        raise ValueError(
            f"{type(layer).__name__} needs a known channel dimension, got shape {input_shape}"
        )
    return input_shape
