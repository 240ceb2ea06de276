"""keras_gald.ops.Policy: per-machine defaults, the context manager, and the kernels
reading it at trace time (never from a saved config)."""

import json

import pytest
import tensorflow as tf

from keras_gald.layers import DilatedConv2D, LDv2
from keras_gald.ops.conv import auto_method, dilated_conv2d
from keras_gald.ops import Machine, Policy
from keras_gald.ops import hardware, policy as policy_module


def _fake(monkeypatch, onednn, bf16):
    fake = Machine(cpu="test", avx2=True, avx512=bf16, bf16_instructions=bf16, onednn=onednn)
    monkeypatch.setattr(policy_module, "machine", lambda: fake)


@pytest.mark.parametrize("onednn,bf16", [(True, True), (True, False), (False, False),
                                         (False, True)])
def test_defaults_follow_the_machine(monkeypatch, onednn, bf16):
    _fake(monkeypatch, onednn, bf16)
    p = Policy()
    # Measured to win only on oneDNN's kernels (benchmarks/README.md).
    assert p.winograd == p.conv_slices == p.taps_direct_forward_bf16 == onednn
    assert p.winograd_bf16 == (onednn and bf16)
    # Skipping padding taps and LDv2's fold save work on any kernels.
    assert p.taps and p.ldv2_fold and p.jit_slices
    assert Policy(winograd=not onednn).winograd == (not onednn)  # an explicit value wins


def test_context_manager_nests_and_restores():
    default = Policy.current()
    assert default == Policy()
    with Policy(winograd=False) as outer:
        assert Policy.current() is outer
        with Policy.current().replace(conv_slices=False, winograd_min_weights=7) as inner:
            assert Policy.current() is inner
            assert (inner.winograd, inner.conv_slices, inner.winograd_min_weights) == (False, False, 7)
        assert Policy.current() is outer
    assert Policy.current() == default
    with pytest.raises(TypeError):
        Policy(no_such_switch=True)


def test_auto_method_reads_the_current_policy():
    args = (64, 64, (3, 3, 512, 512), (1, 1), "SAME", tf.float32)
    with Policy(winograd=True, winograd_min_weights=256 * 256):
        assert auto_method(*args) == "winograd"
    with Policy(winograd=False):
        assert auto_method(*args) == "conv"
    rate16 = (64, 64, (3, 3, 64, 64), (16, 16), "SAME", tf.float32)
    with Policy(taps=True):
        assert auto_method(*rate16) == "taps"
    with Policy(taps=False):
        assert auto_method(*rate16) == "conv"


def test_graph_traced_under_a_policy_follows_it():
    k = tf.zeros((3, 3, 16, 16))
    spec = tf.TensorSpec((1, 32, 32, 16), tf.float32)

    def ops(**changes):
        changes = dict(winograd_min_weights=1, winograd_min_pixels=512, **changes)
        with Policy.current().replace(**changes):
            fn = tf.function(lambda x: dilated_conv2d(x, k, (1, 1), "SAME"))
            return {op.type for op in fn.get_concrete_function(spec).graph.get_operations()}

    assert "Conv2D" not in ops(winograd=True)
    assert "Conv2D" in ops(winograd=False)


def test_no_speed_switch_is_saved_in_a_layer_config():
    switches = {f for f in Policy().to_dict()}
    for layer in (DilatedConv2D(4, 3, dilation_rate=2), LDv2()):
        config = json.dumps(layer.get_config())
        assert not any(f'"{name}"' in config for name in switches - {"jit_slices"}), config
    assert LDv2().get_config()["jit_slices"] is None  # the policy's, at trace time
    assert LDv2(jit_slices=False).get_config()["jit_slices"] is False


def test_machine_is_detected_once():
    assert hardware.machine() is hardware.machine()


def test_first_use_inside_a_traced_function():
    # The default policy may be built for the first time while tf.function (AutoGraph)
    # traces a layer: it must run as plain Python there.
    policy_module._default.cache_clear()
    fn = tf.function(lambda x, k: dilated_conv2d(x, k, (1, 1), "SAME", method="conv"),
                     jit_compile=True)
    assert fn(tf.zeros((1, 9, 9, 2)), tf.zeros((3, 3, 2, 2))).shape == (1, 9, 9, 2)
