"""Every layer against the shared contract (`tests/layers/_helpers.py: run_layer_test`):
odd and dynamic sizes, config and `.keras` round trips, gradients under XLA and
mixed bfloat16, on TensorFlow and (`@pytest.mark.jax`) on JAX. The per-layer files test the maths (references, the authors'
fixtures); this file tests that each layer behaves as a Keras layer should."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest  # noqa: E402

from keras_gald.layers import (  # noqa: E402
    ASPP, CGNL, PSP, Conv2D, DilatedConv2D, GALDBlockV1, LDv1, LDv2, NonLocal
)
from tests.layers._helpers import run_layer_test  # noqa: E402

# (make_layer, input channels, output channels): small widths, every option that
# changes the layer's weights or graph at least once.
CASES = {
    "dilated_conv_rate2": (lambda: Conv2D(6, 3, dilation_rate=2, padding="same"), 5, 6),
    "dilated_conv_rate1": (lambda: DilatedConv2D(6, 3, padding="same", use_bias=False), 5, 6),
    "aspp": (lambda: ASPP(filters=8, branch_filters=4, dilation_rates=(1, 2, 3)), 6, 8),
    "psp": (lambda: PSP(filters=8, bins=(1, 2, 3)), 6, 8),
    "nonlocal": (lambda: NonLocal(inter_channels=4), 8, 8),
    "cgnl": (lambda: CGNL(8, groups=4, use_scale=True), 8, 8),
    "ldv1": (lambda: LDv1(downsample_rate=4), 6, 6),
    "ldv2_slices": (lambda: LDv2(kernel_size=3, dilation_rate=2, key_channels=8,
                                 value_channels=8, impl="slices"), (6, 10), 16),
    "ldv2_patches_heads": (lambda: LDv2(kernel_size=3, dilation_rate=2, key_channels=8,
                                        value_channels=8, num_heads=2, impl="patches"),
                           (6, 10), 16),
    # LDv1 with the authors' unpadded convs needs maps of >= 15x15.
    "gald_block_v1": (lambda: GALDBlockV1(8, groups=4), 8, 8, ((2, 17, 19), (1, 15, 16))),
}


# On JAX the contract runs for the layers whose JAX path is the library's own kernel
# (the conv, the local attention, ASPP's pooling and resize); each JAX compile of a new
# shape costs seconds, and every layer's JAX maths is checked against NumPy in its own
# file.
JAX_CASES = {"dilated_conv_rate2", "aspp", "ldv2_slices"}


@pytest.mark.parametrize("name", [
    pytest.param(name, marks=pytest.mark.jax) if name in JAX_CASES else name
    for name in sorted(CASES)
])
def test_layer_contract(name, tmp_path):
    make_layer, input_channels, output_channels, *sizes = CASES[name]
    run_layer_test(make_layer, input_channels, output_channels, tmp_path, *sizes)
