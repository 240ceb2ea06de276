"""Dilated ResNet v1 (bottleneck) backbones, as the GALD authors build them.

ResNet v1 bottlenecks with the stride on the 3x3 convolution, no convolution
biases and BatchNorm eps 1e-5 (`keras_gald.layers.norm.batch_norm`). Every
convolution is a `keras_gald.layers.conv.Conv2D` (`keras_gald.ops.conv2d`:
native dilated kernels and faster gradients on TF, lax on JAX).

Geometry follows PyTorch exactly, so feature maps have the authors' sizes
(769 -> 97, 832 -> 105, 1024x2048 -> 129x257 at output stride 8):

- stride-2 convolutions pad symmetrically (`ZeroPadding2D` + `"valid"`,
  never TF `"same"`, which pads asymmetrically on even sizes);
- stride-1 (dilated) 3x3 convolutions use `"same"`, which is symmetric for
  odd effective kernels;
- the stem max-pool is `TorchMaxPool2D`, PyTorch's `MaxPool2d(3, 2, 1)` with
  `ceil_mode=True` (deep stem) or `False` (classic stem).

Output strides (stage strides / dilations; `mg` = `multi_grid[i % len]` for
block `i` of layer4):

| output_stride | layer3            | layer4                      |
|---------------|-------------------|-----------------------------|
| 8             | stride 1, dil 2   | stride 1, dil 4 * mg        |
| 16            | stride 2, dil 1   | stride 1, dil 2 * mg        |
| 32            | stride 2, dil 1   | stride 2, dil 1 * mg        |

(At output stride 32 with the default `multi_grid=(1, 1, 1)` nothing is
dilated: a plain ResNet.) layer1 has stride 1 and layer2 stride 2 always.

Layer names (a converter maps the authors' PyTorch keys onto them; every name
is preceded by `name_prefix`):

- deep stem: `stem_pad1`, `stem_conv1` (3x3 s2, 3->w), `stem_bn1`,
  `stem_relu1`, `stem_conv2` (3x3, w->w), `stem_bn2`, `stem_relu2`,
  `stem_conv3` (3x3, w->2w), `stem_bn3`, `stem_relu3`, `stem_pool`;
- classic stem: `stem_pad1`, `stem_conv1` (7x7 s2), `stem_bn1`, `stem_relu1`,
  `stem_pool`;
- blocks (`L` in 1..4, `b` from 0): `layer{L}_block{b}_conv1`, `..._bn1`,
  `..._relu1`, [`..._pad2` when strided], `..._conv2`, `..._bn2`,
  `..._relu2`, `..._conv3`, `..._bn3`, [`..._downsample_conv`,
  `..._downsample_bn` on the first block when the shape changes],
  `..._add`, `..._out` (the block's final ReLU).

Registered architectures (`available_backbones()`):

| name           | blocks        | stem width w | planes            | outputs (ch) |
|----------------|---------------|--------------|-------------------|--------------|
| `resnet50`     | 3, 4, 6, 3    | 64           | 64, 128, 256, 512 | 1024, 2048   |
| `resnet101`    | 3, 4, 23, 3   | 64           | 64, 128, 256, 512 | 1024, 2048   |
| `resnet_tiny`  | 1, 1, 1, 1    | 4            | 4, 8, 16, 32      | 64, 128      |
| `resnet_small` | 2, 2, 2, 3    | 4            | 4, 8, 16, 32      | 64, 128      |
| `resnet_small_x2` | 2, 2, 2, 3 | 8            | 8, 16, 32, 64     | 128, 256     |
| `resnet_small_x4` | 2, 2, 2, 3 | 16           | 16, 32, 64, 128   | 256, 512     |

`resnet_tiny` / `resnet_small` are for tests: the same topology (downsample
branches included, `resnet_small` exercises three multi-grid blocks) at a
width that runs a 65x97 forward pass in milliseconds. The `_x2` / `_x4` widths
are the candidates of the CPU-from-scratch CamVid recipe sweep
(`benchmarks/camvid_recipe_sweep.py`).
"""

import dataclasses
import os

import keras

from keras_gald.layers.conv import Conv2D
from keras_gald.layers.norm import batch_norm
from keras_gald.ops.pooling import max_pool2d, pool_output_length


@dataclasses.dataclass(frozen=True)
class ResNetSpec:
    """Architecture of one registered backbone.

    Attributes:
        blocks: bottleneck blocks in layer1..layer4.
        planes: bottleneck widths of layer1..layer4 (outputs are 4x wider).
        stem_width: width `w` of the stem (deep stem ends at `2w` channels,
            classic stem at `w`).
        expansion: bottleneck expansion (4 for ResNet v1).
    """

    blocks: tuple
    planes: tuple = (64, 128, 256, 512)
    stem_width: int = 64
    expansion: int = 4

    def stage_channels(self, stage):
        """Output channels of layer `stage` (1..4)."""
        return self.planes[stage - 1] * self.expansion


BACKBONES = {
    "resnet50": ResNetSpec(blocks=(3, 4, 6, 3)),
    "resnet101": ResNetSpec(blocks=(3, 4, 23, 3)),
    "resnet_tiny": ResNetSpec(blocks=(1, 1, 1, 1), planes=(4, 8, 16, 32), stem_width=4),
    "resnet_small": ResNetSpec(blocks=(2, 2, 2, 3), planes=(4, 8, 16, 32), stem_width=4),
    "resnet_small_x2": ResNetSpec(blocks=(2, 2, 2, 3), planes=(8, 16, 32, 64), stem_width=8),
    "resnet_small_x4": ResNetSpec(blocks=(2, 2, 2, 3), planes=(16, 32, 64, 128), stem_width=16),
}

OUTPUT_STRIDES = (8, 16, 32)
STEMS = ("deep", "classic")


def available_backbones():
    """Sorted names accepted by `build_resnet`."""
    return sorted(BACKBONES)


def get_spec(name):
    """The `ResNetSpec` of `name`; `ValueError` listing valid names otherwise."""
    if name not in BACKBONES:
        raise ValueError(
            f"unknown backbone {name!r}; valid choices: {', '.join(available_backbones())}"
        )
    return BACKBONES[name]


def backbone_channels(name, stages=(3, 4)):
    """Channel counts of the backbone's outputs, e.g. `(1024, 2048)` for `resnet101`.

    Args:
        name: a registered backbone name.
        stages: the stages returned (as given to `build_resnet(output_stages=)`).

    Returns:
        Tuple of ints, one per stage.
    """
    spec = get_spec(name)
    return tuple(spec.stage_channels(s) for s in _check_stages(stages))


def stage_strides_and_dilations(output_stride):
    """`[(stride, dilation)]` of layer1..layer4 before multi-grid, for an output stride."""
    if output_stride not in OUTPUT_STRIDES:
        raise ValueError(
            f"output_stride must be one of {OUTPUT_STRIDES}, got {output_stride!r}"
        )
    return {
        8: [(1, 1), (2, 1), (1, 2), (1, 4)],
        16: [(1, 1), (2, 1), (2, 1), (1, 2)],
        32: [(1, 1), (2, 1), (2, 1), (2, 1)],
    }[output_stride]


def _check_stages(stages):
    stages = tuple(int(s) for s in stages)
    if not stages or any(s not in (1, 2, 3, 4) for s in stages):
        raise ValueError(f"output_stages must be a non-empty subset of 1..4, got {stages!r}")
    return stages


def _pair(value, what):
    if isinstance(value, int):
        value = (value, value)
    value = tuple(int(v) for v in value)
    if len(value) != 2:
        raise ValueError(f"{what} must be an int or a pair of ints, got {value!r}")
    return value


@keras.saving.register_keras_serializable(package="keras_gald")
class TorchMaxPool2D(keras.layers.Layer):
    """PyTorch's `nn.MaxPool2d(kernel, stride, padding, ceil_mode)` in NHWC.

    Pads `padding` on the top/left and whatever the PyTorch output size needs on
    the bottom/right with `-inf` (so padding never wins, whatever the input's
    sign), then max-pools "valid". In ceil mode the output length is
    `ceil((L + 2p - k) / s) + 1`, minus one when that last window would start
    at or beyond `L + p` (PyTorch's rule); in floor mode `floor(...) + 1`.
    Works with dynamic H, W on TensorFlow (`keras_gald.ops.max_pool2d`).

    Args:
        pool_size: int or `(kh, kw)`.
        strides: int or `(sh, sw)`.
        padding: int or `(ph, pw)`; at most half the kernel (as in PyTorch).
        ceil_mode: PyTorch's `ceil_mode`.

    Input shape: `(N, H, W, C)`. Output shape: `(N, H', W', C)`.

    Example:
    >>> pool = TorchMaxPool2D(3, 2, 1, ceil_mode=True)
    >>> tuple(pool(keras.ops.zeros((1, 385, 384, 8))).shape)
    (1, 193, 193, 8)
    """

    def __init__(self, pool_size=3, strides=2, padding=1, ceil_mode=True, **kwargs):
        super().__init__(**kwargs)
        self.pool_size = _pair(pool_size, "pool_size")
        self.strides = _pair(strides, "strides")
        self.padding = _pair(padding, "padding")
        self.ceil_mode = bool(ceil_mode)
        for k, s, p in zip(self.pool_size, self.strides, self.padding):
            if k < 1 or s < 1 or p < 0:
                raise ValueError(
                    f"invalid pool_size/strides/padding {self.pool_size}/{self.strides}/"
                    f"{self.padding}"
                )
            if p > k // 2:
                raise ValueError(
                    f"padding {self.padding} must be at most half of pool_size {self.pool_size}"
                )

    def output_size(self, height, width):
        """Output `(H', W')` for input sizes (Python ints or scalar tensors)."""
        return tuple(
            pool_output_length(n, k, s, p, self.ceil_mode)
            for n, k, s, p in zip((height, width), self.pool_size, self.strides, self.padding)
        )

    def call(self, inputs):
        return max_pool2d(inputs, self.pool_size, self.strides, self.padding, self.ceil_mode)

    def compute_output_shape(self, input_shape):
        out = []
        for n, k, s, p in zip(input_shape[1:3], self.pool_size, self.strides, self.padding):
            if n is None:
                out.append(None)
                continue
            length = pool_output_length(int(n), k, s, p, self.ceil_mode)
            if length < 1:
                raise ValueError(
                    f"input {tuple(input_shape)} is too small for max-pooling with "
                    f"pool_size={self.pool_size}, padding={self.padding}"
                )
            out.append(length)
        return (input_shape[0], out[0], out[1], input_shape[3])

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "pool_size": self.pool_size,
                "strides": self.strides,
                "padding": self.padding,
                "ceil_mode": self.ceil_mode,
            }
        )
        return config


def _kernel_initializer():
    # PyTorch ResNets: kaiming_normal_(mode="fan_out", nonlinearity="relu").
    return keras.initializers.VarianceScaling(2.0, "fan_out", "untruncated_normal")


def _conv(x, filters, kernel, name, stride=1, dilation=1):
    """Bias-free conv with PyTorch's symmetric padding `dilation * (kernel - 1) / 2`."""
    pad = dilation * (kernel - 1) // 2
    if stride > 1 and dilation > 1:
        raise ValueError("strided dilated convolutions are not supported")
    if stride > 1 and pad > 0:
        cut = name.rfind("conv")
        pad_name = name[:cut] + "pad" + name[cut + len("conv"):]
        x = keras.layers.ZeroPadding2D(pad, name=pad_name)(x)
        padding = "valid"
    else:
        padding = "same" if pad > 0 else "valid"
    return Conv2D(
        filters,
        kernel,
        strides=stride,
        padding=padding,
        dilation_rate=dilation,
        use_bias=False,
        kernel_initializer=_kernel_initializer(),
        name=name,
    )(x)


def _bottleneck(x, planes, expansion, stride, dilation, downsample, name, sync_bn):
    shortcut = x
    out = _conv(x, planes, 1, f"{name}_conv1")
    out = batch_norm(name=f"{name}_bn1", synchronized=sync_bn)(out)
    out = keras.layers.ReLU(name=f"{name}_relu1")(out)
    out = _conv(out, planes, 3, f"{name}_conv2", stride=stride, dilation=dilation)
    out = batch_norm(name=f"{name}_bn2", synchronized=sync_bn)(out)
    out = keras.layers.ReLU(name=f"{name}_relu2")(out)
    out = _conv(out, planes * expansion, 1, f"{name}_conv3")
    out = batch_norm(name=f"{name}_bn3", synchronized=sync_bn)(out)
    if downsample:
        shortcut = _conv(x, planes * expansion, 1, f"{name}_downsample_conv", stride=stride)
        shortcut = batch_norm(name=f"{name}_downsample_bn", synchronized=sync_bn)(shortcut)
    out = keras.layers.Add(name=f"{name}_add")([out, shortcut])
    return keras.layers.ReLU(name=f"{name}_out")(out)


def _stem(x, kind, width, prefix, sync_bn):
    p = prefix
    if kind == "deep":
        x = _conv(x, width, 3, f"{p}stem_conv1", stride=2)
        x = batch_norm(name=f"{p}stem_bn1", synchronized=sync_bn)(x)
        x = keras.layers.ReLU(name=f"{p}stem_relu1")(x)
        x = _conv(x, width, 3, f"{p}stem_conv2")
        x = batch_norm(name=f"{p}stem_bn2", synchronized=sync_bn)(x)
        x = keras.layers.ReLU(name=f"{p}stem_relu2")(x)
        x = _conv(x, 2 * width, 3, f"{p}stem_conv3")
        x = batch_norm(name=f"{p}stem_bn3", synchronized=sync_bn)(x)
        x = keras.layers.ReLU(name=f"{p}stem_relu3")(x)
        ceil_mode = True
    else:
        x = _conv(x, width, 7, f"{p}stem_conv1", stride=2)
        x = batch_norm(name=f"{p}stem_bn1", synchronized=sync_bn)(x)
        x = keras.layers.ReLU(name=f"{p}stem_relu1")(x)
        ceil_mode = False
    return TorchMaxPool2D(3, 2, 1, ceil_mode=ceil_mode, name=f"{p}stem_pool")(x)


def build_resnet(
    name="resnet101",
    output_stride=8,
    multi_grid=(1, 1, 1),
    stem="deep",
    input_shape=(None, None, 3),
    weights=None,
    sync_bn=False,
    name_prefix="",
    output_stages=(3, 4),
    weights_strict=True,
):
    """Builds a dilated ResNet v1 backbone as a functional `keras.Model`.

    Args:
        name: registered architecture (`available_backbones()`): `"resnet50"`,
            `"resnet101"`, or the test-sized `"resnet_tiny"`, `"resnet_small"`.
        output_stride: 8, 16 or 32 (see the module docstring's table).
        multi_grid: per-block dilation multipliers of layer4 (block `i` uses
            `multi_grid[i % len(multi_grid)]`); the authors use `(1, 2, 4)`.
        stem: `"deep"` (three 3x3 convs, ceil-mode max-pool; the authors') or
            `"classic"` (7x7 conv, floor-mode max-pool; torchvision's).
        input_shape: `(H, W, 3)`; `None` for dynamic sizes.
        weights: `None` or the path of a local weights file, format detected
            (`keras_gald.backbones.pretrained`): the authors' deep-stem
            `resnet{50,101}-deep.pth`, torchvision / timm ResNet state dicts
            (`.pth`, `.npz`, `.safetensors`; build with `stem="classic"`),
            `keras.applications` ResNet `.h5`, or a Keras `.weights.h5` of the same
            architecture. Nothing is ever downloaded. The load report is
            `model.weights_report` (`BackboneWeightsReport`).
        weights_strict: every backbone weight must come from the file (default);
            `False` loads what matches (see the report).
        sync_bn: cross-replica BatchNorm (`synchronized=True`).
        name_prefix: string prepended to every layer name (and the model name),
            e.g. `"backbone_"` to embed the layers in a larger flat model.
        output_stages: which stages' outputs to return, in order; the default
            `(3, 4)` gives `[layer3, layer4]` (aux head, main head).

    Returns:
        A `keras.Model` named `name_prefix + name` with outputs
        `[layer3 (N, H/os', W/os', C3), layer4 (N, H/os, W/os, C4)]` (C3, C4 from
        `backbone_channels(name)`: 1024, 2048 for ResNet-50/101), where `os'` is
        `os` except at output stride 32 (layer3 is then at 1/16). Sizes follow
        PyTorch: 769x769 -> 97x97 at output stride 8.

    Example:
    >>> model = build_resnet("resnet_tiny", output_stride=8)
    >>> [tuple(y.shape) for y in model(keras.ops.zeros((1, 65, 97, 3)))]
    [(1, 9, 13, 64), (1, 9, 13, 128)]
    """
    spec = get_spec(name)
    layout = stage_strides_and_dilations(output_stride)
    if stem not in STEMS:
        raise ValueError(f"stem must be one of {STEMS}, got {stem!r}")
    multi_grid = tuple(multi_grid)
    if not multi_grid or any(int(g) != g or g < 1 for g in multi_grid):
        raise ValueError(f"multi_grid must be a non-empty tuple of positive ints, got {multi_grid!r}")
    multi_grid = tuple(int(g) for g in multi_grid)
    output_stages = _check_stages(output_stages)
    name_prefix = name_prefix or ""
    weights_path = _check_weights(weights)

    inputs = keras.Input(shape=tuple(input_shape), name=f"{name_prefix}input")
    x = _stem(inputs, stem, spec.stem_width, name_prefix, sync_bn)
    in_channels = spec.stem_width * (2 if stem == "deep" else 1)
    stage_outputs = {}
    for stage, ((stride, dilation), n_blocks, planes) in enumerate(
        zip(layout, spec.blocks, spec.planes), start=1
    ):
        for b in range(n_blocks):
            block_stride = stride if b == 0 else 1
            block_dilation = dilation * (multi_grid[b % len(multi_grid)] if stage == 4 else 1)
            downsample = b == 0 and (
                stride != 1 or in_channels != planes * spec.expansion
            )
            x = _bottleneck(
                x,
                planes,
                spec.expansion,
                block_stride,
                block_dilation,
                downsample,
                f"{name_prefix}layer{stage}_block{b}",
                sync_bn,
            )
            in_channels = planes * spec.expansion
        stage_outputs[stage] = x

    model = keras.Model(
        inputs, [stage_outputs[s] for s in output_stages], name=f"{name_prefix}{name}"
    )
    model.weights_report = None
    if weights_path is not None:
        from keras_gald.backbones.pretrained import load_backbone_weights

        model.weights_report = load_backbone_weights(model, weights_path, strict=weights_strict,
                                                     layer_prefix=name_prefix)
    return model


def _check_weights(weights):
    if weights is None:
        return None
    path = os.fspath(weights)
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"backbone weights file not found: {path!r} (weights must be None or a local "
            "file; nothing is downloaded)"
        )
    return path
