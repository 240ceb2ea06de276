"""Normalization factories shared by every block.

All BatchNorms use PyTorch's defaults (eps 1e-5, momentum 0.1, i.e. Keras
momentum 0.9) so weights ported from the authors' code reproduce their numbers.
`synchronized=True` gives cross-replica (Sync) BatchNorm under a
`tf.distribute` strategy.
"""

import keras

BN_EPSILON = 1e-5
BN_MOMENTUM = 0.9


def batch_norm(name=None, synchronized=False, dtype=None, gamma_initializer="ones"):
    """Returns a `keras.layers.BatchNormalization` with the library's defaults."""
    return keras.layers.BatchNormalization(
        epsilon=BN_EPSILON,
        momentum=BN_MOMENTUM,
        synchronized=synchronized,
        gamma_initializer=gamma_initializer,
        name=name,
        dtype=dtype,
    )
