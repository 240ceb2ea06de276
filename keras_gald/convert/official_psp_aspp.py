"""Loads the GALD authors' PSP and ASPP weights into `keras_gald.layers` blocks.

Key maps (`prefix` is prepended, e.g. `"head."`):

PSP (`PSPNet.PSPModule`)                     -> `keras_gald.layers.psp.PSP`
    stages.{i}.1.weight                      -> stage_convs[i]
    stages.{i}.2.{weight,bias,running_*}     -> stage_bns[i]
    bottleneck.0.weight                      -> bottleneck_conv
    bottleneck.1.*                           -> bottleneck_bn

ASPP (`operators.ASPPModule`)                -> `keras_gald.layers.aspp.ASPP`
    conv1.1.weight, conv1.2.*                -> conv1_conv, conv1_bn (image pooling)
    conv2.0.weight, conv2.1.*                -> conv2_conv, conv2_bn (1x1)
    conv{3+k}.0.weight, conv{3+k}.1.*        -> atrous_convs[k], atrous_bns[k]
    bottleneck.0.weight, bottleneck.1.*      -> bottleneck_conv, bottleneck_bn

An unbuilt layer is built from the checkpoint's input-channel count. Every
key of the module under `prefix` must be consumed; leftovers (e.g. a fifth
pyramid stage the layer does not have) raise `ValueError`.
"""

from keras_gald.convert.torch_weights import StateDict, load_batch_norm, load_conv
from keras_gald.layers.aspp import ASPP
from keras_gald.layers.psp import PSP


def _as_state_dict(state_dict):
    return state_dict if isinstance(state_dict, StateDict) else StateDict(state_dict)


def _normalise_prefix(prefix):
    return prefix if not prefix or prefix.endswith(".") else prefix + "."


def _ensure_built(layer, state_dict, key):
    """Builds `layer` for `(None, None, None, C_in)` read from conv `key`'s OIHW shape."""
    if layer.built:
        return
    in_channels = int(state_dict.take(key).shape[1])  # load_conv takes it again
    layer.build((None, None, None, in_channels))


def _check_consumed(state_dict, module_prefixes, what):
    left = [
        k for k in state_dict.unused()
        if any(k.startswith(p) for p in module_prefixes)
    ]
    if left:
        raise ValueError(
            f"{what}: checkpoint keys not used by the Keras layer "
            f"(configuration mismatch?): {left}"
        )


def load_official_psp(layer, state_dict, prefix=""):
    """Copies an authors' `PSPModule` state dict into a `PSP` layer.

    Args:
        layer: a `keras_gald.layers.psp.PSP` (built or not) whose `bins`,
            `filters` and `branch_filters` match the checkpoint.
        state_dict: `StateDict` (or a plain `{key: array}` dict).
        prefix: prepended to every key, e.g. `"head."` (a trailing dot is added).

    Returns:
        The `StateDict` used (its `unused()` lists keys outside this module).
    """
    if not isinstance(layer, PSP):
        raise TypeError(f"load_official_psp expects a PSP layer, got {type(layer).__name__}")
    state_dict = _as_state_dict(state_dict)
    prefix = _normalise_prefix(prefix)
    _ensure_built(layer, state_dict, f"{prefix}stages.0.1.weight")
    for i, (conv, bn) in enumerate(zip(layer.stage_convs, layer.stage_bns)):
        load_conv(conv, state_dict, f"{prefix}stages.{i}.1")
        load_batch_norm(bn, state_dict, f"{prefix}stages.{i}.2")
    load_conv(layer.bottleneck_conv, state_dict, f"{prefix}bottleneck.0")
    load_batch_norm(layer.bottleneck_bn, state_dict, f"{prefix}bottleneck.1")
    _check_consumed(state_dict, (f"{prefix}stages.", f"{prefix}bottleneck."), "load_official_psp")
    return state_dict


def load_official_aspp(layer, state_dict, prefix=""):
    """Copies an authors' `ASPPModule` state dict into an `ASPP` layer.

    Args:
        layer: a `keras_gald.layers.aspp.ASPP` (built or not) whose `filters`,
            `branch_filters` and number of `dilation_rates` match the
            checkpoint (the rates themselves are not stored in it).
        state_dict: `StateDict` (or a plain `{key: array}` dict).
        prefix: prepended to every key, e.g. `"head."` (a trailing dot is added).

    Returns:
        The `StateDict` used (its `unused()` lists keys outside this module).
    """
    if not isinstance(layer, ASPP):
        raise TypeError(f"load_official_aspp expects an ASPP layer, got {type(layer).__name__}")
    state_dict = _as_state_dict(state_dict)
    prefix = _normalise_prefix(prefix)
    _ensure_built(layer, state_dict, f"{prefix}conv2.0.weight")
    load_conv(layer.conv1_conv, state_dict, f"{prefix}conv1.1")
    load_batch_norm(layer.conv1_bn, state_dict, f"{prefix}conv1.2")
    load_conv(layer.conv2_conv, state_dict, f"{prefix}conv2.0")
    load_batch_norm(layer.conv2_bn, state_dict, f"{prefix}conv2.1")
    for k, (conv, bn) in enumerate(zip(layer.atrous_convs, layer.atrous_bns)):
        load_conv(conv, state_dict, f"{prefix}conv{3 + k}.0")
        load_batch_norm(bn, state_dict, f"{prefix}conv{3 + k}.1")
    load_conv(layer.bottleneck_conv, state_dict, f"{prefix}bottleneck.0")
    load_batch_norm(layer.bottleneck_bn, state_dict, f"{prefix}bottleneck.1")
    # conv1 .. conv{2+len(rates)} are the layer's; conv{3+len(rates)} would be an
    # extra atrous branch of the checkpoint that the layer lacks.
    module_prefixes = tuple(
        f"{prefix}conv{i}." for i in range(1, 4 + len(layer.atrous_convs))
    ) + (f"{prefix}bottleneck.",)
    _check_consumed(state_dict, module_prefixes, "load_official_aspp")
    return state_dict
