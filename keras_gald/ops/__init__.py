"""Backend kernels and the machine facts that choose between them.

`machine()` tells what this CPU can do (ISA, bfloat16 instructions, whether
TensorFlow's oneDNN kernels are active); `Policy` holds the kernels' speed
switches, with defaults from `machine()`, read when a graph is traced.
"""

from keras_gald.ops.hardware import Machine, bf16_is_slow, machine
from keras_gald.ops.policy import Policy

__all__ = ["Machine", "Policy", "bf16_is_slow", "machine"]
