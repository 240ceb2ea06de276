"""The GALD model factory: backbone -> global aggregation -> local distribution
-> segmentation head, as a functional `Segmenter`.

Layout of the head (the paper's Eq. (3) and Fig. 5(b)): the GA/LD features are
concatenated with the backbone's stage-4 feature X, then a 3x3 conv (512) + BN +
ReLU + Dropout(0.1) and a 1x1 classifier. The FCN baseline applies that head
to X alone. The auxiliary head (training only, weight 0.4) sits on stage 3.
"""

import keras

from keras_gald.backbones import available_backbones, build_resnet
from keras_gald.layers.aspp import ASPP
from keras_gald.layers.cgnl import CGNL
from keras_gald.layers.conv_bn_relu import ConvBNReLU
from keras_gald.layers.ldv1 import LDv1
from keras_gald.layers.ldv2 import LDv2
from keras_gald.layers.nonlocal_block import NonLocal
from keras_gald.layers.psp import PSP
from keras_gald.layers.resize import ResizeLike
from keras_gald.models.input_check import InputCheck
from keras_gald.models.segmenter import Segmenter, check_sync_bn_backend

GA_CHOICES = ("aspp", "psp", "nonlocal", "cgnl", None)
LD_CHOICES = ("v1", "v2", None)
ARRANGEMENTS = ("gald", "ldga", "parallel")
# ASPP rates scale with the output stride (DeepLab v3: 6/12/18 at OS16).
ASPP_RATES = {8: (12, 24, 36), 16: (6, 12, 18), 32: (3, 6, 9)}


def _check_choice(what, value, choices):
    if value not in choices:
        shown = ", ".join(repr(c) for c in choices)
        raise ValueError(f"unknown {what} {value!r}; valid choices: {shown}")


def _conv_bn_relu(x, filters, kernel_size, name, sync_bn):
    # The library's conv at rate 1: plain conv forward, hand-written gradient, which
    # beats TF's CPU backprop kernels in training (`python benchmarks/speed.py
    # --sections train_layers,dilated_conv`, see benchmarks/README.md).
    return ConvBNReLU(filters, kernel_size, name=name, sync_bn=sync_bn).functional(x)


def _global_aggregation(x, ga, output_stride, head_channels, sync_bn, aspp_filters,
                        aspp_dropout=0.1):
    """Returns X_g for the chosen GA module (None -> X itself)."""
    if ga is None:
        return x
    if ga == "aspp":
        return ASPP(
            filters=aspp_filters,
            dilation_rates=ASPP_RATES[output_stride],
            dropout=aspp_dropout,
            sync_bn=sync_bn,
            name="ga_aspp",
        )(x)
    if ga == "psp":
        return PSP(filters=head_channels, sync_bn=sync_bn, name="ga_psp")(x)
    # Non-local blocks on 2048 channels would be needlessly wide: like the
    # authors' GALDHead (`conva`), reduce to the head width first.
    x = _conv_bn_relu(x, head_channels, 3, "ga_reduce", sync_bn)
    if ga == "nonlocal":
        return NonLocal(sync_bn=sync_bn, name="ga_nonlocal")(x)
    return CGNL(planes=head_channels // 2, groups=8, name="ga_cgnl")(x)


def _local_distribution(ld, x_global, x_local, sync_bn, name, ldv2_kwargs):
    """Applies LD; returns (features, already_combined_with_x_local)."""
    if ld == "v1":
        return LDv1(sync_bn=sync_bn, name=name)(x_global), False
    combine = "concat" if x_local is not None else "none"
    x_local = x_global if x_local is None else x_local
    layer = LDv2(combine=combine, sync_bn=sync_bn, name=name, **ldv2_kwargs)
    return layer([x_global, x_local]), combine == "concat"


def GALD(
    backbone="resnet101",
    ga="aspp",
    ld="v2",
    arrangement="gald",
    num_classes=19,
    output_stride=8,
    aux_head=True,
    input_shape=(None, None, 3),
    multi_grid=(1, 2, 4),
    stem="deep",
    backbone_weights=None,
    head_channels=512,
    aspp_filters=256,
    dropout=0.1,
    sync_bn=False,
    ldv2_kwargs=None,
    aspp_dropout=0.1,
    name=None,
    backbone_weights_strict=True,
):
    """Builds a GALD segmentation network (or any of the paper's ablations).

    Args:
        backbone: backbone name, e.g. `"resnet50"`, `"resnet101"`, or a tiny
            depth for tests (`keras_gald.backbones.available_backbones()`).
        ga: global aggregation: `"aspp"`, `"psp"`, `"nonlocal"`, `"cgnl"` or
            `None`.
        ld: local distribution: `"v1"`, `"v2"` or `None`.
        arrangement: `"gald"` (GA then LD, the paper's choice), `"ldga"` (LD
            then GA) or `"parallel"` (GA and LD side by side, concatenated) —
            Table I(c). Only meaningful when both `ga` and `ld` are set.
        num_classes: number of classes.
        output_stride: 8, 16 or 32.
        aux_head: add the stage-3 auxiliary head used for training.
        input_shape: `(H, W, 3)`; `None` dims are dynamic.
        multi_grid: stage-4 dilation multipliers (the authors use (1, 2, 4)).
        stem: `"deep"` (3x 3x3 convs, the authors') or `"classic"` (7x7).
        backbone_weights: optional local ImageNet weights file for the backbone, format
            detected (`keras_gald.backbones.pretrained`): the authors'
            `resnet{50,101}-deep.pth`, torchvision / timm ResNet `.pth` / `.npz`
            (with `stem="classic"`), `keras.applications` ResNet `.h5`
            (`stem="classic"`), or a Keras `.weights.h5` of the same backbone. The
            load report is `model.backbone_weights_report`.
        backbone_weights_strict: raise unless every backbone weight is in the file
            (default); `False` loads what matches.
        head_channels: width of the head convs (and of PSP / non-local GA).
        aspp_filters: ASPP output width.
        dropout: dropout before the classifier.
        sync_bn: synchronized BatchNorm across replicas (TensorFlow only: a
            `ValueError` on other backends).
        aspp_dropout: spatial dropout inside ASPP after its bottleneck (the
            authors' 0.1; independent of `dropout`).
        ldv2_kwargs: extra `LDv2` arguments (`kernel_size`, `dilation`, `impl`, ...).
        name: model name (default derived from the configuration).

    Returns:
        A `Segmenter`: `model(images)` gives float32 logits
        `(N, H, W, num_classes)` at the input resolution.

    Example:
    >>> model = GALD("resnet_tiny", ga="aspp", ld="v2", num_classes=5)
    >>> model(keras.ops.zeros((1, 65, 97, 3))).shape
    TensorShape([1, 65, 97, 5])
    """
    if backbone not in available_backbones():
        raise ValueError(
            f"unknown backbone {backbone!r}; valid choices: {', '.join(available_backbones())}"
        )
    _check_choice("ga", ga, GA_CHOICES)
    _check_choice("ld", ld, LD_CHOICES)
    _check_choice("arrangement", arrangement, ARRANGEMENTS)
    if output_stride not in ASPP_RATES:
        raise ValueError(f"output_stride must be 8, 16 or 32; got {output_stride!r}")
    if int(num_classes) < 1:
        raise ValueError(f"num_classes must be >= 1; got {num_classes!r}")
    if len(input_shape) != 3 or input_shape[-1] is None:
        raise ValueError(f"input_shape must be (H, W, C) with a known C; got {input_shape!r}")
    check_sync_bn_backend(sync_bn)
    ldv2_kwargs = dict(ldv2_kwargs or {})

    images = keras.Input(shape=tuple(input_shape), name="images")
    checked = InputCheck(
        channels=input_shape[-1], min_size=InputCheck.min_size_for(output_stride), name="input_check"
    )(images)
    net = build_resnet(
        backbone,
        output_stride=output_stride,
        multi_grid=multi_grid,
        stem=stem,
        input_shape=tuple(input_shape),
        weights=backbone_weights,
        sync_bn=sync_bn,
        weights_strict=backbone_weights_strict,
    )
    stage3, x = net(checked)

    combined = False
    if ga is None and ld is None:
        features = x
        combined = True  # FCN baseline: the head sees X alone
    elif ld is None:
        features = _global_aggregation(x, ga, output_stride, head_channels, sync_bn, aspp_filters,
                                  aspp_dropout)
    elif ga is None:
        features, combined = _local_distribution(ld, x, x, sync_bn, f"ld_{ld}", ldv2_kwargs)
    elif arrangement == "gald":
        xg = _global_aggregation(x, ga, output_stride, head_channels, sync_bn, aspp_filters,
                                  aspp_dropout)
        features, combined = _local_distribution(ld, xg, x, sync_bn, f"ld_{ld}", ldv2_kwargs)
    elif arrangement == "ldga":
        xl, _ = _local_distribution(ld, x, None, sync_bn, f"ld_{ld}", ldv2_kwargs)
        features = _global_aggregation(xl, ga, output_stride, head_channels, sync_bn, aspp_filters,
                                  aspp_dropout)
    else:  # parallel
        xg = _global_aggregation(x, ga, output_stride, head_channels, sync_bn, aspp_filters,
                                  aspp_dropout)
        xl, _ = _local_distribution(ld, x, None, sync_bn, f"ld_{ld}", ldv2_kwargs)
        features = keras.layers.Concatenate(name="parallel_concat")([xg, xl])
    if not combined:
        features = keras.layers.Concatenate(name="head_concat")([features, x])

    y = _conv_bn_relu(features, head_channels, 3, "head", sync_bn)
    y = keras.layers.Dropout(dropout, name="head_dropout")(y)
    y = keras.layers.Conv2D(num_classes, 1, name="classifier")(y)
    y = ResizeLike(align_corners=False, name="upsample_logits")([y, images])
    logits = keras.layers.Activation("linear", dtype="float32", name="logits")(y)
    outputs = {"logits": logits}

    if aux_head:
        a = _conv_bn_relu(stage3, 256, 3, "aux", sync_bn)
        a = keras.layers.Dropout(dropout, name="aux_dropout")(a)
        a = keras.layers.Conv2D(num_classes, 1, name="aux_classifier")(a)
        outputs["aux_logits"] = keras.layers.Activation(
            "linear", dtype="float32", name="aux_logits"
        )(a)

    if name is None:
        parts = [backbone, ga or "fcn", f"ld{ld}" if ld else None]
        if ga and ld and arrangement != "gald":
            parts.append(arrangement)
        name = "gald_" + "_".join(p for p in parts if p)
    model = Segmenter(images, outputs, name=name)
    model.backbone_weights_report = net.weights_report
    return model
