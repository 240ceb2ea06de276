"""Random PyTorch-style state dicts for the converter tests (no PyTorch needed)."""

import numpy as np


def random_state_dict(keys, seed=0, classes=None):
    """`{key: np.ndarray}` with the shapes of `keys` and activations that stay finite.

    Args:
        keys: `(key, shape)` or `(key, shape, dtype)` entries, e.g. the authors' key lists.
        classes: resize the classifier convs (`head.bottleneck.3`, `dsn.4`) to this many
            output channels.

    Conv weights ~ N(0, 1/fan_in), BatchNorm / GroupNorm scales in [0.3, 0.8] and
    running_var in [0.5, 2] (positive), so 100+ layers stay finite without calibration.
    """
    rng = np.random.default_rng(seed)
    out = {}
    for key, shape, *_ in keys:
        if classes is not None and key.startswith(("head.bottleneck.3", "dsn.4")):
            shape = (classes,) + tuple(shape[1:])
        if key.endswith("num_batches_tracked"):
            out[key] = np.array(1000, np.int64)
        elif key.endswith("running_var"):
            out[key] = rng.uniform(0.5, 2.0, shape).astype(np.float32)
        elif len(shape) == 4:
            fan_in = shape[1] * shape[2] * shape[3]
            out[key] = rng.normal(0.0, fan_in ** -0.5, shape).astype(np.float32)
        elif key.endswith(".weight"):  # BatchNorm / GroupNorm scale
            out[key] = rng.uniform(0.3, 0.8, shape).astype(np.float32)
        else:
            out[key] = rng.normal(0.0, 0.1, shape).astype(np.float32)
    return out
