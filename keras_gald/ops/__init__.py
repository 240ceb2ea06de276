"""Backend kernels and the machine facts that choose between them.

`machine()` tells what this CPU can do (ISA, bfloat16 instructions, whether
TensorFlow's oneDNN kernels are active); the layers' CPU fast paths read it
when a graph is traced.
"""

from keras_gald.ops.hardware import Machine, bf16_is_slow, machine

__all__ = ["Machine", "bf16_is_slow", "machine"]
