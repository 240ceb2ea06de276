"""GALD building blocks: global aggregation (PSP, ASPP, NonLocal, CGNL) and
local distribution (LDv1, LDv2) layers, all NHWC and serializable."""

from keras_gald.layers.conv import DilatedConv2D
from keras_gald.layers.resize import ResizeLike, resize_bilinear
