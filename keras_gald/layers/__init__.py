"""GALD building blocks: global aggregation (PSP, ASPP, NonLocal, CGNL) and
local distribution (LDv1, LDv2) layers, all NHWC and serializable, on every
Keras backend (the kernels they call are in `keras_gald.ops`)."""

from keras_gald.layers.aspp import ASPP
from keras_gald.layers.cgnl import CGNL
from keras_gald.layers.conv import Conv2D, DilatedConv2D
from keras_gald.layers.conv_bn_relu import ConvBNReLU
from keras_gald.layers.gald_block import GALDBlockV1
from keras_gald.layers.ldv1 import LDv1
from keras_gald.layers.ldv2 import LDv2
from keras_gald.layers.nonlocal_block import NonLocal
from keras_gald.layers.norm import FusedBatchNormalization, SyncBatchNormalization, batch_norm
from keras_gald.layers.psp import PSP
from keras_gald.layers.resize import ResizeLike

# Kernels, re-exported where earlier versions had them (they live in keras_gald.ops).
from keras_gald.ops.adaptive_pool import adaptive_average_pool2d
from keras_gald.ops.conv import dilated_conv2d, pointwise_conv2d
from keras_gald.ops.portable import portable_ops
from keras_gald.ops.resize import resize_bilinear

__all__ = [
    "ASPP", "CGNL", "Conv2D", "ConvBNReLU", "DilatedConv2D", "FusedBatchNormalization",
    "GALDBlockV1", "LDv1", "LDv2", "NonLocal", "PSP", "ResizeLike", "SyncBatchNormalization",
    "adaptive_average_pool2d", "batch_norm", "dilated_conv2d", "pointwise_conv2d",
    "portable_ops", "resize_bilinear",
]
