"""Command-line training, evaluation, prediction, export and conversion for keras_gald."""
