"""The sections of `benchmarks/speed.py`, one module per group; each
`measure_*(args, ..., results)` adds its rows to `results` and rewrites the JSON.

- `peak`: the machine's attainable matmul / conv throughput.
- `forward`: one image per configuration and mode, FLOPs, LD overhead, and the
  ASPP / LDv1 / LDv2 networks in turns (`ld_turns`).
- `train`: one SGD step per configuration, its conv / BN layers alone
  (`train_layers`), and the optimizer update alone (`optimizer`).
- `kernels`: the LDv2 layer alone (`ldv2_block`) and one dilated 3x3 conv
  (`dilated_conv`).
- `twins`: timing a Keras row in turns with its PyTorch twins.
- `tables`: the tables printed at the end of a run.

The `memory` section is `common.memory`.
"""
