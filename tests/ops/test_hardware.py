"""keras_gald.ops.hardware: CPU facts detected once, and what they decide."""

import pytest

from keras_gald.ops import hardware as machine_module
from keras_gald.ops.hardware import Machine, bf16_is_slow, machine
from tests.harness import run_python


def test_detects_this_process():
    m = machine()
    assert m is machine()  # detected once
    from tensorflow.python.util import _pywrap_util_port

    assert m.onednn == bool(_pywrap_util_port.IsMklEnabled())
    flags = machine_module._cpu_flags()
    assert m.avx512 == ("avx512f" in flags) and m.avx2 == ("avx2" in flags)
    assert m.isa in m.describe().lower() or m.isa == "other"
    assert set(m.to_dict()) >= {"cpu", "avx2", "avx512", "bf16_instructions", "onednn", "isa"}


@pytest.mark.parametrize("setting", ["0", "1"])
def test_follows_tf_enable_onednn_opts(setting):
    code = "from keras_gald.ops import machine; print(machine().onednn)"
    out = run_python(["-c", code], env={"TF_ENABLE_ONEDNN_OPTS": setting}, timeout=120).stdout
    assert out.split()[-1] == str(setting == "1")


@pytest.mark.parametrize("bf16,onednn,slow", [
    (True, True, None), (False, True, "no bfloat16 instructions"),
    (False, False, "no bfloat16 instructions"), (True, False, "oneDNN kernels are off"),
])
def test_bf16_is_slow(monkeypatch, bf16, onednn, slow):
    fake = Machine(cpu="test", avx2=True, avx512=bf16, bf16_instructions=bf16, onednn=onednn)
    monkeypatch.setattr(machine_module, "machine", lambda: fake)
    reason = bf16_is_slow()
    assert (reason is None) if slow is None else (slow in reason)
