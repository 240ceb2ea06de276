"""keras_gald: GALD scene parsing networks for Keras 3 / TensorFlow."""

__version__ = "0.1.0"

from keras_gald import layers
