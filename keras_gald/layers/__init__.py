"""GALD building blocks: global aggregation (PSP, ASPP, NonLocal, CGNL) and
local distribution (LDv1, LDv2) layers, all NHWC and serializable."""

from keras_gald.layers.aspp import ASPP
from keras_gald.layers.cgnl import CGNL
from keras_gald.layers.conv import DilatedConv2D, dilated_conv2d, pointwise_conv2d
from keras_gald.layers.gald_block import GALDBlockV1
from keras_gald.layers.ldv1 import LDv1
from keras_gald.layers.ldv2 import LDv2
from keras_gald.layers.nonlocal_block import NonLocal
from keras_gald.layers.norm import FusedBatchNormalization, SyncBatchNormalization, batch_norm
from keras_gald.ops.portable import portable_ops
from keras_gald.layers.psp import PSP, adaptive_average_pool2d
from keras_gald.layers.resize import ResizeLike, resize_bilinear
