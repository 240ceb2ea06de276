"""Logging, number formatting and the JSON writes of every benchmark."""

import json


def log(message):
    print(message, flush=True)


def fmt(value, spec):
    """`value` formatted with `spec`, or "-" for a missing value."""
    return "-" if value is None else format(value, spec)


def write_json(path, results):
    """Writes `results` to `path` atomically (`keras_gald.io`): scripts rewrite their
    JSON after every measurement, and an interrupted run must leave the last
    complete file, not a truncated one."""
    from keras_gald.io import atomic_write_text

    atomic_write_text(path, json.dumps(results, indent=1, default=str))
