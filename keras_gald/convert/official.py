"""The GALD authors' PyTorch checkpoints -> keras_gald models, with a load report.

`load_official_state_dict(model, state_dict)` loads

- a whole `GALD_res50` / `GALD_res101` checkpoint (`conv1.*`, `bn1.*`,
  `layer{1-4}.*`, `head.*`, `dsn.*`) into
  `keras_gald.models.official.official_gald_v1(depth)`;
- a `GALDHead` checkpoint (`conva.*`, `a2block.*`, `convb.*`,
  `bottleneck.*`, no `head.` prefix, e.g. the authors' head fixture) into
  `keras_gald.models.official.build_gald_head(...)`;
- a backbone-only checkpoint (the authors' ImageNet `resnet50-deep.pth` /
  `resnet101-deep.pth`: backbone keys plus `fc.*`) into the backbone of any
  keras_gald model with a deep-stem ResNet, e.g. `official_gald_v1(50)` or
  `keras_gald.models.GALD("resnet50", stem="deep", ...)` (its nested backbone
  model is found by its `*stem_conv1` layer); the other layers keep their
  initialisation and are listed in `report.untouched`.

Key map (`hk` = `head.` in a whole network, empty for a head checkpoint):

| PyTorch key prefix                         | Keras layer (official_gald_v1)            |
|--------------------------------------------|-------------------------------------------|
| `conv1.{0,1,3,4,6}`, `bn1` (current stem)  | `backbone_stem_{conv,bn}{1,2,3}`           |
| `conv1, bn1, conv2, bn2, conv3, bn3` (pre-2020-08 stem) | the same                      |
| `layer{L}.{b}.{conv,bn}{i}`, `.downsample.{0,1}` | `backbone_layer{L}_block{b}_*`      |
| `{hk}conva.{0,1}`                          | `head_conva_conv`, `head_conva_bn`         |
| `{hk}a2block.*`                            | `head_a2block` (`GALDBlockV1`)             |
| `{hk}convb.{0,1}`                          | `head_convb_conv`, `head_convb_bn`         |
| `{hk}bottleneck.{0,1}`, `{hk}bottleneck.3` | `head_bottleneck_conv`, `_bn`, `head_classifier` |
| `dsn.{0,1,4}`                              | `dsn_conv`, `dsn_bn`, `dsn_classifier`     |

The loading itself is done by the per-module loaders
(`official_resnet.load_official_resnet`,
`official_cgnl_ldv1.load_official_gald_block`,
`torch_weights.load_conv` / `load_batch_norm`); this module works out which
keys the model needs, compares them with the checkpoint and reports.

Keys ignored by design (listed in `report.ignored`, never an error): `fc.*`
(the ImageNet classifier of backbone checkpoints) and `dsn.*` when the model
was built with `aux_head=False` (the auxiliary head is training-only).
`num_batches_tracked` buffers are dropped (`report.skipped`). A leading
`module.` (DataParallel / DDP) is stripped from every key.
"""

import dataclasses
import os
import re

import keras
import numpy as np

from keras_gald.convert.official_cgnl_ldv1 import load_official_gald_block
from keras_gald.convert.official_resnet import _STEM_MAPS, load_official_resnet, read_state_dict
from keras_gald.convert.torch_weights import StateDict, load_batch_norm, load_conv, to_numpy

HEAD_LAYER_PREFIX = "head_"
DSN_LAYER_PREFIX = "dsn_"
MODULE_PREFIX = "module."

# (Keras layer name after the head's layer prefix, PyTorch module after `hk`, kind)
_HEAD_PLAN = (
    ("conva_conv", "conva.0", "conv"),
    ("conva_bn", "conva.1", "bn"),
    ("a2block", "a2block", "gald_block"),
    ("convb_conv", "convb.0", "conv"),
    ("convb_bn", "convb.1", "bn"),
    ("bottleneck_conv", "bottleneck.0", "conv"),
    ("bottleneck_bn", "bottleneck.1", "bn"),
    ("classifier", "bottleneck.3", "conv"),
)
_DSN_PLAN = (
    ("conv", "dsn.0", "conv"),
    ("bn", "dsn.1", "bn"),
    ("classifier", "dsn.4", "conv"),
)
_BLOCK_LAYER = re.compile(
    r"^layer([1-4])_block(\d+)_(conv[123]|bn[123]|downsample_conv|downsample_bn)$"
)
_BACKBONE_ROOTS = {"conv1", "bn1", "conv2", "bn2", "conv3", "bn3", "layer1", "layer2", "layer3", "layer4"}
_BARE_HEAD_ROOTS = {"conva", "a2block", "convb", "bottleneck"}
_BN_PARAMS = (
    ("weight", "gamma"),
    ("bias", "beta"),
    ("running_mean", "moving_mean"),
    ("running_var", "moving_variance"),
)


class OfficialCheckpointError(ValueError):
    """A checkpoint that does not fit the model (strict loading).

    Attributes:
        report: the `OfficialLoadReport` (nothing was loaded).
    """

    def __init__(self, report):
        self.report = report
        super().__init__(
            "the checkpoint does not match the model "
            "(nothing was loaded; pass strict=False to load what matches):\n"
            + report.problems()
        )


@dataclasses.dataclass
class OfficialLoadReport:
    """What `load_official_state_dict` found and did.

    Attributes:
        checkpoint_kind: `"network"` (backbone + head keys), `"backbone"`
            (backbone keys only), `"head"` (a bare `GALDHead` checkpoint) or
            `"empty"`.
        stem_format: `"deep"` (current stem names), `"deep_legacy"`
            (pre-2020-08 names) or `None` (no backbone in the model).
        parts: the model parts the checkpoint was matched against, among
            `"backbone"`, `"head"`, `"dsn"`.
        loaded: checkpoint keys copied into the model, sorted.
        missing: keys the model needs that the checkpoint lacks.
        unexpected: checkpoint keys with no place in the model.
        mismatched: `(key, checkpoint_shape, model_shape)` for keys whose
            shapes differ (shapes in PyTorch layout).
        skipped: `num_batches_tracked` buffers, dropped by design.
        ignored: keys deliberately not loaded (`fc.*`; `dsn.*` when the model
            has no auxiliary head).
        untouched: Keras layers with weights that no checkpoint key maps to
            (they keep their current values), e.g. a `GALD` model's head when
            loading a backbone checkpoint.
        strict: whether loading was strict.
    """

    checkpoint_kind: str
    stem_format: object
    parts: list
    loaded: list = dataclasses.field(default_factory=list)
    missing: list = dataclasses.field(default_factory=list)
    unexpected: list = dataclasses.field(default_factory=list)
    mismatched: list = dataclasses.field(default_factory=list)
    skipped: list = dataclasses.field(default_factory=list)
    ignored: list = dataclasses.field(default_factory=list)
    untouched: list = dataclasses.field(default_factory=list)
    strict: bool = True

    @property
    def ok(self):
        """No missing, unexpected or mismatched keys."""
        return not (self.missing or self.unexpected or self.mismatched)

    def problems(self):
        """The missing / unexpected / mismatched keys, one per line."""
        lines = []
        if self.missing:
            lines.append(f"missing keys ({len(self.missing)}): " + ", ".join(self.missing))
        if self.unexpected:
            lines.append(f"unexpected keys ({len(self.unexpected)}): " + ", ".join(self.unexpected))
        if self.mismatched:
            lines.append(
                f"shape mismatches ({len(self.mismatched)}): "
                + ", ".join(f"{k} checkpoint {c} vs model {m}" for k, c, m in self.mismatched)
            )
        return "\n".join(lines) or "no problems"

    def __str__(self):
        lines = [
            f"checkpoint: {self.checkpoint_kind}"
            + (f" (stem names: {self.stem_format})" if self.stem_format else "")
            + f"; matched against model parts: {', '.join(self.parts) or 'none'}",
            f"loaded {len(self.loaded)} tensors; skipped {len(self.skipped)} num_batches_tracked",
        ]
        if self.ignored:
            lines.append(f"ignored ({len(self.ignored)}): " + ", ".join(self.ignored))
        if not self.ok:
            lines.append(self.problems())
            if not self.strict:
                lines.append("(lenient: those model weights keep their current values)")
        else:
            lines.append("missing: 0, unexpected: 0, shape mismatches: 0")
        if self.untouched:
            lines.append(
                f"layers left at their current values ({len(self.untouched)}): "
                + ", ".join(self.untouched)
            )
        return "\n".join(lines)


@dataclasses.dataclass
class _Entry:
    """One PyTorch tensor of the plan: its key, PyTorch shape and Keras variable."""

    key: str
    shape: tuple
    variable: object
    layout: str  # "oihw", "depthwise" or "vector"

    def current_value(self):
        """The Keras variable's value in PyTorch layout."""
        value = keras.ops.convert_to_numpy(self.variable.value)
        if self.layout == "oihw":
            return value.transpose(3, 2, 0, 1)
        if self.layout == "depthwise":
            kh, kw, c, m = value.shape
            return value.reshape(kh, kw, c * m).transpose(2, 0, 1)[:, None]
        return value


def _conv_entries(layer, prefix):
    kernel = layer.kernel
    if isinstance(layer, keras.layers.DepthwiseConv2D):
        kh, kw, c, m = kernel.shape
        entries = [_Entry(f"{prefix}.weight", (c * m, 1, kh, kw), kernel, "depthwise")]
    else:
        kh, kw, i, o = kernel.shape
        entries = [_Entry(f"{prefix}.weight", (o, i, kh, kw), kernel, "oihw")]
    if layer.use_bias:
        entries.append(_Entry(f"{prefix}.bias", tuple(layer.bias.shape), layer.bias, "vector"))
    return entries


def _bn_entries(layer, prefix):
    return [
        _Entry(f"{prefix}.{torch_name}", tuple(getattr(layer, attr).shape), getattr(layer, attr), "vector")
        for torch_name, attr in _BN_PARAMS
    ]


def _gn_entries(layer, prefix):
    return [
        _Entry(f"{prefix}.weight", tuple(layer.gamma.shape), layer.gamma, "vector"),
        _Entry(f"{prefix}.bias", tuple(layer.beta.shape), layer.beta, "vector"),
    ]


def _gald_block_entries(block, prefix):
    entries = _conv_entries(block.down_conv, f"{prefix}.down.0")
    entries += _bn_entries(block.down_bn, f"{prefix}.down.1")
    cgnl = block.long_relation
    for name in ("t", "p", "g", "z"):
        entries += _conv_entries(getattr(cgnl, name), f"{prefix}.long_relation.{name}")
    entries += _gn_entries(cgnl.gn, f"{prefix}.long_relation.gn")
    ld = block.local_attention
    for i, (conv, bn) in enumerate(zip(ld.dconv_convs, ld.dconv_bns), start=1):
        entries += _conv_entries(conv, f"{prefix}.local_attention.dconv{i}.0")
        entries += _bn_entries(bn, f"{prefix}.local_attention.dconv{i}.1")
    return entries


def _entries(layer, prefix, kind):
    if kind == "conv":
        return _conv_entries(layer, prefix)
    if kind == "bn":
        return _bn_entries(layer, prefix)
    return _gald_block_entries(layer, prefix)


def _walk_models(model):
    """`model` and every functional model nested in it (depth first)."""
    yield model
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            yield from _walk_models(layer)


def _layer_dict(model):
    return {layer.name: layer for layer in model.layers}


def _all_weighted_layers(model):
    """`(path, layer)` for every leaf layer with weights, nested models included."""
    out = []
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            out += [(f"{layer.name}/{p}", l) for p, l in _all_weighted_layers(layer)]
        elif layer.weights:
            out.append((layer.name, layer))
    return out


@dataclasses.dataclass
class _Part:
    """A part of the model the checkpoint maps to: backbone, head or dsn."""

    name: str
    holder: object  # the keras.Model containing the layers
    layer_prefix: str
    plan: list  # (keras layer name, torch module, kind)


def _find_unique(model, layer_name_suffix, what, exact=False):
    hits = []
    for sub in _walk_models(model):
        for layer in sub.layers:
            match = layer.name == layer_name_suffix if exact else layer.name.endswith(layer_name_suffix)
            if match and not isinstance(layer, keras.Model):
                hits.append((sub, layer.name))
    if len(hits) > 1:
        raise ValueError(
            f"model {model.name!r} has several {what} ({[f'{s.name}/{n}' for s, n in hits]}); "
            "cannot tell which one the checkpoint belongs to"
        )
    return hits[0] if hits else None


def _backbone_part(model, stem_format):
    hit = _find_unique(model, "stem_conv1", "backbones ('*stem_conv1' layers)")
    if hit is None:
        return None
    holder, name = hit
    prefix = name[: -len("stem_conv1")]
    layers = _layer_dict(holder)
    if f"{prefix}stem_conv2" not in layers:
        raise ValueError(
            f"the backbone {holder.name!r} has a classic (7x7) stem; the authors' checkpoints "
            "are deep-stem ResNets: build the model with stem='deep'"
        )
    plan = list(_STEM_MAPS[stem_format])
    blocks = []
    for layer_name in layers:
        if not layer_name.startswith(prefix):
            continue
        m = _BLOCK_LAYER.match(layer_name[len(prefix):])
        if m is None:
            continue
        stage, block, part = m.groups()
        torch_part = {"downsample_conv": "downsample.0", "downsample_bn": "downsample.1"}.get(part, part)
        kind = "bn" if part.startswith("bn") or part.endswith("_bn") else "conv"
        blocks.append(((int(stage), int(block)), (layer_name[len(prefix):], f"layer{stage}.{block}.{torch_part}", kind)))
    plan += [item for _, item in sorted(blocks, key=lambda b: b[0])]
    return _Part("backbone", holder, prefix, plan)


def _head_part(model, head_key_prefix):
    hit = _find_unique(model, f"{HEAD_LAYER_PREFIX}conva_conv", "GALD heads ('head_conva_conv')", exact=True)
    if hit is None:
        return None
    holder = hit[0]
    layers = _layer_dict(holder)
    missing = [f"{HEAD_LAYER_PREFIX}{n}" for n, _, _ in _HEAD_PLAN if f"{HEAD_LAYER_PREFIX}{n}" not in layers]
    if missing:
        raise ValueError(f"model {holder.name!r} has head_conva_conv but lacks {missing}")
    plan = [(n, f"{head_key_prefix}{t}", kind) for n, t, kind in _HEAD_PLAN]
    return _Part("head", holder, HEAD_LAYER_PREFIX, plan)


def _dsn_part(model):
    hit = _find_unique(model, f"{DSN_LAYER_PREFIX}conv", "auxiliary heads ('dsn_conv')", exact=True)
    if hit is None:
        return None
    holder = hit[0]
    layers = _layer_dict(holder)
    missing = [f"{DSN_LAYER_PREFIX}{n}" for n, _, _ in _DSN_PLAN if f"{DSN_LAYER_PREFIX}{n}" not in layers]
    if missing:
        raise ValueError(f"model {holder.name!r} has dsn_conv but lacks {missing}")
    return _Part("dsn", holder, DSN_LAYER_PREFIX, list(_DSN_PLAN))


def _part_entries(part):
    layers = _layer_dict(part.holder)
    entries = []
    for keras_name, torch_module, kind in part.plan:
        entries += _entries(layers[f"{part.layer_prefix}{keras_name}"], torch_module, kind)
    return entries


def _part_layer_paths(part, model):
    """Paths (as in `_all_weighted_layers`) of the leaf layers the part loads."""
    layers = _layer_dict(part.holder)
    targets = {id(layers[f"{part.layer_prefix}{n}"]) for n, _, _ in part.plan}
    return {path for path, layer in _all_weighted_layers(model) if id(layer) in targets}


def _load_part(part, state_dict):
    """Loads one part with the per-module loaders (every key is in `state_dict`)."""
    if part.name == "backbone":
        load_official_resnet(part.holder, state_dict, prefix="", layer_prefix=part.layer_prefix)
        return
    layers = _layer_dict(part.holder)
    for keras_name, torch_module, kind in part.plan:
        layer = layers[f"{part.layer_prefix}{keras_name}"]
        if kind == "conv":
            load_conv(layer, state_dict, torch_module)
        elif kind == "bn":
            load_batch_norm(layer, state_dict, torch_module)
        else:
            load_official_gald_block(layer, state_dict, torch_module)


def _read_mapping(state_dict):
    if isinstance(state_dict, (str, os.PathLike)):
        return read_state_dict(state_dict)
    if isinstance(state_dict, StateDict):
        raise TypeError(
            "pass the plain {key: tensor} mapping (or a file path), not a StateDict"
        )
    if not hasattr(state_dict, "items"):
        raise TypeError(
            f"state_dict must be a mapping of names to arrays/tensors or a path; got "
            f"{type(state_dict).__name__}"
        )
    return dict(state_dict.items())


def _strip_module_prefix(mapping):
    out = {}
    for key, value in mapping.items():
        short = key
        while short.startswith(MODULE_PREFIX):
            short = short[len(MODULE_PREFIX):]
        if short in out:
            raise ValueError(f"checkpoint key {key!r} collides with {short!r} after stripping 'module.'")
        out[short] = value
    return out


def _root(key):
    return key.split(".", 1)[0]


def _checkpoint_kind(keys):
    roots = {_root(k) for k in keys}
    if roots & {"head", "dsn"}:
        return "network"
    if roots & _BARE_HEAD_ROOTS and "layer1" not in roots:
        return "head"
    if roots & _BACKBONE_ROOTS:
        return "backbone"
    return "empty"


def _stem_format(keys):
    if "conv1.0.weight" in keys:
        return "deep"
    if "conv2.weight" in keys:
        return "deep_legacy"
    return "deep"  # report missing keys under the current names


def _shape(value):
    return tuple(int(s) for s in (value.shape if hasattr(value, "shape") else np.shape(value)))


def load_official_state_dict(model, state_dict, strict=True):
    """Loads an authors' PyTorch `state_dict` into a keras_gald model and reports.

    Args:
        model: `keras_gald.models.official.official_gald_v1(...)`,
            `build_gald_head(...)`, or (for backbone-only checkpoints) any
            keras_gald model with a deep-stem `build_resnet` backbone, flat or
            nested (e.g. `keras_gald.models.GALD(..., stem="deep")`).
        state_dict: a mapping of key -> NumPy array or torch tensor, or the
            path of a `.npz` or `.pth`/`.pt` file (`.pth` needs PyTorch; a
            clear `ImportError` says so otherwise). Current or pre-2020-08
            stem names; an optional `module.` prefix.
        strict: raise `OfficialCheckpointError` (a `ValueError`) listing
            every missing, unexpected and shape-mismatched key, before
            touching any weight. With `strict=False` whatever matches is
            loaded and the rest keeps its current values; the report lists
            the problems.

    Returns:
        An `OfficialLoadReport` (`print(report)` summarises it).

    Raises:
        OfficialCheckpointError: strict loading with problems.
        FileNotFoundError, ImportError: unreadable checkpoint file.
        ValueError: a model with nothing to load into, or a classic-stem
            backbone.

    Example:
    >>> model = official_gald_v1(101, num_classes=19)
    >>> report = load_official_state_dict(model, "GALD_res101.pth")
    >>> print(report)
    """
    tensors = _strip_module_prefix(_read_mapping(state_dict))
    keys = set(tensors)
    kind = _checkpoint_kind(keys)
    stem_format = _stem_format(keys)
    head_key_prefix = "" if kind == "head" else "head."

    parts = [
        p
        for p in (_backbone_part(model, stem_format), _head_part(model, head_key_prefix), _dsn_part(model))
        if p is not None
    ]
    if not parts:
        raise ValueError(
            f"model {model.name!r} has no layers the authors' checkpoints map to "
            "(no '*stem_conv1' backbone, no 'head_conva_conv', no 'dsn_conv')"
        )
    has_dsn = any(p.name == "dsn" for p in parts)
    if kind == "backbone":
        # An ImageNet backbone checkpoint: only the backbone is matched.
        parts = [p for p in parts if p.name == "backbone"] or parts

    entries = {}
    for part in parts:
        for entry in _part_entries(part):
            entries[entry.key] = entry
    bn_modules = {e.key.rsplit(".", 1)[0] for e in entries.values() if e.key.endswith(".running_var")}

    report = OfficialLoadReport(
        checkpoint_kind=kind,
        stem_format=stem_format if any(p.name == "backbone" for p in parts) else None,
        parts=[p.name for p in parts],
        strict=bool(strict),
    )
    usable = {}
    for key in sorted(keys):
        if key in entries:
            shape = _shape(tensors[key])
            if shape != entries[key].shape:
                report.mismatched.append((key, shape, entries[key].shape))
            else:
                usable[key] = tensors[key]
        elif key.endswith(".num_batches_tracked") and key.rsplit(".", 1)[0] in bn_modules:
            report.skipped.append(key)
        elif _root(key) == "fc" or (_root(key) == "dsn" and not has_dsn):
            report.ignored.append(key)
        else:
            report.unexpected.append(key)
    report.missing = sorted(k for k in entries if k not in keys)
    report.loaded = sorted(usable)

    loaded_paths = set()
    for part in parts:
        loaded_paths |= _part_layer_paths(part, model)
    report.untouched = [p for p, _ in _all_weighted_layers(model) if p not in loaded_paths]

    if strict and not report.ok:
        raise OfficialCheckpointError(report)

    # Every planned key gets a tensor (the checkpoint's, or the layer's own
    # value for missing / mismatched keys), so the per-module loaders run
    # unchanged; a key they leave unconsumed would mean the plan and the
    # loaders disagree.
    filled = {
        key: (usable[key] if key in usable else to_numpy(entry.current_value()))
        for key, entry in entries.items()
    }
    sd = StateDict(filled, strip_prefixes=())
    try:
        for part in parts:
            _load_part(part, sd)
    except (KeyError, ValueError) as error:
        raise RuntimeError(f"internal error: the key plan and the module loaders disagree: {error}") from error
    if sd.unused():
        raise RuntimeError(f"internal error: planned keys not loaded: {sd.unused()}")
    return report


def official_state_dict_from_keras(model):
    """The model's weights under the authors' PyTorch key names (current stem names).

    The inverse of `load_official_state_dict` (NumPy arrays in PyTorch
    layout: OIHW kernels, `(C, 1, kh, kw)` depthwise kernels; no
    `num_batches_tracked`). Handy to feed a converted model back to the
    authors' PyTorch code.

    Args:
        model: a model `load_official_state_dict` accepts.

    Returns:
        `{key: np.ndarray}`.
    """
    parts = [p for p in (_backbone_part(model, "deep"), _head_part(model, "head."), _dsn_part(model)) if p]
    if not parts:
        raise ValueError(f"model {model.name!r} has no layers the authors' checkpoints map to")
    if [p.name for p in parts] == ["head"]:
        parts = [_head_part(model, "")]
    return {e.key: e.current_value() for part in parts for e in _part_entries(part)}
