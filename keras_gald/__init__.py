"""keras_gald: GALD scene parsing networks for Keras 3 / TensorFlow.

Subpackages: `ops` (kernels and machine detection), `layers` (GA and LD blocks), `backbones` (dilated ResNets),
`models` (the GALD factory), `data` (tf.data pipelines), `losses`, `metrics`,
`optimizers`, `inference`, `export`, `convert`.
"""

__version__ = "0.1.0"

from keras_gald import (
    backbones,
    convert,
    data,
    export,
    inference,
    layers,
    losses,
    metrics,
    models,
    ops,
    optimizers,
    visualize,
)
