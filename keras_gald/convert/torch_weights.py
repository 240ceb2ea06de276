"""Primitives for loading PyTorch `state_dict` tensors into Keras layers.

Every loader takes a `StateDict`, which records which keys were consumed so
converters can report missing and unexpected keys by name.
"""

import numpy as np


def to_numpy(value):
    """Returns a NumPy array for a NumPy array or a torch tensor (no torch import)."""
    if hasattr(value, "detach"):  # torch.Tensor, without importing torch
        value = value.detach().cpu().numpy()
    return np.asarray(value)


class StateDict:
    """A PyTorch-style `{name: tensor}` mapping that tracks consumed keys.

    Args:
        mapping: dict of key -> NumPy array / torch tensor.
        strip_prefixes: prefixes removed from every key when present
            (e.g. `("module.",)` for DataParallel checkpoints).
    """

    def __init__(self, mapping, strip_prefixes=("module.",)):
        self._tensors = {}
        for key, value in mapping.items():
            for prefix in strip_prefixes:
                if key.startswith(prefix):
                    key = key[len(prefix):]
            self._tensors[key] = value
        self._used = set()

    def __contains__(self, key):
        return key in self._tensors

    def keys(self):
        return list(self._tensors)

    def take(self, key, shape=None):
        """Returns the tensor under `key` as float32 NumPy and marks it used."""
        if key not in self._tensors:
            raise KeyError(f"missing key in state_dict: {key!r}")
        array = to_numpy(self._tensors[key])
        if shape is not None and tuple(array.shape) != tuple(shape):
            raise ValueError(
                f"shape mismatch for {key!r}: checkpoint {tuple(array.shape)}, "
                f"expected {tuple(shape)}"
            )
        self._used.add(key)
        return array.astype(np.float32) if array.dtype.kind == "f" else array

    def skip(self, key):
        """Marks `key` as deliberately ignored (e.g. `num_batches_tracked`)."""
        if key in self._tensors:
            self._used.add(key)

    def unused(self):
        """Keys never taken or skipped, sorted."""
        return sorted(k for k in self._tensors if k not in self._used)


def _assign(variable, value, key):
    if tuple(variable.shape) != tuple(value.shape):
        raise ValueError(
            f"shape mismatch for {key!r}: Keras weight {variable.path} has "
            f"{tuple(variable.shape)}, converted checkpoint tensor {tuple(value.shape)}"
        )
    variable.assign(value)


def load_conv(layer, state_dict, prefix):
    """Loads `prefix.weight` (and `prefix.bias` when the layer has one).

    Handles `keras.layers.Conv2D` / `keras_gald.layers.Conv2D` (OIHW -> HWIO, grouped convs keep
    PyTorch's contiguous grouping) and `DepthwiseConv2D` ((C,1,kh,kw) ->
    (kh,kw,C,1)).
    """
    import keras

    weight = state_dict.take(f"{prefix}.weight")
    if isinstance(layer, keras.layers.DepthwiseConv2D):
        kernel = weight.transpose(2, 3, 0, 1)
        _assign(layer.kernel, kernel, f"{prefix}.weight")
    else:
        kernel = weight.transpose(2, 3, 1, 0)
        _assign(layer.kernel, kernel, f"{prefix}.weight")
    if layer.use_bias:
        _assign(layer.bias, state_dict.take(f"{prefix}.bias"), f"{prefix}.bias")
    elif f"{prefix}.bias" in state_dict:
        raise ValueError(
            f"checkpoint has {prefix}.bias but Keras layer {layer.name} has no bias"
        )


def load_batch_norm(layer, state_dict, prefix):
    """Loads a PyTorch BatchNorm (weight, bias, running stats) into a Keras BN."""
    _assign(layer.gamma, state_dict.take(f"{prefix}.weight"), f"{prefix}.weight")
    _assign(layer.beta, state_dict.take(f"{prefix}.bias"), f"{prefix}.bias")
    _assign(layer.moving_mean, state_dict.take(f"{prefix}.running_mean"), f"{prefix}.running_mean")
    _assign(layer.moving_variance, state_dict.take(f"{prefix}.running_var"), f"{prefix}.running_var")
    state_dict.skip(f"{prefix}.num_batches_tracked")


def load_group_norm(layer, state_dict, prefix):
    """Loads a PyTorch GroupNorm (weight, bias) into `keras.layers.GroupNormalization`."""
    _assign(layer.gamma, state_dict.take(f"{prefix}.weight"), f"{prefix}.weight")
    _assign(layer.beta, state_dict.take(f"{prefix}.bias"), f"{prefix}.bias")


def nchw_to_nhwc(array):
    return np.transpose(array, (0, 2, 3, 1))


def nhwc_to_nchw(array):
    return np.transpose(array, (0, 3, 1, 2))
