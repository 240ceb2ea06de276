"""The GALD authors' networks, exactly: `GALD_res50` / `GALD_res101` (GALD v1).

A Keras port of `GALDNet` from the authors' code (github lxtGH/GALD-DGCNet,
commit be7ebfe, `libs/models/GALDNet.py`), layer for layer, so their PyTorch
checkpoints load with `keras_gald.convert.official.load_official_state_dict`
and compute the same numbers.

Network (NHWC; sizes for a 769x769 input):

- backbone: `keras_gald.backbones.build_resnet("resnet{50,101}",
  output_stride=8, multi_grid=(1, 2, 4), stem="deep",
  name_prefix="backbone_")`, a nested model named `backbone_resnet{50,101}`
  returning `[layer3 (1024 ch), layer4 (2048 ch)]` at 97x97. Deep stem with a
  ceil-mode max-pool; layer3 dilation 2, layer4 dilations 4, 8, 16.
- head (`gald_head`, the authors' `GALDHead(2048, 512, C)`), layers named
  `head_*`:

  | Keras layer(s)                                   | authors' module        |
  |--------------------------------------------------|------------------------|
  | `head_conva_conv`, `head_conva_bn`, `head_conva_relu` | `head.conva.{0,1,2}` (3x3 2048->512, no bias) |
  | `head_a2block` (`GALDBlockV1(256)`, authors' options) | `head.a2block`     |
  | `head_convb_conv`, `head_convb_bn`, `head_convb_relu` | `head.convb.{0,1,2}` (3x3 512->512, no bias) |
  | `head_concat` (`[backbone 2048, convb 512]`)      | `torch.cat([x, out])` |
  | `head_bottleneck_conv`, `_bn`, `_relu`            | `head.bottleneck.{0,1,2}` (3x3 2560->512, no bias) |
  | `head_classifier` (1x1 512->C, bias)              | `head.bottleneck.3`   |

  No dropout in the head (the authors have none).
- auxiliary head on layer3, training only (`dsn_*`): `dsn_conv` (3x3
  1024->512 with bias) -> `dsn_bn` -> `dsn_relu` -> `dsn_dropout`
  (`SpatialDropout2D(0.1)`: the authors' `nn.Dropout2d(0.1)` drops whole
  channels) -> `dsn_classifier` (1x1 512->C, bias) = `dsn.{0,1,2,3,4}`.

Outputs: a `keras_gald.models.Segmenter`. `model(images)` runs the authors'
eval-mode forward and returns float32 logits `(N, h, w, C)` at 1/8
resolution (`official_feature_size`: 769 -> 97, 832 -> 105, 1024x2048 ->
129x257, 160x224 -> 21x29). With `upsample_logits=True` the same network
ends with a bilinear resize of the logits to the input size using
`align_corners=True`, which is what the authors' evaluation code
(`eval.py`: `nn.Upsample(..., mode="bilinear", align_corners=True)`) does
with the 1/8 logits. `model(images, training=True)` returns
`{"logits", "aux_logits"}` (`aux_logits` at 1/8, from layer3).

The authors' LDv1 uses unpadded stride-2 convolutions, so the 1/8 feature
map must be at least 15x15: images must be at least `min_input_size()` =
111 pixels on each side (checked by an `InputCheck` layer with a clear
message; PyTorch fails on smaller inputs too).

Training note: the authors' loss (`CriterionOhemDSN`) upsamples both the 1/8
logits and the auxiliary logits to the label size with `align_corners=True`;
with `upsample_logits=False` compile with e.g.
`loss=OHEMCrossEntropy(align_corners=True)` and
`aux_loss=SegmentationCrossEntropy(align_corners=True)` (`Segmenter`'s
`aux_loss="auto"` uses `align_corners=False`).
"""

import keras

from keras_gald.backbones.resnet import TorchMaxPool2D, build_resnet
from keras_gald.layers.conv import Conv2D
from keras_gald.layers.conv_bn_relu import ConvBNReLU
from keras_gald.layers.gald_block import GALDBlockV1
from keras_gald.layers.ldv1 import AUTHORS_LDV1_OPTIONS, min_valid_size
from keras_gald.layers.norm import batch_norm
from keras_gald.layers.resize import ResizeLike
from keras_gald.models.input_check import InputCheck
from keras_gald.models.segmenter import Segmenter, check_sync_bn_backend

DEPTHS = (50, 101)
OUTPUT_STRIDE = 8
MULTI_GRID = (1, 2, 4)
BACKBONE_PREFIX = "backbone_"
HEAD_PREFIX = "head"
DSN_PREFIX = "dsn"
HEAD_CHANNELS = 512
DSN_CHANNELS = 512
DSN_DROPOUT = 0.1


def _torch_default_kernel_init():
    # PyTorch's default Conv2d init (kaiming_uniform_, a=sqrt(5)) is
    # U(-b, b) with b = 1/sqrt(fan_in); the authors leave their head at it.
    return keras.initializers.VarianceScaling(1.0 / 3.0, "fan_in", "uniform")


def _conv(filters, kernel_size, name, use_bias):
    # Stride 1 and odd kernels: "same" pads symmetrically, like PyTorch's
    # padding=(k-1)/2. Conv2D at rate 1: plain conv forward, hand-written
    # gradient, which beats TF's CPU backprop kernels in training
    # (`python benchmarks/speed.py --sections train_layers,dilated_conv`).
    return Conv2D(
        filters,
        kernel_size,
        padding="same",
        use_bias=use_bias,
        kernel_initializer=_torch_default_kernel_init(),
        name=name,
    )


def _conv_bn_relu(x, filters, name, sync_bn):
    """The authors' `Sequential(Conv2d(3x3, padding=1, bias=False), BN, ReLU)`."""
    return ConvBNReLU(filters, 3, name=name, sync_bn=sync_bn,
                      kernel_initializer=_torch_default_kernel_init()).functional(x)


def official_feature_size(height, width=None):
    """Size of the authors' 1/8 feature maps (and logits) for an input size.

    Follows their PyTorch arithmetic: stem conv 3x3 stride 2 padding 1,
    max-pool 3x3 stride 2 padding 1 with `ceil_mode=True`, layer2's stride-2
    3x3 conv (padding 1); layer3 and layer4 keep the size.

    Args:
        height: input height (int).
        width: input width (int); defaults to `height`.

    Returns:
        `(h, w)` ints, e.g. `official_feature_size(769) == (97, 97)`,
        `official_feature_size(1024, 2048) == (129, 257)`.
    """
    width = height if width is None else width
    pool = TorchMaxPool2D(3, 2, 1, ceil_mode=True)
    conv_s2 = lambda n: (int(n) - 1) // 2 + 1  # 3x3, stride 2, padding 1
    h, w = pool.output_size(conv_s2(height), conv_s2(width))
    return conv_s2(h), conv_s2(w)


def min_input_size():
    """Smallest image side the authors' network accepts (111).

    Their LDv1 runs three unpadded 3x3 stride-2 convolutions on the 1/8
    feature map, which must therefore be at least 15 pixels on each side.
    """
    need = min_valid_size(AUTHORS_LDV1_OPTIONS["downsample_rate"])
    size = 1
    while official_feature_size(size)[0] < need:
        size += 1
    return size


def gald_head(x, num_classes, interplanes=HEAD_CHANNELS, sync_bn=False, name=HEAD_PREFIX):
    """Applies the authors' `GALDHead(C_in, interplanes, num_classes)` to `x`.

    `conva` (3x3 C_in->interplanes, BN, ReLU) -> `a2block`
    (`GALDBlockV1(interplanes // 2)` with the authors' options) -> `convb`
    (3x3, BN, ReLU) -> concat `[x, convb]` -> `bottleneck` (3x3
    C_in+interplanes -> interplanes, BN, ReLU) -> 1x1 classifier with bias.
    Works for any input channel count `C_in` (2048 in the whole network, 64
    in the authors' head fixture). Layer names: `{name}_conva_conv`,
    `{name}_conva_bn`, `{name}_conva_relu`, `{name}_a2block`,
    `{name}_convb_{conv,bn,relu}`, `{name}_concat`,
    `{name}_bottleneck_{conv,bn,relu}`, `{name}_classifier`.

    Args:
        x: symbolic `(N, h, w, C_in)` tensor; `h, w >= 15` at run time (the
            authors' LDv1).
        num_classes: classifier outputs.
        interplanes: head width (the authors: 512; their classifier is
            hard-coded to 512 inputs).
        sync_bn: synchronized BatchNorm.
        name: layer-name prefix (`"head"`; the converter expects it).

    Returns:
        Symbolic logits `(N, h, w, num_classes)` in the compute dtype.

    Example:
    >>> x = keras.Input((None, None, 64))
    >>> head = keras.Model(x, gald_head(x, 19))
    """
    out = _conv_bn_relu(x, interplanes, f"{name}_conva", sync_bn)
    out = GALDBlockV1(interplanes // 2, sync_bn=sync_bn, name=f"{name}_a2block")(out)
    out = _conv_bn_relu(out, interplanes, f"{name}_convb", sync_bn)
    out = keras.layers.Concatenate(name=f"{name}_concat")([x, out])
    out = _conv_bn_relu(out, interplanes, f"{name}_bottleneck", sync_bn)
    return _conv(num_classes, 1, f"{name}_classifier", use_bias=True)(out)


def build_gald_head(in_channels, num_classes=19, interplanes=HEAD_CHANNELS, sync_bn=False, name="gald_head"):
    """The authors' `GALDHead` alone, as a functional model `(N, h, w, C_in) -> logits`.

    Args:
        in_channels: input channels (`inplanes` in the authors' code).
        num_classes, interplanes, sync_bn: see `gald_head`.
        name: model name (layers are named `head_*` regardless).

    Returns:
        A `keras.Model` with float32 logits `(N, h, w, num_classes)`.

    Example:
    >>> head = build_gald_head(64, 19)  # the authors' head fixture
    >>> head(keras.ops.zeros((1, 33, 33, 64))).shape
    TensorShape([1, 33, 33, 19])
    """
    inputs = keras.Input((None, None, int(in_channels)), name="features")
    logits = gald_head(inputs, num_classes, interplanes=interplanes, sync_bn=sync_bn)
    logits = keras.layers.Activation("linear", dtype="float32", name="logits")(logits)
    return keras.Model(inputs, logits, name=name)


def dsn_head(x, num_classes, sync_bn=False, name=DSN_PREFIX):
    """The authors' auxiliary `dsn` head on layer3 (training only in the network).

    `{name}_conv` (3x3 C->512, bias) -> `{name}_bn` -> `{name}_relu` ->
    `{name}_dropout` (`SpatialDropout2D(0.1)` = `nn.Dropout2d(0.1)`) ->
    `{name}_classifier` (1x1 512->num_classes, bias).
    """
    a = _conv(DSN_CHANNELS, 3, f"{name}_conv", use_bias=True)(x)
    a = batch_norm(name=f"{name}_bn", synchronized=sync_bn)(a)
    a = keras.layers.ReLU(name=f"{name}_relu")(a)
    a = keras.layers.SpatialDropout2D(DSN_DROPOUT, name=f"{name}_dropout")(a)
    return _conv(num_classes, 1, f"{name}_classifier", use_bias=True)(a)


def official_gald_v1(
    depth=101,
    num_classes=19,
    input_shape=(None, None, 3),
    upsample_logits=False,
    aux_head=True,
    sync_bn=False,
    name=None,
):
    """Builds the authors' `GALD_res50` / `GALD_res101` as a `Segmenter`.

    See the module docstring for the layer-by-layer correspondence with the
    authors' PyTorch modules and key names.

    Args:
        depth: 50 or 101.
        num_classes: classes (19 for Cityscapes).
        input_shape: `(H, W, 3)`; `None` for dynamic sizes. H and W must be at
            least `min_input_size()` (111).
        upsample_logits: `False` (default): logits at 1/8 resolution, exactly
            the authors' eval-mode output. `True`: the same network with the
            logits bilinearly resized to the input size with
            `align_corners=True` (as the authors' evaluation code does), the
            way the rest of keras_gald predicts.
        aux_head: build the `dsn` auxiliary head (training only; its weights
            are part of the authors' checkpoints).
        sync_bn: synchronized BatchNorm everywhere (TensorFlow only: a `ValueError`
            on other backends).
        name: model name (default `official_gald_v1_res{depth}`).

    Returns:
        A `keras_gald.models.Segmenter`: `model(images)` -> float32 logits
        `(N, h, w, num_classes)` with `(h, w) = official_feature_size(H, W)`
        (or `(H, W)` with `upsample_logits=True`); `model(images,
        training=True)` -> `{"logits", "aux_logits"}`.

    Example:
    >>> model = official_gald_v1(50, num_classes=19)
    >>> report = load_official_state_dict(model, "GALD_res50.npz")
    >>> model(keras.ops.zeros((1, 769, 769, 3))).shape
    TensorShape([1, 97, 97, 19])
    """
    if depth not in DEPTHS:
        raise ValueError(f"depth must be one of {DEPTHS}, got {depth!r}")
    if int(num_classes) < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes!r}")
    input_shape = tuple(input_shape)
    if len(input_shape) != 3 or input_shape[-1] != 3:
        raise ValueError(
            f"input_shape must be (H, W, 3) (the authors' stem takes RGB/BGR images); "
            f"got {input_shape!r}"
        )
    check_sync_bn_backend(sync_bn)

    images = keras.Input(shape=input_shape, name="images")
    checked = InputCheck(channels=3, min_size=min_input_size(), name="input_check")(images)
    backbone = build_resnet(
        f"resnet{depth}",
        output_stride=OUTPUT_STRIDE,
        multi_grid=MULTI_GRID,
        stem="deep",
        input_shape=input_shape,
        sync_bn=sync_bn,
        name_prefix=BACKBONE_PREFIX,
        output_stages=(3, 4),
    )
    stage3, x = backbone(checked)

    y = gald_head(x, int(num_classes), sync_bn=sync_bn)
    if upsample_logits:
        y = ResizeLike(align_corners=True, name="upsample_logits")([y, images])
    outputs = {"logits": keras.layers.Activation("linear", dtype="float32", name="logits")(y)}
    if aux_head:
        a = dsn_head(stage3, int(num_classes), sync_bn=sync_bn)
        outputs["aux_logits"] = keras.layers.Activation(
            "linear", dtype="float32", name="aux_logits"
        )(a)
    return Segmenter(images, outputs, name=name or f"official_gald_v1_res{depth}")
