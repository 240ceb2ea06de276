"""FLOPs of a network: of the traced Keras graph (`count_flops`) and of the
PyTorch twin (`torch_flops`), 2 per multiply-add.

`count_flops` walks the graph's dense ops (Conv2D, DepthwiseConv2dNative,
MatMul, BatchMatMul, Einsum). Element-wise ops (BN, ReLU, resize, softmax,
LDv2's weighted sum) are not in that count; the TF profiler's total float-op
count of the same graph, which adds the element-wise ops it knows, is returned
beside it as a cross-check. PyTorch's count (`FlopCounterMode`: convs and
matmuls) checks that the twins do the same work; they agree except for LDv2,
whose Keras logits are a matmul with a ones column (counted) where the twin
sums a product (not counted).
"""

import math

from common.models import build_torch
from common.report import log

DENSE_OPS = ("Conv2D", "DepthwiseConv2dNative", "MatMul", "BatchMatMul", "BatchMatMulV2",
             "BatchMatMulV3", "Einsum")
CALL_OPS = ("PartitionedCall", "StatefulPartitionedCall", "While", "StatelessWhile", "If",
            "StatelessIf")


def _static(shape):
    dims = shape.as_list() if hasattr(shape, "as_list") else list(shape)
    return None if dims is None or any(d is None for d in dims) else dims


def _einsum_flops(op):
    """2 x the product of every index's size (one multiply-add per index tuple)."""
    equation = op.get_attr("equation").decode()
    lhs = equation.split("->")[0].split(",")
    sizes = {}
    for spec, tensor in zip(lhs, op.inputs):
        dims = _static(tensor.shape)
        if dims is None or "." in spec:
            return None
        sizes.update(zip(spec, dims))
    return 2 * math.prod(sizes.values())


def dense_op_flops(op):
    """FLOPs (2 per multiply-add) of one dense op with static shapes, else None."""
    out = _static(op.outputs[0].shape)
    if op.type == "Einsum":
        return _einsum_flops(op)
    if out is None:
        return None
    out_elements = math.prod(out)
    if op.type == "Conv2D":
        kh, kw, cin, _ = _static(op.inputs[1].shape)
        return 2 * out_elements * kh * kw * cin
    if op.type == "DepthwiseConv2dNative":
        kh, kw, _, _ = _static(op.inputs[1].shape)
        return 2 * out_elements * kh * kw
    a = _static(op.inputs[0].shape)
    if a is None:
        return None
    if op.type == "MatMul":
        depth = a[0] if op.get_attr("transpose_a") else a[1]
    else:  # BatchMatMul*
        depth = a[-2] if op.get_attr("adj_x") else a[-1]
    return 2 * out_elements * depth


def count_flops(concrete_fn):
    """Dense-op FLOPs of a concrete function's graph, by op type, plus the TF profiler total.

    Returns a dict: `gflop`, `by_op` (GFLOP per op type), `uncounted` (dense
    ops with unknown shapes and function-call ops whose bodies were not
    walked; empty for the keras_gald networks), `tf_profiler_gflop`.
    """
    import tensorflow as tf

    graph = concrete_fn.graph
    total, by_op, uncounted = 0, {}, []
    for op in graph.get_operations():
        if op.type in CALL_OPS:
            uncounted.append(f"{op.type}:{op.name}")
        if op.type not in DENSE_OPS:
            continue
        flops = dense_op_flops(op)
        if flops is None:
            uncounted.append(f"{op.type}:{op.name}")
            continue
        total += flops
        by_op[op.type] = by_op.get(op.type, 0) + flops
    profiler_gflop = None
    try:
        options = tf.compat.v1.profiler.ProfileOptionBuilder.float_operation()
        options["output"] = "none"
        profile = tf.compat.v1.profiler.profile(graph=graph, options=options)
        profiler_gflop = profile.total_float_ops / 1e9
    except Exception as exc:  # noqa: BLE001 - optional cross-check
        log(f"    (TF profiler failed: {type(exc).__name__}: {exc})")
    return {
        "gflop": total / 1e9,
        "by_op": {k: round(v / 1e9, 4) for k, v in sorted(by_op.items())},
        "uncounted": uncounted,
        "tf_profiler_gflop": profiler_gflop,
    }


def torch_flops(torch, torch_ref, cfg, height, width):
    """GFLOP of the torch twin's forward (FlopCounterMode: convs and matmuls).

    Runs on the "meta" device: shapes only, no arithmetic, so even the
    1024x2048 networks are counted in a second.
    """
    try:
        from torch.utils.flop_counter import FlopCounterMode

        with torch.device("meta"):
            model = build_torch(torch_ref, cfg).eval()
            images = torch.empty(1, 3, height, width)
        with torch.inference_mode(), FlopCounterMode(display=False) as counter:
            model(images)
        return counter.get_total_flops() / 1e9
    except Exception as exc:  # noqa: BLE001 - informational only
        log(f"    (torch FLOP counter failed: {type(exc).__name__}: {exc})")
        return None
