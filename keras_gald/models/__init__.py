"""GALD model factories and the `Segmenter` model class."""

from keras_gald.models.gald import GALD
from keras_gald.models.segmenter import Segmenter
from keras_gald.models.official import official_gald_v1
