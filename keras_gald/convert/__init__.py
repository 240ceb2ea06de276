"""Converters from the GALD authors' PyTorch checkpoints to keras_gald models."""

from keras_gald.convert.official import load_official_state_dict
