"""What the benchmark scripts share, one module per concern.

- `timing`: the timing protocol (warm-up calls, medians, calls in turns).
- `machine`: the machine header every JSON carries (CPU flags, load, versions,
  and `keras_gald.ops.machine()` with the kernel policy it selects).
- `models`: the named network configurations, their Keras builds and PyTorch
  twins (`benchmarks/torch_reference.py`), dtype policies.
- `flops`: FLOPs of a traced Keras graph and of a PyTorch twin.
- `memory`: peak memory of one block, measured in a subprocess of its own.
- `report`: logging, number formatting, atomic JSON writes.

Scripts put `benchmarks/` and the repository root on `sys.path` and import
`from common import ...`; nothing here imports TensorFlow or PyTorch at module
level, so `torch_reference.py` can use `common.models` without TensorFlow.
"""
