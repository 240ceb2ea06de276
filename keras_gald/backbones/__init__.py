"""Dilated ResNet v1 backbones (deep or classic stem, output stride 8/16/32)."""

from keras_gald.backbones.resnet import (
    BACKBONES,
    ResNetSpec,
    TorchMaxPool2D,
    available_backbones,
    backbone_channels,
    build_resnet,
    get_spec,
)
