"""ImageNet weights for `build_resnet` backbones from the files users have; format detected.

`load_backbone_weights(backbone, path, strict=True) -> BackboneWeightsReport` (also reached
through `build_resnet(weights=PATH)`, `GALD(backbone_weights=PATH)` and
`keras-gald train --set backbone_weights=PATH`):

| file                                           | detected by                     | stem     |
|------------------------------------------------|---------------------------------|----------|
| the GALD authors' `resnet{50,101}-deep.pth`    | `conv1.0.weight` (or legacy `conv1`/`conv2`/`conv3` 3x3) | `deep` |
| torchvision / timm ResNet-50/101 (`.pth`, `.pt`, `.bin`, `.npz`, `.safetensors`) | `conv1.weight` 7x7 | `classic` |
| `keras.applications` ResNet50/101 `.h5` (Keras 2 HDF5, e.g. `resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5`) | `conv1_conv` layer | `classic` |
| a Keras `.weights.h5` saved from the same `build_resnet` architecture | `.weights.h5` suffix | any |

Build the backbone with the file's stem (`stem="classic"`, `--set stem=classic`, for
torchvision / timm / Keras files); a stem mismatch is an error saying so. PyTorch files are
read without PyTorch (`checkpoint_files`); a `module.` / `backbone.` (any) prefix in front of
`layer1.0.conv1.weight` is detected and removed.

Mapping (PyTorch key -> Keras layer; convolutions OIHW -> HWIO, BatchNorm weight / bias /
running_mean / running_var -> gamma / beta / moving_mean / moving_variance):
`conv1`, `bn1` (classic) or `conv1.0/.1/.3/.4/.6`, `bn1` (deep) -> `stem_conv1`, `stem_bn1`
[, `stem_conv2`, `stem_bn2`, `stem_conv3`, `stem_bn3`]; `layer{L}.{b}.conv{i}` / `.bn{i}` ->
`layer{L}_block{b}_conv{i}` / `_bn{i}`; `layer{L}.0.downsample.0/.1` ->
`layer{L}_block0_downsample_conv/_bn`. `fc.*` and `num_batches_tracked` are skipped.
`keras.applications` names: `conv1_conv/conv1_bn` -> stem; `conv{L+1}_block{b+1}_{i}_conv/_bn`
-> `layer{L}_block{b}_conv{i}/_bn{i}`; `_0_conv/_0_bn` -> downsample.

Two differences of `keras.applications` ResNets (ResNet "v1"), and what they mean here:

- Their convolutions have biases; each is folded exactly into the following BatchNorm
  (`moving_mean -= bias`): identical outputs in inference, and in training the batch mean
  removes a constant bias anyway.
- They stride the *first 1x1* convolution of a downsampling block, torchvision and the
  authors (ResNet "v1.5", and `build_resnet`) the *3x3*. The kernels have the same shapes and
  load, but the strided blocks compute something different: the 1x1 conv now sees every
  pixel and the 3x3 subsamples. This touches layer2 block0 (and layer3/layer4 block0 where
  strided: never at output stride 8, which dilates instead -- as for every ImageNet
  backbone here). The weights are then a good initialisation rather than the exact ImageNet
  network; for fine-tuning a segmentation net this costs little (that block adapts in the
  first steps), but prefer torchvision / timm / the authors' files when you have them.
  BatchNorm epsilon is 1.001e-5 there, 1e-5 here (negligible). These weights expect Caffe
  inputs: use `normalization="bgr_mean"`; torchvision / timm weights expect `"imagenet"`.

Strict (default): every backbone weight must come from the file, with the right shape, and
no backbone key of the file may be left over (a ResNet-101 file for a ResNet-50 fails);
`strict=False` loads what matches and reports the rest.
"""

import dataclasses
import os
import re

import numpy as np

from keras_gald.backbones.checkpoint_files import CheckpointReadError, read_tensors

_TORCH_DEEP = (("stem_conv1", "conv1.0"), ("stem_bn1", "conv1.1"), ("stem_conv2", "conv1.3"),
               ("stem_bn2", "conv1.4"), ("stem_conv3", "conv1.6"), ("stem_bn3", "bn1"))
_TORCH_DEEP_LEGACY = (("stem_conv1", "conv1"), ("stem_bn1", "bn1"), ("stem_conv2", "conv2"),
                      ("stem_bn2", "bn2"), ("stem_conv3", "conv3"), ("stem_bn3", "bn3"))
_TORCH_CLASSIC = (("stem_conv1", "conv1"), ("stem_bn1", "bn1"))
_BN_FIELDS = (("gamma", "weight"), ("beta", "bias"), ("moving_mean", "running_mean"),
              ("moving_variance", "running_var"))
_KERAS_BN_FIELDS = (("gamma", "gamma"), ("beta", "beta"), ("moving_mean", "moving_mean"),
                    ("moving_variance", "moving_variance"))
_TORCH_BACKBONE = re.compile(r"^(conv[123]|bn[123]|layer[1-4])(\.|$)")
_KERAS_BACKBONE = re.compile(r"^conv[1-5]_")


@dataclasses.dataclass
class BackboneWeightsReport:
    """What `load_backbone_weights` did.

    Attributes:
        path: the file.
        format: `"torch_deep"`, `"torch_deep_legacy"`, `"torch_classic"`, `"keras_applications"`
            or `"keras_weights"`.
        loaded: file keys loaded, in load order.
        skipped: file keys not used by the backbone (`fc.*`, `num_batches_tracked`, ...).
        mismatched: `(key, file_shape, model_shape)` of tensors whose shape differs.
        missing: file keys the backbone needs that the file lacks.
        layers: Keras layers that received weights.
    """

    path: str
    format: str
    loaded: list
    skipped: list
    mismatched: list
    missing: list
    layers: list

    def summary(self):
        """One line: counts, with the first skipped / mismatched / missing keys."""
        def first(items):
            items = [i[0] if isinstance(i, tuple) else i for i in items]
            return "" if not items else " (" + ", ".join(items[:3]) + (", ..." if len(items) > 3 else "") + ")"

        return (f"backbone weights {os.path.basename(self.path)} [{self.format}]: loaded "
                f"{len(self.loaded)} tensors into {len(self.layers)} layers; skipped "
                f"{len(self.skipped)}{first(self.skipped)}; mismatched {len(self.mismatched)}"
                f"{first(self.mismatched)}; missing {len(self.missing)}{first(self.missing)}")


def _layers(backbone, layer_prefix):
    return {layer.name[len(layer_prefix):]: layer for layer in backbone.layers
            if layer.name.startswith(layer_prefix)}


def _block_names(layers):
    """`[(keras_block, L, b, has_downsample)]` of the backbone, in order."""
    out = []
    for stage in range(1, 5):
        b = 0
        while f"layer{stage}_block{b}_conv1" in layers:
            out.append((f"layer{stage}_block{b}", stage, b,
                        f"layer{stage}_block{b}_downsample_conv" in layers))
            b += 1
    return out


def torch_plan(layers, stem_format):
    """`[(keras_layer, torch_module, "conv"|"bn")]` for a torch-style file."""
    stem = {"deep": _TORCH_DEEP, "deep_legacy": _TORCH_DEEP_LEGACY, "classic": _TORCH_CLASSIC}
    plan = [(k, t, "conv" if "conv" in k else "bn") for k, t in stem[stem_format]]
    for block, stage, b, down in _block_names(layers):
        for i in (1, 2, 3):
            plan.append((f"{block}_conv{i}", f"layer{stage}.{b}.conv{i}", "conv"))
            plan.append((f"{block}_bn{i}", f"layer{stage}.{b}.bn{i}", "bn"))
        if down:
            plan.append((f"{block}_downsample_conv", f"layer{stage}.{b}.downsample.0", "conv"))
            plan.append((f"{block}_downsample_bn", f"layer{stage}.{b}.downsample.1", "bn"))
    return plan


def keras_applications_plan(layers):
    """`[(keras_layer, keras_applications_layer, "conv"|"bn")]` (classic stem)."""
    plan = [("stem_conv1", "conv1_conv", "conv"), ("stem_bn1", "conv1_bn", "bn")]
    for block, stage, b, down in _block_names(layers):
        src = f"conv{stage + 1}_block{b + 1}"
        if down:
            plan.append((f"{block}_downsample_conv", f"{src}_0_conv", "conv"))
            plan.append((f"{block}_downsample_bn", f"{src}_0_bn", "bn"))
        for i in (1, 2, 3):
            plan.append((f"{block}_conv{i}", f"{src}_{i}_conv", "conv"))
            plan.append((f"{block}_bn{i}", f"{src}_{i}_bn", "bn"))
    return plan


def _torch_prefix(tensors, path):
    if any(k.startswith("layer1.0.conv1.weight") for k in tensors):
        return ""
    hits = sorted(k[: -len("layer1.0.conv1.weight")] for k in tensors
                  if k.endswith("layer1.0.conv1.weight"))
    if len(hits) != 1:
        raise ValueError(
            f"{path}: not a ResNet state dict (no single '...layer1.0.conv1.weight' key; "
            f"first keys: {', '.join(sorted(tensors)[:5])})")
    return hits[0]


def detect_format(kind, tensors, path):
    """-> (format, key prefix) of a file read by `read_tensors`."""
    if kind == "keras_h5":
        if "conv1_conv/kernel" not in tensors:
            raise ValueError(f"{path}: an HDF5 file without the keras.applications ResNet layer "
                             "'conv1_conv'")
        return "keras_applications", ""
    prefix = _torch_prefix(tensors, path)
    if f"{prefix}conv1.0.weight" in tensors:
        return "torch_deep", prefix
    conv1 = tensors.get(f"{prefix}conv1.weight")
    if conv1 is None:
        raise ValueError(f"{path}: no stem convolution ({prefix}conv1.weight / conv1.0.weight)")
    if f"{prefix}conv2.weight" in tensors and np.shape(conv1)[-1] == 3:
        return "torch_deep_legacy", prefix
    return "torch_classic", prefix


def load_backbone_weights(backbone, path, strict=True, layer_prefix=None):
    """Loads ImageNet weights from `path` into a `build_resnet` model (format detected).

    Args:
        backbone: the `keras.Model` from `build_resnet` (or a model holding its layers
            under `layer_prefix`).
        path: the weights file (module docstring for the formats).
        strict: raise unless every backbone weight is loaded with its shape and no backbone
            key of the file is left over; `False`: load what matches, report the rest.
        layer_prefix: the `name_prefix` of the backbone's layers (default: detected from the
            unique `*stem_conv1` layer).

    Returns:
        A `BackboneWeightsReport` (`.summary()` is one line).

    Raises:
        FileNotFoundError, ValueError (naming the file): unreadable file, unknown format, stem
        mismatch (`stem="classic"` needed for 7x7 files), and in strict mode missing /
        mismatched / left-over keys.
    """
    path = os.fspath(path)
    if path.endswith(".weights.h5"):
        if not os.path.isfile(path):
            raise FileNotFoundError(f"backbone weights file not found: {path}")
        backbone.load_weights(path)
        names = [layer.name for layer in backbone.layers if layer.weights]
        return BackboneWeightsReport(path, "keras_weights",
                                     [v.path for v in backbone.weights], [], [], [], names)
    try:
        kind, tensors = read_tensors(path)
    except CheckpointReadError as err:
        raise ValueError(str(err)) from None
    if layer_prefix is None:
        stems = [layer.name for layer in backbone.layers if layer.name.endswith("stem_conv1")]
        if len(stems) != 1:
            raise ValueError(f"cannot find exactly one '*stem_conv1' layer in {backbone.name!r}")
        layer_prefix = stems[0][: -len("stem_conv1")]
    layers = _layers(backbone, layer_prefix)
    fmt, prefix = detect_format(kind, tensors, path)
    model_deep = "stem_conv2" in layers
    file_deep = fmt.startswith("torch_deep")
    if model_deep != file_deep:
        if file_deep:
            raise ValueError(f"{path} has the deep 3x3 stem (the GALD authors' ResNet); build "
                             "the model with stem='deep' (--set stem=deep)")
        raise ValueError(f"{path} has a classic 7x7 stem ({fmt.replace('_', ' ')}); build the "
                         "model with stem='classic' (--set stem=classic)")

    loaded, mismatched, missing, assignments, used_layers = [], [], [], [], []
    if kind == "keras_h5":
        plan = keras_applications_plan(layers)
        for keras_name, src, what in plan:
            layer = layers[keras_name]
            fields = (("kernel", "kernel"),) if what == "conv" else _KERAS_BN_FIELDS
            values = {}
            for attr, name in fields:
                key = f"{src}/{name}"
                if key not in tensors:
                    missing.append(key)
                    continue
                values[attr] = (key, np.asarray(tensors[key]))
            if what == "conv" and f"{src}/bias" in tensors:
                values["bias"] = (f"{src}/bias", np.asarray(tensors[f"{src}/bias"]))
            assignments.append((layer, what, values))
        all_keys = set(tensors)
        backbone_key = _KERAS_BACKBONE.match
    else:
        stem_format = {"torch_deep": "deep", "torch_deep_legacy": "deep_legacy",
                       "torch_classic": "classic"}[fmt]
        plan = torch_plan(layers, stem_format)
        for keras_name, src, what in plan:
            layer = layers[keras_name]
            fields = (("kernel", "weight"),) if what == "conv" else _BN_FIELDS
            values = {}
            for attr, name in fields:
                key = f"{prefix}{src}.{name}"
                if key not in tensors:
                    missing.append(key)
                    continue
                value = np.asarray(tensors[key])
                if attr == "kernel":
                    value = value.transpose(2, 3, 1, 0) if value.ndim == 4 else value
                values[attr] = (key, value)
            assignments.append((layer, what, values))
        all_keys = set(tensors)

        def backbone_key(key):
            return key.startswith(prefix) and _TORCH_BACKBONE.match(key[len(prefix):])

    # conv biases (keras.applications) fold into the following BN's moving mean
    biases = {}
    for layer, what, values in assignments:
        if what == "conv" and "bias" in values:
            biases[layer.name] = values.pop("bias")
    pending = []
    for layer, what, values in assignments:
        variables = {"kernel": getattr(layer, "kernel", None)} if what == "conv" else {
            "gamma": layer.gamma, "beta": layer.beta, "moving_mean": layer.moving_mean,
            "moving_variance": layer.moving_variance}
        if what == "bn":
            conv_name = layer.name[: -len("bn")] + "conv" if layer.name.endswith("_bn") else \
                re.sub(r"bn(\d)$", r"conv\1", layer.name)
            if conv_name in biases and "moving_mean" in values:
                bias_key, bias = biases.pop(conv_name)
                key, mean = values["moving_mean"]
                values["moving_mean"] = (key, mean - bias)
                loaded.append(bias_key)
        ok = True
        for attr, (key, value) in values.items():
            variable = variables[attr]
            if tuple(variable.shape) != tuple(value.shape):
                mismatched.append((key, tuple(value.shape), tuple(variable.shape)))
                ok = False
                continue
            pending.append((variable, value))
            loaded.append(key)
        if ok and values:
            used_layers.append(layer.name)
    used = set(loaded) | {m[0] for m in mismatched}
    skipped = sorted(k for k in all_keys - used)
    leftover = [k for k in skipped if backbone_key(k) and not k.endswith("num_batches_tracked")]
    if strict and (missing or mismatched or leftover):
        problems = []
        if missing:
            problems.append(f"{len(missing)} missing key(s): {', '.join(missing[:5])}")
        if mismatched:
            problems.append(f"{len(mismatched)} shape mismatch(es): " + ", ".join(
                f"{k} file {a} model {b}" for k, a, b in mismatched[:3]))
        if leftover:
            problems.append(f"{len(leftover)} backbone key(s) with no layer in "
                            f"{backbone.name!r} (a deeper network?): {', '.join(leftover[:5])}")
        raise ValueError(f"{path} does not fit backbone {backbone.name!r} ({fmt}): "
                         + "; ".join(problems) + " (strict=False loads what matches)")
    for variable, value in pending:
        variable.assign(value.astype(np.float32) if value.dtype.kind == "f" else value)
    return BackboneWeightsReport(path, fmt, loaded, skipped, mismatched, missing, used_layers)
