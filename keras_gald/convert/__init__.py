"""Converters from the GALD authors' PyTorch checkpoints to keras_gald models."""
