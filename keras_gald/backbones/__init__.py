"""Dilated ResNet v1 backbones (deep or classic stem, output stride 8/16/32) and their
ImageNet weights from PyTorch / Keras files (`pretrained.load_backbone_weights`)."""

from keras_gald.backbones.resnet import (
    BACKBONES,
    ResNetSpec,
    TorchMaxPool2D,
    available_backbones,
    backbone_channels,
    build_resnet,
    get_spec,
)
from keras_gald.backbones.pretrained import BackboneWeightsReport, load_backbone_weights
