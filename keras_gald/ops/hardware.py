"""What the CPU this process runs on can do, detected once.

The library's CPU fast paths were chosen by timing them (`benchmarks/
library_vs_stock.py`, `benchmarks/speed.py`), and what wins depends on the
machine: TensorFlow turns oneDNN on by default only on CPUs with AVX-512-class
neural-network features (AVX512-VNNI / AVX512-BF16 / AMX); elsewhere, and
whenever `TF_ENABLE_ONEDNN_OPTS=0`, its CPU kernels are Eigen's, which round
bfloat16 partial sums, run bfloat16 slower than float32 without bf16
instructions, and reject dilation in the conv backprop. `machine()` reads the
CPU flags and asks TensorFlow whether oneDNN is active, once per process.

Example:
    >>> from keras_gald.ops import machine
    >>> m = machine()
    >>> m.onednn, m.bf16_instructions      # e.g. (True, True) on a Zen 4 EPYC
    >>> print(m.describe())
"""

import dataclasses
import functools
import os
import platform


def _cpu_flags():
    """The `flags` line of /proc/cpuinfo as a set (empty where there is none)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def _onednn_active(flags):
    """Whether TensorFlow runs its oneDNN CPU kernels in this process."""
    try:
        from tensorflow.python.util import _pywrap_util_port

        return bool(_pywrap_util_port.IsMklEnabled())
    except (ImportError, AttributeError):  # not this TF build: apply TF's documented rule
        setting = os.environ.get("TF_ENABLE_ONEDNN_OPTS")
        if setting is not None:
            return setting.strip().lower() in ("1", "true")
        return bool(flags & {"avx512_vnni", "avx512_bf16", "amx_bf16", "amx_tile", "avx_vnni"})


@dataclasses.dataclass(frozen=True)
class Machine:
    """The CPU features the library's dispatch decisions depend on.

    Attributes:
        cpu: the CPU model name.
        avx2, avx512: the vector ISA (AVX-512 means `avx512f`).
        bf16_instructions: native bfloat16 arithmetic (`avx512_bf16` or AMX):
            without it bfloat16 is emulated and slower than float32.
        onednn: TensorFlow's oneDNN CPU kernels are active (else Eigen's).
    """

    cpu: str
    avx2: bool
    avx512: bool
    bf16_instructions: bool
    onednn: bool

    @property
    def isa(self):
        """`"avx512"`, `"avx2"` or `"other"`."""
        return "avx512" if self.avx512 else "avx2" if self.avx2 else "other"

    def describe(self):
        """One line: CPU, ISA, bf16 instructions, oneDNN."""
        return (f"{self.cpu}; {self.isa.upper()}, "
                f"{'bf16 instructions' if self.bf16_instructions else 'no bf16 instructions'}, "
                f"TF oneDNN {'on' if self.onednn else 'off (Eigen kernels)'}")

    def to_dict(self):
        return dict(dataclasses.asdict(self), isa=self.isa)


@functools.lru_cache(maxsize=None)
def machine():
    """The `Machine` this process runs on (detected on the first call, then cached)."""
    flags = _cpu_flags()
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f
                        if line.startswith("model name")), cpu)
    except OSError:
        pass
    return Machine(
        cpu=cpu,
        avx2="avx2" in flags,
        avx512="avx512f" in flags,
        bf16_instructions=bool(flags & {"avx512_bf16", "amx_bf16"}),
        onednn=_onednn_active(flags),
    )


def bf16_is_slow():
    """Why `mixed_bfloat16` will be slower than float32 on this CPU, or `None`.

    Without bf16 instructions (or without oneDNN to use them) TensorFlow converts
    bfloat16 to float32 and back around every kernel.
    """
    m = machine()
    if not m.bf16_instructions:
        return (f"this CPU has no bfloat16 instructions ({m.isa.upper()}): mixed_bfloat16 "
                "runs emulated, slower than float32")
    if not m.onednn:
        return ("TensorFlow's oneDNN kernels are off (TF_ENABLE_ONEDNN_OPTS=0): mixed_bfloat16 "
                "runs on Eigen's emulated bfloat16, slower than float32")
    return None
