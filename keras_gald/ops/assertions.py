"""Run-time checks of tensor sizes that name the problem.

TensorFlow graphs may have dynamic sizes, so the check is a
`tf.debugging.Assert` the output depends on; on JAX shapes are static when a
function is traced, so the check is Python and raises when tracing.
"""

import keras


def assert_min_spatial_size(images, min_size, message):
    """`images` unchanged, after checking that its `H` and `W` are at least `min_size`.

    Args:
        images: `(N, H, W, C)`.
        min_size: the smallest allowed height and width.
        message: the error text; the sizes are appended (`"; got H, W = h w"`).

    Returns:
        `images` (on TensorFlow an identity that runs after the assertion).

    Raises:
        tf.errors.InvalidArgumentError: on TensorFlow, when the graph runs with
            a smaller size.
        ValueError: on other backends, for a smaller static size (a size not
            known yet, as when a symbolic model is built, is not checked).

    Example:
    >>> x = assert_min_spatial_size(keras.ops.zeros((1, 8, 8, 3)), 4, "too small")
    """
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        shape = tf.shape(images)
        ok = tf.logical_and(shape[1] >= min_size, shape[2] >= min_size)
        with tf.control_dependencies(
            [tf.debugging.Assert(ok, [message + "; got H, W =", shape[1], shape[2]])]
        ):
            return tf.identity(images)
    height, width = images.shape[1], images.shape[2]
    if (height is not None and height < min_size) or (width is not None and width < min_size):
        raise ValueError(f"{message}; got H, W = {height} {width}")
    return images
