"""The GALD authors' (deep-stem) ResNet checkpoints -> `keras_gald.backbones` models.

Key mapping (PyTorch key under `prefix` -> Keras layer under the backbone's
layer-name prefix):

| PyTorch (current, >= 2020-08) | PyTorch (legacy stem) | Keras layer                  |
|-------------------------------|-----------------------|------------------------------|
| `conv1.0`                     | `conv1`               | `stem_conv1`                 |
| `conv1.1`                     | `bn1`  (64 ch)        | `stem_bn1`                   |
| `conv1.3`                     | `conv2`               | `stem_conv2`                 |
| `conv1.4`                     | `bn2`                 | `stem_bn2`                   |
| `conv1.6`                     | `conv3`               | `stem_conv3`                 |
| `bn1` (128 ch)                | `bn3`                 | `stem_bn3`                   |
| `layer{L}.{b}.conv{i}`        |                       | `layer{L}_block{b}_conv{i}`  |
| `layer{L}.{b}.bn{i}`          |                       | `layer{L}_block{b}_bn{i}`    |
| `layer{L}.0.downsample.0`     |                       | `layer{L}_block0_downsample_conv` |
| `layer{L}.0.downsample.1`     |                       | `layer{L}_block0_downsample_bn`   |

A classic-stem backbone takes torchvision's `conv1` (7x7) / `bn1`. The stem
format is detected from the keys (`conv1.0.weight` -> current,
`conv2.weight` -> legacy). Convolutions go OIHW -> HWIO; BatchNorm
`num_batches_tracked` is dropped. ImageNet `fc.*` keys and anything outside
the backbone (e.g. a GALD checkpoint's `head.*`, `dsn.*`) are left unused and
reported, so one `StateDict` can be passed on to the head's converter.
"""

import dataclasses
import os
import re

import numpy as np

from keras_gald.convert.torch_weights import StateDict, load_batch_norm, load_conv

_STEM_MAPS = {
    "deep": [
        ("stem_conv1", "conv1.0", "conv"),
        ("stem_bn1", "conv1.1", "bn"),
        ("stem_conv2", "conv1.3", "conv"),
        ("stem_bn2", "conv1.4", "bn"),
        ("stem_conv3", "conv1.6", "conv"),
        ("stem_bn3", "bn1", "bn"),
    ],
    "deep_legacy": [
        ("stem_conv1", "conv1", "conv"),
        ("stem_bn1", "bn1", "bn"),
        ("stem_conv2", "conv2", "conv"),
        ("stem_bn2", "bn2", "bn"),
        ("stem_conv3", "conv3", "conv"),
        ("stem_bn3", "bn3", "bn"),
    ],
    "classic": [
        ("stem_conv1", "conv1", "conv"),
        ("stem_bn1", "bn1", "bn"),
    ],
}

# First components of the keys that belong to the backbone (not `fc`).
_BACKBONE_ROOTS = {"conv1", "bn1", "conv2", "bn2", "conv3", "bn3", "layer1", "layer2", "layer3", "layer4"}
_BACKBONE_LAYER = re.compile(r"^(stem_(conv|bn)\d|layer[1-4]_block\d+_(conv\d|bn\d|downsample_conv|downsample_bn))$")


@dataclasses.dataclass
class ResNetLoadReport:
    """What `load_official_resnet` did.

    Attributes:
        stem_format: `"deep"`, `"deep_legacy"` or `"classic"`.
        loaded: checkpoint keys consumed (num_batches_tracked included), sorted.
        unused: keys under `prefix` left unconsumed (`fc.*`, `head.*`, ...), sorted.
        layers: Keras layer names that received weights.
    """

    stem_format: str
    loaded: list
    unused: list
    layers: list


def _module_of(key):
    """`layer3.6` for block keys, else the key without its parameter name."""
    parts = key.split(".")
    return ".".join(parts[:2]) if parts[0].startswith("layer") else ".".join(parts[:-1])


def _natural(text):
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", text)]


def _detect_layer_prefix(backbone):
    names = [layer.name for layer in backbone.layers if layer.name.endswith("stem_conv1")]
    if len(names) != 1:
        raise ValueError(
            f"cannot find exactly one '*stem_conv1' layer in {backbone.name!r} "
            f"(found {names}); pass layer_prefix= explicitly"
        )
    return names[0][: -len("stem_conv1")]


def _detect_stem_format(backbone_is_deep, state_dict, prefix):
    if not backbone_is_deep:
        if f"{prefix}conv1.0.weight" in state_dict or f"{prefix}conv2.weight" in state_dict:
            raise ValueError(
                "checkpoint has a deep stem (conv1.0 / conv2 keys) but the Keras backbone "
                "was built with stem='classic'"
            )
        return "classic"
    if f"{prefix}conv1.0.weight" in state_dict:
        return "deep"
    if f"{prefix}conv2.weight" in state_dict:
        return "deep_legacy"
    sample = sorted(k for k in state_dict.keys() if k.startswith(prefix))[:5]
    raise ValueError(
        f"no deep-stem keys under prefix {prefix!r}: expected {prefix}conv1.0.weight "
        f"(current) or {prefix}conv2.weight (pre-2020-08); first keys: {sample}"
    )


def load_official_resnet(backbone, state_dict, prefix="", layer_prefix=None):
    """Loads the authors' ResNet weights into a `keras_gald.backbones.build_resnet` model.

    Args:
        backbone: the Keras model holding the backbone layers (the model from
            `build_resnet`, or a flat model that contains them under
            `layer_prefix`).
        state_dict: a `keras_gald.convert.torch_weights.StateDict` (shared with
            later converters), or a plain `{key: array}` dict (wrapped; a
            `module.` prefix is stripped).
        prefix: prefix of the backbone keys in the checkpoint, e.g. `""` for the
            authors' GALD checkpoints and ImageNet ResNets, `"backbone."` for
            others.
        layer_prefix: the `name_prefix` the backbone was built with; detected
            from the unique `*stem_conv1` layer when `None`.

    Returns:
        A `ResNetLoadReport`.

    Raises:
        KeyError: a key the backbone needs is missing (the message names it).
        ValueError: a shape mismatch (names the key), a stem mismatch, a Keras
            backbone layer with no checkpoint counterpart, or backbone keys
            (`conv*`, `bn*`, `layer*`) left over, e.g. a deeper checkpoint.

    Example:
    >>> model = build_resnet("resnet101", multi_grid=(1, 2, 4))
    >>> report = load_official_resnet(model, StateDict(read_state_dict("resnet101-deep.npz")))
    >>> report.unused  # ['fc.bias', 'fc.weight'] for an ImageNet checkpoint
    """
    if not isinstance(state_dict, StateDict):
        state_dict = StateDict(state_dict)
    if layer_prefix is None:
        layer_prefix = _detect_layer_prefix(backbone)
    layers = {layer.name: layer for layer in backbone.layers}

    def layer(name):
        full = f"{layer_prefix}{name}"
        if full not in layers:
            raise ValueError(f"backbone {backbone.name!r} has no layer {full!r}")
        return layers[full]

    before = set(state_dict.unused())
    stem_format = _detect_stem_format(
        f"{layer_prefix}stem_conv2" in layers, state_dict, prefix
    )
    plan = list(_STEM_MAPS[stem_format])
    for stage in range(1, 5):
        block = 0
        while f"{layer_prefix}layer{stage}_block{block}_conv1" in layers:
            keras_block = f"layer{stage}_block{block}"
            torch_block = f"layer{stage}.{block}"
            for i in (1, 2, 3):
                plan.append((f"{keras_block}_conv{i}", f"{torch_block}.conv{i}", "conv"))
                plan.append((f"{keras_block}_bn{i}", f"{torch_block}.bn{i}", "bn"))
            if f"{layer_prefix}{keras_block}_downsample_conv" in layers:
                plan.append((f"{keras_block}_downsample_conv", f"{torch_block}.downsample.0", "conv"))
                plan.append((f"{keras_block}_downsample_bn", f"{torch_block}.downsample.1", "bn"))
            block += 1
        if block == 0:
            raise ValueError(f"backbone {backbone.name!r} has no layer{stage} blocks")

    planned = {f"{layer_prefix}{keras_name}" for keras_name, _, _ in plan}
    orphans = sorted(
        name
        for name, lay in layers.items()
        if name.startswith(layer_prefix)
        and _BACKBONE_LAYER.match(name[len(layer_prefix):])
        and lay.weights
        and name not in planned
    )
    if orphans:
        raise ValueError(f"backbone layers without a checkpoint mapping: {orphans}")

    for keras_name, torch_name, kind in plan:
        loader = load_conv if kind == "conv" else load_batch_norm
        loader(layer(keras_name), state_dict, f"{prefix}{torch_name}")

    after = set(state_dict.unused())
    leftover = sorted(
        k
        for k in after
        if k.startswith(prefix) and k[len(prefix):].split(".")[0] in _BACKBONE_ROOTS
    )
    if leftover:
        modules = sorted({_module_of(k[len(prefix):]) for k in leftover}, key=_natural)
        raise ValueError(
            f"checkpoint backbone keys with no Keras counterpart (different depth, "
            f"stem or downsample layout?): {len(leftover)} keys in {', '.join(modules)}"
        )
    return ResNetLoadReport(
        stem_format=stem_format,
        loaded=sorted(before - after),
        unused=sorted(k for k in after if k.startswith(prefix)),
        layers=[f"{layer_prefix}{keras_name}" for keras_name, _, _ in plan],
    )


def read_state_dict(path):
    """Reads a local checkpoint into a `{key: np.ndarray}` dict.

    `.npz` files are read with NumPy (no pickle). `.pth` / `.pt` / `.pth.tar`
    are read with PyTorch when it is installed, else with the torch-free reader
    `keras_gald.backbones.checkpoint_files.read_torch_file` (tensors, dicts and
    `OrderedDict`s only; nothing from the file is executed); a
    `{"state_dict": ...}` or `{"model": ...}` wrapper is unwrapped.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint file not found: {path!r}")
    if path.endswith(".npz"):
        with np.load(path, allow_pickle=False) as data:
            return {key: data[key] for key in data.files}
    if path.endswith((".pth", ".pt", ".pth.tar")):
        try:
            import torch
        except ImportError:
            from keras_gald.backbones.checkpoint_files import CheckpointReadError, read_torch_file

            try:
                return read_torch_file(path)
            except CheckpointReadError as error:
                raise ValueError(f"{error} (PyTorch is not installed; the torch-free reader "
                                 "reads tensor state dicts only)") from None
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
        for wrapper in ("state_dict", "model"):
            if isinstance(checkpoint, dict) and isinstance(checkpoint.get(wrapper), dict):
                checkpoint = checkpoint[wrapper]
        return {key: value.detach().cpu().numpy() for key, value in checkpoint.items()}
    raise ValueError(f"unsupported checkpoint format {path!r}: expected .npz, .pth or .pt")


def load_official_resnet_file(backbone, path, prefix="", layer_prefix=None):
    """`load_official_resnet` from a local `.npz` / `.pth` file (see `read_state_dict`)."""
    return load_official_resnet(
        backbone, StateDict(read_state_dict(path)), prefix=prefix, layer_prefix=layer_prefix
    )
