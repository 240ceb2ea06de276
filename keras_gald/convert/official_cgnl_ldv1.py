"""Load the GALD authors' `SpatialCGNL`, `LocalAttenModule` and `GALDBlock`
PyTorch weights into `CGNL`, `LDv1` and `GALDBlockV1`.

Key names (GALD-DGCNet, libs/models/GALDNet.py), relative to `prefix`:
- `SpatialCGNL`: `t.weight`, `p.weight`, `g.weight` (planes, C, 1, 1);
  `z.weight` (C, planes // groups, 1, 1); `gn.weight`, `gn.bias`.
- `LocalAttenModule`: `dconv{i}.0.{weight,bias}` (depthwise (C, 1, 3, 3)),
  `dconv{i}.1.{weight,bias,running_mean,running_var,num_batches_tracked}`.
- `GALDBlock`: `down.0.*`, `down.1.*`, `long_relation.*`, `local_attention.*`
  (in a whole network: `head.a2block.` prefix).

Each loader builds an unbuilt layer from the checkpoint's shapes first (so
`load_official_gald_block(GALDBlockV1(256), sd, "head.a2block")` works on a
fresh layer), and returns the `StateDict` so callers can check `unused()`.
Numerical options that the checkpoint cannot encode (LDv1 `padding`,
`mask_activation`, `align_corners`; CGNL `use_scale`) are the caller's:
`GALDBlockV1`'s defaults and `AUTHORS_LDV1_OPTIONS` reproduce the authors.
"""

from keras_gald.convert.torch_weights import (
    StateDict,
    load_batch_norm,
    load_conv,
    load_group_norm,
)


def _key(prefix, name):
    if prefix and not prefix.endswith("."):
        prefix += "."
    return f"{prefix}{name}"


def _as_state_dict(state_dict):
    return state_dict if isinstance(state_dict, StateDict) else StateDict(state_dict)


def _peek_shape(state_dict, key):
    if key not in state_dict:
        raise KeyError(f"missing key in state_dict: {key!r}")
    # Every peeked key is loaded right after, so marking it used here is exact.
    return tuple(state_dict.take(key).shape)


def load_official_cgnl(layer, state_dict, prefix=""):
    """Loads the authors' `SpatialCGNL` (`t, p, g, z, gn`) into a `CGNL` layer.

    Args:
        layer: a `keras_gald.layers.cgnl.CGNL`; built here from `t.weight`'s
            shape when unbuilt.
        state_dict: `StateDict` (a plain mapping is wrapped).
        prefix: key prefix, e.g. `"head.a2block.long_relation"` (a trailing
            dot is optional).

    Returns:
        The `StateDict` (consumed keys marked).
    """
    state_dict = _as_state_dict(state_dict)
    planes, channels = _peek_shape(state_dict, _key(prefix, "t.weight"))[:2]
    if planes != layer.planes:
        raise ValueError(
            f"{_key(prefix, 't.weight')} has {planes} output channels but "
            f"CGNL(planes={layer.planes})"
        )
    z_in = _peek_shape(state_dict, _key(prefix, "z.weight"))[1]
    if z_in * layer.groups != planes:
        raise ValueError(
            f"{_key(prefix, 'z.weight')} implies {planes // z_in} groups but "
            f"CGNL(groups={layer.groups})"
        )
    if not layer.built:
        layer.build((None, None, None, channels))
    for name in ("t", "p", "g", "z"):
        load_conv(getattr(layer, name), state_dict, _key(prefix, name))
    load_group_norm(layer.gn, state_dict, _key(prefix, "gn"))
    return state_dict


def load_official_ldv1(layer, state_dict, prefix=""):
    """Loads the authors' `LocalAttenModule` (`dconv{1..n}.{0,1}`) into `LDv1`.

    Args:
        layer: a `keras_gald.layers.ldv1.LDv1` with `downsample_rate = 2**n`
            matching the checkpoint's `n` blocks; built here when unbuilt.
        state_dict: `StateDict` (a plain mapping is wrapped).
        prefix: key prefix, e.g. `"head.a2block.local_attention"`.

    Returns:
        The `StateDict` (consumed keys marked).
    """
    state_dict = _as_state_dict(state_dict)
    n = layer.num_convs
    extra = _key(prefix, f"dconv{n + 1}.0.weight")
    if extra in state_dict:
        raise ValueError(
            f"checkpoint has {extra!r}: more depthwise blocks than "
            f"LDv1(downsample_rate={layer.downsample_rate}) has ({n})"
        )
    channels = _peek_shape(state_dict, _key(prefix, "dconv1.0.weight"))[0]
    if not layer.built:
        layer.build((None, None, None, channels))
    for i, (conv, bn) in enumerate(zip(layer.dconv_convs, layer.dconv_bns), start=1):
        load_conv(conv, state_dict, _key(prefix, f"dconv{i}.0"))
        load_batch_norm(bn, state_dict, _key(prefix, f"dconv{i}.1"))
    return state_dict


def load_official_gald_block(layer, state_dict, prefix=""):
    """Loads the authors' `GALDBlock` (`down`, `long_relation`, `local_attention`).

    Args:
        layer: a `keras_gald.layers.gald_block.GALDBlockV1`; built here from
            `down.0.weight`'s shape when unbuilt.
        state_dict: `StateDict` (a plain mapping is wrapped).
        prefix: key prefix, e.g. `"head.a2block"` for a whole GALD network.

    Returns:
        The `StateDict` (consumed keys marked).
    """
    state_dict = _as_state_dict(state_dict)
    channels = _peek_shape(state_dict, _key(prefix, "down.0.weight"))[0]
    if not layer.built:
        layer.build((None, None, None, channels))
    load_conv(layer.down_conv, state_dict, _key(prefix, "down.0"))
    load_batch_norm(layer.down_bn, state_dict, _key(prefix, "down.1"))
    load_official_cgnl(layer.long_relation, state_dict, _key(prefix, "long_relation"))
    load_official_ldv1(layer.local_attention, state_dict, _key(prefix, "local_attention"))
    return state_dict
