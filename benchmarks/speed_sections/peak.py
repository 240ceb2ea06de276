"""`peak`: the machine's attainable throughput - a large matmul and a large 3x3
conv (256 -> 256 channels) in TF, fp32 and bf16, and in PyTorch (fp32) when
available: GFLOP/s of the median and of the best call. The best call is the
peak the `forward` rows are compared with (`pct_conv_peak`).
"""

import numpy as np

from common.report import log
from common.timing import sync_tf, time_calls


def _peak_rates(flops, timing):
    # The peak is what the machine can reach: the best call, not the median.
    return dict(gflop=flops / 1e9, gflop_s=flops / 1e9 / (timing["ms"] / 1e3),
                gflop_s_best=flops / 1e9 / (timing["ms_min"] / 1e3), **timing)


def measure_peak(args, torch, results):
    import tensorflow as tf

    rows = []
    n, s = args.peak_matmul, args.peak_conv
    matmul_flops = 2 * n**3
    conv_flops = 2 * s * s * 9 * 256 * 256
    rng = np.random.default_rng(0)
    for dtype_name, dtype in (("fp32", tf.float32), ("bf16", tf.bfloat16)):
        cases = {
            "matmul": (
                tf.function(lambda a, b: tf.matmul(a, b)),
                (rng.standard_normal((n, n)), rng.standard_normal((n, n))),
                matmul_flops,
                f"{n}x{n}x{n}",
            ),
            "conv3x3": (
                tf.function(lambda x, k: tf.nn.conv2d(x, k, 1, "SAME")),
                (rng.standard_normal((1, s, s, 256)), rng.standard_normal((3, 3, 256, 256)) * 0.02),
                conv_flops,
                f"1x{s}x{s}x256 -> 256",
            ),
        }
        for op_name, (fn, arrays, flops, shape) in cases.items():
            inputs = [tf.constant(a, dtype) for a in arrays]
            try:
                timing = time_calls(lambda: sync_tf(fn(*inputs)), args.warmup, args.repeats)
            except Exception as exc:  # noqa: BLE001 - e.g. no bf16 kernel on this CPU
                log(f"[peak] tf {op_name} {dtype_name}: not supported ({type(exc).__name__})")
                rows.append(dict(framework="tf", op=op_name, dtype=dtype_name, shape=shape,
                                 error=str(exc)[:200]))
                continue
            row = dict(framework="tf", op=op_name, dtype=dtype_name, shape=shape,
                       **_peak_rates(flops, timing))
            rows.append(row)
            log(f"[peak] tf {op_name:7s} {dtype_name}: {row['ms']:.1f} ms, "
                f"{row['gflop_s']:.1f} GFLOP/s (best call {row['gflop_s_best']:.1f})")
    if torch is not None:
        import torch.nn.functional as F

        gen = torch.Generator().manual_seed(0)
        a, b = torch.randn(n, n, generator=gen), torch.randn(n, n, generator=gen)
        x = torch.randn(1, 256, s, s, generator=gen).contiguous(memory_format=torch.channels_last)
        k = (torch.randn(256, 256, 3, 3, generator=gen) * 0.02).contiguous(
            memory_format=torch.channels_last)
        for op_name, fn, flops, shape in (
            ("matmul", lambda: torch.mm(a, b), matmul_flops, f"{n}x{n}x{n}"),
            ("conv3x3", lambda: F.conv2d(x, k, padding=1), conv_flops, f"1x{s}x{s}x256 -> 256"),
        ):
            with torch.inference_mode():
                timing = time_calls(fn, args.warmup, args.repeats)
            row = dict(framework="torch", op=op_name, dtype="fp32", shape=shape,
                       **_peak_rates(flops, timing))
            rows.append(row)
            log(f"[peak] torch {op_name:7s} fp32: {row['ms']:.1f} ms, "
                f"{row['gflop_s']:.1f} GFLOP/s (best call {row['gflop_s_best']:.1f})")
    results["peak"] = rows


def conv_peak(results, dtype):
    """TF's best conv GFLOP/s for `dtype` ("fp32" / "bf16") from the peak section, or None."""
    for row in results.get("peak", []):
        if row["framework"] == "tf" and row["op"] == "conv3x3" and row["dtype"] == dtype:
            return row.get("gflop_s_best")
    return None
