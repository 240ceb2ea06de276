"""keras_gald: GALD scene parsing networks for Keras 3 (TensorFlow and JAX backends).

The models, layers, losses, training (`fit`) and inference run on `KERAS_BACKEND=tensorflow`
or `jax` with the same `.keras` files; the data pipelines are `tf.data` on both, and
multi-device training (`tf.distribute`, SyncBN) and export are TensorFlow's. On JAX,
TensorFlow is optional: without it everything but `data`, `evaluation`, `export` and
`checkpoints` works, and those raise an ImportError naming what to install.

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
    convert,
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
from keras_gald.ops.optional_tensorflow import HAVE_TENSORFLOW, INSTALL_HINT

# tf.data pipelines, evaluation over a data set, export and checkpoints are
# TensorFlow's; on KERAS_BACKEND=jax without TensorFlow the rest works and these
# name what to install when first used.
_NEED_TENSORFLOW = ("checkpoints", "data", "evaluation", "export")
if HAVE_TENSORFLOW:
    from keras_gald import checkpoints, data, evaluation, export
else:
    def __getattr__(name):
        if name in _NEED_TENSORFLOW:
            raise ImportError(f"keras_gald.{name} needs TensorFlow, which is not installed: "
                              f"{INSTALL_HINT}")
        raise AttributeError(f"module 'keras_gald' has no attribute {name!r}")
