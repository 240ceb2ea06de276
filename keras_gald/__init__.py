"""keras_gald: GALD scene parsing networks for Keras 3 (TensorFlow and JAX backends).

The models, layers, losses, training (`fit`) and inference run on `KERAS_BACKEND=tensorflow`
or `jax` with the same `.keras` files; the data pipelines are `tf.data` on both, and
multi-device training (`tf.distribute`, SyncBN) and export are TensorFlow's.

Subpackages: `ops` (kernels and machine detection), `layers` (GA and LD blocks), `backbones` (dilated ResNets),
`models` (the GALD factory), `data` (tf.data pipelines), `losses`, `metrics`,
`optimizers`, `inference`, `evaluation` (mIoU of a model on a data set), `export`, `convert`; `callbacks` (`StopOnNonFinite`),
`checkpoints` (restore the newest readable checkpoint), `io` (atomic writes, checked
model loading).
"""

__version__ = "0.1.0"

from keras_gald import (
    backbones,
    callbacks,
    checkpoints,
    convert,
    data,
    evaluation,
    export,
    inference,
    io,
    layers,
    losses,
    metrics,
    models,
    ops,
    optimizers,
    visualize,
)
