"""TensorFlow for the TF kernels of `keras_gald.ops`, where it is installed.

On `KERAS_BACKEND=jax` the layers, backbones, models, losses, metrics and
optimizers never call a TensorFlow kernel, so they import and run without
TensorFlow (a JAX-only machine, such as a GPU box with a CUDA JAX and no
TensorFlow wheel). Modules on that path import `tf` from here: the real module
where TensorFlow is installed, else a stand-in whose every attribute raises one
ImportError naming what to install. What is TensorFlow's by nature (the
`tf.data` pipelines, export, checkpoints, the CLI) imports TensorFlow itself.

Example:
    >>> from keras_gald.ops.optional_tensorflow import HAVE_TENSORFLOW, tf
    >>> tf.constant(1.0) if HAVE_TENSORFLOW else None
"""

INSTALL_HINT = 'pip install "tensorflow-cpu==2.21.*" (or the [gpu] extra)'


class _NoTensorFlow:
    """Stands in for `tensorflow` where it is not installed."""

    def __getattr__(self, name):
        if name.startswith("__"):  # probes such as hasattr(x, "__wrapped__") stay probes
            raise AttributeError(name)
        raise ImportError(
            f"tf.{name} needs TensorFlow, which is not installed: {INSTALL_HINT}; "
            "on KERAS_BACKEND=jax the models, layers, fit and predict run without it")

    def __bool__(self):
        return False


try:
    import tensorflow as tf
except ModuleNotFoundError as error:
    if error.name != "tensorflow":  # TensorFlow is there but broken: say so
        raise
    tf = _NoTensorFlow()
    HAVE_TENSORFLOW = False
else:
    HAVE_TENSORFLOW = True

__all__ = ["HAVE_TENSORFLOW", "INSTALL_HINT", "tf"]
