"""Speed of keras_gald on this machine, against its own peak and PyTorch (issue #8).

Measures, in one run (medians of `--repeats` timed calls after `--warmup`
calls; the first call, which includes tracing / XLA compilation, is reported
separately as `first_ms`):

1. `peak`: the machine's attainable throughput - a large matmul and a large
   3x3 conv (256 -> 256 channels, 128x128 map) in TF, fp32 and bf16, GFLOP/s
   (median and best call; the best call is the peak the other rows are
   compared with); the same in PyTorch (fp32) when available.
2. `forward`: latency of one image (batch 1, 512x512 by default) for each
   configuration (`--configs`) and mode (`--modes`): `fp32` (`tf.function`),
   `fp32_xla` (`tf.function(jit_compile=True)`), `bf16` (Keras policy
   `mixed_bfloat16`, set before building; logits stay float32), `fp16`
   (`mixed_float16`, for GPUs; no PyTorch twin). Each row
   gives the FLOPs of one forward pass, achieved GFLOP/s and its share of the
   conv peak of the same dtype measured in step 1. Backbone-only rows
   (`*_backbone`) show how close the convolutions get to that peak.
3. `ld_overhead`: forward-time ratios (ASPP+LDv1)/ASPP and (ASPP+LDv2)/ASPP
   from the `forward` rows; `ld_turns` (section): the same three networks
   timed in turns per mode, with per-round ratios (robust to drift).
4. `train`: one SGD step (`keras_gald.optimizers.SGD`, momentum 0.9; cross-entropy with ignore label 255,
   plus 0.4 x the auxiliary head's loss when the model has one, i.e.
   `Segmenter.compile` defaults) at 128x128, batch 2, via
   `model.train_on_batch` (`compile(jit_compile=...)` for `fp32_xla`), for
   the same modes and `--train-configs` (official_v1 needs >= 111 pixels, so
   it trains at 128 even when `--train-size` is smaller).
5. `ldv2_block`: the LDv2 layer alone (default config, 64x64 map, X_g 256 +
   X_l 256 = 512 input channels, batch 1), forward and forward+backward,
   `impl="slices"` (fast; its primitives XLA-compiled inside the graph, the
   default `jit_slices=True`), `slices_plain` (`jit_slices=False`, plain TF
   ops) and `impl="patches"` (reference), graph and XLA; ratios over the
   default.
4b. `train_layers`: every distinct conv and BatchNorm layer of the
   `--train-configs` networks at the training crop, forward + backward, in
   turns: the library's layer (DilatedConv2D's hand-written gradients,
   FusedBatchNormalization), the stock Keras layer of the same config (TF's
   gradients) and PyTorch's; totals per kind (1x1, 3x3 rate 1, dilated,
   strided, BN) weighted by how often each layer occurs.
4c. `optimizer`: one SGD update (momentum 0.9) of all trainable weights of
   the `--train-configs` networks: `keras.optimizers.SGD`,
   `keras_gald.optimizers.SGD` (fused TF kernel) and `torch.optim.SGD`.
5b. `dilated_conv`: one 3x3 conv of ASPP's shape (2048 -> 256, SAME) at rates
   1/2/12/24/36, on the 1/8 map of the forward image (batch 1) and of the
   training crop: `dilated_conv2d(method="conv")` (hand-written gradient) vs
   `method="taps"` (one matmul per tap over the region it reads) vs
   `method="winograd"` (F(2x2, 3x3)), TF's own gradient at rate 1, which
   `method="auto"` picks in a graph, forward and
   forward+backward, and PyTorch's conv.
6. `memory`: peak memory of one forward and one forward+backward of the ASPP
   module vs the LDv2 block on the 1/8 feature map of a 1024x2048 image
   (ASPP: X (1, 128, 256, 2048) -> 256 ch; LDv2: [X_g (.., 256), X (.., 2048)]).
   Each measurement runs in its own subprocess with TF's CPU BFC allocator
   (`TF_CPU_ALLOCATOR_USE_BFC=true`), so `tf.config.experimental.
   get_memory_info("CPU:0")` reports the allocator's peak; `extra_mib` is that
   peak minus what was allocated before the call (inputs and weights). The
   growth of the process's `ru_maxrss` over the call is reported as a
   cross-check (it also sees memory allocated outside TF's allocator).
   `ldv2_slices` is the default layer (XLA-compiled primitives),
   `ldv2_slices_plain` the same with `jit_slices=False`.
   `ldv2_patches` materialises k^2 = 25 copies of the key/value maps (GBs at
   this size), so it only runs when listed in `--memory-blocks`.
7. PyTorch (`benchmarks/torch_reference.py`, skipped with a note when `import
   torch` fails): the same networks, eager, `torch.channels_last`, fp32,
   `torch.inference_mode()`; with `--torch-compile` also `torch.compile`d;
   with `bf16` among the modes also under `torch.autocast("cpu",
   torch.bfloat16)` (`torch_eager_bf16`, the twin of Keras' `mixed_bfloat16`:
   float32 weights, bf16 convs and matmuls); and the same training step.
   Torch uses as many threads as TF (`--threads`); TF runs one op at a time
   (`--inter-op-threads 1`) as PyTorch does. Rows give Keras/PyTorch time
   ratios (>1: Keras slower) against the twin of the same precision.
   In fp32 and bf16 the Keras model and its PyTorch twin are timed in turns
   (`time_interleaved`: one call of each per round; training steps get one
   untimed settling call before each timed one), so a slow spell of a
   shared machine slows both: `keras_over_torch` is the ratio of the two
   medians, `keras_over_torch_paired` ("K/T rnd") the median of the
   per-round ratios.
   Parameter counts of both are compared for every configuration. On a
   machine shared with other jobs PyTorch's OpenMP threads, which spin while
   they wait for each other, can run 10-40x slower than on an idle one;
   OMP_WAIT_POLICY=PASSIVE avoids that, at a small cost on an idle machine.
   `--omp-wait-policy auto` (default) sets it when the load average at start
   exceeds half the usable CPUs (and never overrides an OMP_WAIT_POLICY
   already in the environment); `passive` always, `unchanged` never. The
   policy used is recorded in the JSON (`machine.OMP_WAIT_POLICY`).

FLOPs: counted on the traced fp32 inference graph (`tf.function` concrete
function with static shapes) by walking its ops: Conv2D, DepthwiseConv2dNative,
MatMul, BatchMatMul and Einsum, 2 FLOPs per multiply-add (`gflop`). Element-wise
ops (BN, ReLU, resize, softmax, LDv2's weighted sum) are not in that count; the
TF profiler's total float-op count of the same graph, which adds the
element-wise ops it knows, is stored as `tf_profiler_gflop` in the JSON.
That graph is traced under `keras_gald.layers.portable_ops()`, i.e. with
direct convolutions (the taps path's skipped padding stays skipped); the
float32 graph as it runs does Winograd F(2x2, 3x3) for wide 3x3 convolutions,
4/9 of their multiply-adds, and its count is `gflop_executed` (for bf16 rows
the bf16 graph's, which takes Winograd only for wider kernels). `gflop_s` and
`pct_conv_peak` divide `gflop`, so they are effective rates.
PyTorch's own count (`torch.utils.flop_counter.FlopCounterMode`: convs and
matmuls, on the "meta" device) is stored as `torch_gflop` to check the two
networks do the same work; they agree except for LDv2, whose Keras logits are
a matmul with a ones column (counted) where the torch twin sums a product
(not counted): 2*H*W*256*25 FLOPs, ~0.01% of the network.

Usage (from the repository root; `pip install -e .[bench]` for PyTorch):
    python benchmarks/speed.py --quick                  # smoke test, ~3-5 min on 2 cores
    python benchmarks/speed.py                          # default set
    python benchmarks/speed.py --configs r50_aspp,r50_aspp_ldv2 --modes fp32,fp32_xla
    python benchmarks/speed.py --sections peak,ldv2_block,memory --repeats 10
    python benchmarks/speed.py --large --torch-compile --json runs/speed_full.json

The default set is long on a small CPU (R50 ASPP+LDv2 at 512x512 is ~460
GFLOP per forward; hours on 2 cores): trim it with `--configs`, `--modes`,
`--sections`, `--repeats`. Results are written to the JSON after every
configuration, so an interrupted run keeps what it measured.

Configurations (`--configs`, comma-separated; also `default`, `quick`, `all`):
`{tiny,r50,r101}_{backbone,fcn,aspp,aspp_ldv1,aspp_ldv2,cgnl_ldv1}` (GALD
factory, output stride 8, multi-grid (1, 2, 4), 19 classes; tiny =
`resnet_tiny` for smoke tests) and `official_v1_r{50,101}`
(`official_gald_v1`, logits upsampled to the input size). `--large` adds
R101 ASPP+LDv2 at 1024x2048 to the forward section.
"""

import argparse
import gc
import json
import math
import os
import pathlib
import platform
import resource
import statistics
import subprocess
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
BENCH_DIR = pathlib.Path(__file__).resolve().parent
# Runnable from a checkout without `pip install -e .`; torch_reference sits here.
sys.path.insert(0, str(BENCH_DIR.parent))
sys.path.insert(0, str(BENCH_DIR))

import numpy as np  # noqa: E402

NUM_CLASSES = 19
IGNORE_INDEX = 255
MODES = ("fp32", "fp32_xla", "bf16", "fp16")
# Keras dtype policy of each mode (fp16: mixed_float16, for GPUs).
POLICIES = {"fp32": "float32", "fp32_xla": "float32", "bf16": "mixed_bfloat16",
            "fp16": "mixed_float16"}
SECTIONS = ("peak", "forward", "ld_turns", "train", "train_layers", "optimizer", "ldv2_block",
            "dilated_conv", "memory")
# The PyTorch twins a Keras mode is timed in turns with (the first is the
# reference of its K/T ratios): fp32 against fp32, bf16 against bf16 autocast.
TORCH_TWINS = {"fp32": ("torch_eager", "torch_compile"), "bf16": ("torch_eager_bf16",)}
MEMORY_BLOCKS = ("aspp", "ldv2_slices", "ldv2_slices_plain", "ldv2_patches")
DENSE_OPS = ("Conv2D", "DepthwiseConv2dNative", "MatMul", "BatchMatMul", "BatchMatMulV2",
             "BatchMatMulV3", "Einsum")
CALL_OPS = ("PartitionedCall", "StatefulPartitionedCall", "While", "StatelessWhile", "If",
            "StatelessIf")


def _gald(backbone, ga, ld):
    return dict(kind="gald", backbone=backbone, ga=ga, ld=ld)


def _config_table():
    table = {}
    for short, backbone in (("tiny", "resnet_tiny"), ("r50", "resnet50"), ("r101", "resnet101")):
        table[f"{short}_backbone"] = dict(kind="backbone", backbone=backbone)
        table[f"{short}_fcn"] = _gald(backbone, None, None)
        table[f"{short}_aspp"] = _gald(backbone, "aspp", None)
        table[f"{short}_aspp_ldv1"] = _gald(backbone, "aspp", "v1")
        table[f"{short}_aspp_ldv2"] = _gald(backbone, "aspp", "v2")
        table[f"{short}_cgnl_ldv1"] = _gald(backbone, "cgnl", "v1")
    table["official_v1_r50"] = dict(kind="official_v1", depth=50)
    table["official_v1_r101"] = dict(kind="official_v1", depth=101)
    return table


CONFIGS = _config_table()
_VARIANTS = ("backbone", "fcn", "aspp", "aspp_ldv1", "aspp_ldv2", "cgnl_ldv1")
CONFIG_SETS = {
    "default": [f"r50_{v}" for v in _VARIANTS] + [f"r101_{v}" for v in _VARIANTS]
    + ["official_v1_r101"],
    "quick": [f"tiny_{v}" for v in _VARIANTS] + ["official_v1_r50"],
    "all": list(CONFIGS),
}
LARGE_CONFIG, LARGE_SIZE = "r101_aspp_ldv2", (1024, 2048)

# (full, --quick) defaults of the size / repeat settings.
SETTINGS = {
    "size": (512, 128),
    "train_size": (128, 64),
    "train_batch": (2, 2),
    "ldv2_size": (64, 32),
    "dilated_channels": ("2048,256", "256,64"),
    "memory_hw": ("128,256", "16,32"),
    "peak_matmul": (2048, 512),
    "peak_conv": (128, 64),
    "repeats": (5, 2),
    "warmup": (1, 1),
}


# ------------------------------------------------------------------ helpers


def log(message):
    print(message, flush=True)


def time_calls(fn, warmup, repeats):
    """Runs `fn` (which must block until its result is ready) `warmup` then
    `repeats` times; returns median / min / all timed ms and the first call's ms."""
    first_ms = None
    for i in range(max(warmup, 1)):
        start = time.perf_counter()
        fn()
        if i == 0:
            first_ms = (time.perf_counter() - start) * 1e3
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return {
        "ms": statistics.median(times),
        "ms_min": min(times),
        "ms_all": [round(t, 3) for t in times],
        "first_ms": round(first_ms, 3),
    }


def time_interleaved(fns, warmup, repeats, settle=0):
    """Times several callables round-robin: `warmup` calls of each, then
    `repeats` rounds that call each once (the order reversed every other
    round). A slow spell on a shared machine then hits every callable alike,
    so their ratios stay meaningful where back-to-back blocks of calls drift.
    `settle` untimed calls precede each timed one: a training step right after
    the other framework's step ran slower (Keras R50 + ASPP + LDv2, 2x128x128:
    1896 ms alone with `--sections train --no-torch`, 2254 ms in plain turns
    with PyTorch); the cause (caches, freed memory faulted back in) is not
    pinned down.

    Returns `({name: time_calls-style stats}, {name: [ms per round]})`.
    """
    first, times = {}, {name: [] for name in fns}
    for name, fn in fns.items():
        for i in range(max(warmup, 1)):
            start = time.perf_counter()
            fn()
            if i == 0:
                first[name] = (time.perf_counter() - start) * 1e3
    names = list(fns)
    for round_ in range(repeats):
        for name in names if round_ % 2 == 0 else names[::-1]:
            for _ in range(settle):
                fns[name]()
            start = time.perf_counter()
            fns[name]()
            times[name].append((time.perf_counter() - start) * 1e3)
    stats = {
        name: {
            "ms": statistics.median(ts),
            "ms_min": min(ts),
            "ms_all": [round(t, 3) for t in ts],
            "first_ms": round(first[name], 3),
            "interleaved_with": [other for other in names if other != name],
        }
        for name, ts in times.items()
    }
    return stats, times


def paired_ratio(times_a, times_b):
    """Median over rounds of a / b (round i of `time_interleaved` ran both)."""
    return statistics.median(a / b for a, b in zip(times_a, times_b))


def _sync_tf(result):
    # Pull every output to the host so that asynchronous execution has finished.
    import tensorflow as tf

    for t in tf.nest.flatten(result):
        if hasattr(t, "numpy"):
            t.numpy()


def _read_proc(path):
    try:
        return pathlib.Path(path).read_text()
    except OSError:
        return ""


def machine_info(threads, torch_mod):
    import keras
    import tensorflow as tf

    cpuinfo = _read_proc("/proc/cpuinfo")
    model = next((line.split(":", 1)[1].strip() for line in cpuinfo.splitlines()
                  if line.startswith("model name")), platform.processor())
    flags = next((line.split(":", 1)[1].split() for line in cpuinfo.splitlines()
                  if line.startswith("flags")), [])
    interesting = [f for f in flags if f.startswith(("avx", "amx", "fma")) or "bf16" in f
                   or "vnni" in f]
    meminfo = _read_proc("/proc/meminfo").split()
    mem_total = None
    if "MemTotal:" in meminfo:
        mem_total = round(int(meminfo[meminfo.index("MemTotal:") + 1]) / 2**20, 1)
    info = {
        "cpu_model": model,
        "cpu_flags": interesting,
        "logical_cpus": os.cpu_count(),
        "usable_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "mem_total_gib": mem_total,
        "loadavg_start": list(os.getloadavg()),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "numpy": np.__version__,
        # TF turns oneDNN on by itself only on CPUs with AVX512-VNNI/BF16 or AMX;
        # elsewhere it runs Eigen kernels unless this is set to 1.
        "TF_ENABLE_ONEDNN_OPTS": os.environ.get("TF_ENABLE_ONEDNN_OPTS"),
        "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY"),
        "tf_intra_op_threads": tf.config.threading.get_intra_op_parallelism_threads(),
        "tf_inter_op_threads": tf.config.threading.get_inter_op_parallelism_threads(),
        "tf_devices": [d.name for d in tf.config.list_logical_devices()],
        "threads": threads,
    }
    # What the library's CPU dispatch reads (keras_gald.ops.machine()), printed as
    # the header of every benchmark: results differ between AVX2 and AVX-512
    # CPUs and with oneDNN on or off.
    from keras_gald.ops import Policy, machine

    info["keras_gald_machine"] = machine().to_dict()
    info["keras_gald_policy"] = Policy.current().to_dict()
    log(f"machine: {machine().describe()}; flags: {' '.join(interesting)}")
    switches = ("winograd", "winograd_bf16", "conv_slices", "taps", "taps_direct_forward_bf16",
                "ldv2_fold", "jit_slices")
    log("kernel policy: " + ", ".join(
        f"{name} {'on' if getattr(Policy.current(), name) else 'off'}" for name in switches))
    if torch_mod is not None:
        info["torch"] = torch_mod.__version__
        info["torch_threads"] = torch_mod.get_num_threads()
        info["torch_mkldnn"] = torch_mod.backends.mkldnn.is_available()
    return info


def import_torch():
    """`(torch, torch_reference)` or `(None, reason)`."""
    try:
        import torch

        import torch_reference
    except Exception as exc:  # noqa: BLE001 - any import failure means "skip torch"
        return None, f"{type(exc).__name__}: {exc}"
    return torch, torch_reference


# ------------------------------------------------------------ Keras models


def set_policy(mode):
    import keras

    keras.mixed_precision.set_global_policy(POLICIES[mode])


def fresh_session():
    import keras

    keras.backend.clear_session()
    gc.collect()


def min_input_size(cfg):
    if cfg["kind"] == "official_v1":
        from keras_gald.models.official import min_input_size as official_min

        return official_min()
    return 16


def train_size(args, cfg):
    """`--train-size`, or the next multiple of 32 at or above the config's
    minimum input (the official LDv1 needs >= 111)."""
    if args.train_size < min_input_size(cfg):
        return 32 * math.ceil(min_input_size(cfg) / 32)
    return args.train_size


def build_keras(cfg, height, width):
    """Builds the Keras network of `cfg` for static `(height, width)` inputs
    under the current dtype policy."""
    from keras_gald.backbones import build_resnet
    from keras_gald.models import GALD, official_gald_v1

    shape = (height, width, 3)
    if cfg["kind"] == "backbone":
        return build_resnet(cfg["backbone"], output_stride=8, multi_grid=(1, 2, 4),
                            stem="deep", input_shape=shape)
    if cfg["kind"] == "gald":
        return GALD(cfg["backbone"], ga=cfg["ga"], ld=cfg["ld"], num_classes=NUM_CLASSES,
                    output_stride=8, input_shape=shape)
    return official_gald_v1(cfg["depth"], num_classes=NUM_CLASSES, input_shape=shape,
                            upsample_logits=True)


def build_torch(torch_ref, cfg):
    if cfg["kind"] == "backbone":
        return torch_ref.build_torch_model("backbone", backbone=cfg["backbone"])
    if cfg["kind"] == "gald":
        return torch_ref.build_torch_model("gald", backbone=cfg["backbone"], ga=cfg["ga"],
                                           ld=cfg["ld"], num_classes=NUM_CLASSES)
    return torch_ref.build_torch_model("official_v1", depth=cfg["depth"],
                                       num_classes=NUM_CLASSES, upsample_logits=True)


# ------------------------------------------------------------ FLOP counting


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


# --------------------------------------------------------------- 1. peak


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
                timing = time_calls(lambda: _sync_tf(fn(*inputs)), args.warmup, args.repeats)
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


# ------------------------------------------------------------ 2. forward


def _forward_jobs(args):
    jobs = [(name, CONFIGS[name], (args.size, args.size)) for name in args.configs]
    if args.large:
        jobs.append((LARGE_CONFIG, CONFIGS[LARGE_CONFIG], LARGE_SIZE))
    return jobs


def _record_params(results, name, keras_model, torch_model, torch_ref):
    """Records the Keras (and torch) parameter counts of config `name` once."""
    params = results.setdefault("params", {})
    if name in params:
        return
    if torch_model is not None:
        entry = torch_ref.compare_param_counts(keras_model, torch_model)
    else:
        entry = {"keras": keras_param_counts(keras_model), "torch": None, "match": None}
    params[name] = entry
    message = f"[params] {name}: keras {entry['keras']['total']:,}"
    if entry["torch"]:
        verdict = "match" if entry["match"] else "MISMATCH"
        message += f", torch {entry['torch']['total']:,} ({verdict})"
    log(message)


def keras_param_counts(model):
    """Same as torch_reference.keras_param_counts, for runs without torch."""
    count = lambda weights: int(sum(math.prod(w.shape) for w in weights))  # noqa: E731
    total = count(model.trainable_weights)
    inference = getattr(model, "inference_model", None)
    main = count(inference().trainable_weights) if inference else total
    return {"total": total, "aux": total - main, "main": main}


def _inference_fn(model, jit=False):
    """`tf.function` running the model's inference graph (XLA-compiled with `jit`)."""
    import tensorflow as tf

    return tf.function(lambda x: model(x, training=False), jit_compile=jit)


def _time_keras(args, row, keras_fn, torch_job, settle=0):
    """Times `keras_fn` into `row`. With PyTorch twins of the row's precision
    (`TORCH_TWINS`, in `torch_job`), they are timed in turns (`settle` untimed calls
    before each timed one) and the twins' stats are returned (`{torch mode: stats}`)."""
    twins = {} if torch_job is None else {
        m: fn for m, fn in torch_job["fns"].items() if m in TORCH_TWINS.get(row["mode"], ())}
    if not twins:
        row.update(time_calls(keras_fn, args.warmup, args.repeats))
        return {}
    stats, times = time_interleaved({"keras": keras_fn, **twins},
                                    args.warmup, args.repeats, settle=settle)
    row["settle_calls"] = settle
    row.update(stats.pop("keras"))
    reference = next(iter(twins))
    row["keras_over_torch_paired"] = paired_ratio(times["keras"], times[reference])
    log("    in turns with " + ", ".join(f"{m} {st['ms']:.1f} ms" for m, st in stats.items())
        + f"; Keras/PyTorch ({reference}) per round {row['keras_over_torch_paired']:.3f}")
    return stats


def measure_forward(args, torch, torch_ref, results):
    import tensorflow as tf

    rows = results.setdefault("forward", [])
    for name, cfg, (height, width) in _forward_jobs(args):
        images = tf.random.uniform((1, height, width, 3), seed=0)
        config_rows, models = [], {}
        torch_job = None
        if torch is not None:
            try:
                torch_job = _torch_forward_job(args, torch, torch_ref, cfg, height, width)
            except Exception as exc:  # noqa: BLE001
                log(f"    PyTorch model failed: {type(exc).__name__}: {exc}")

        def model_for(policy):
            # fp32 and fp32_xla share one fp32 build; bf16 needs its own (the
            # policy is read when layers are created).
            if policy not in models:
                set_policy(policy)
                try:
                    models[policy] = build_keras(cfg, height, width)
                finally:
                    set_policy("fp32")
            return models[policy]

        torch_stats = {}
        for mode in args.modes:
            log(f"[forward] {name} {mode} {height}x{width} ...")
            row = dict(config=name, mode=mode, input=f"1x{height}x{width}")
            try:
                fn = _inference_fn(model_for(mode if mode in ("bf16", "fp16") else "fp32"),
                                   jit=mode == "fp32_xla")

                def keras_call(fn=fn):
                    _sync_tf(fn(images))

                torch_stats.update(_time_keras(args, row, keras_call, torch_job))
                log(f"    {row['ms']:.1f} ms (first call {row['first_ms']:.0f} ms)")
            except Exception as exc:  # noqa: BLE001 - keep the run going, report it
                row["error"] = f"{type(exc).__name__}: {str(exc)[:300]}"
                log(f"    FAILED: {row['error']}")
            config_rows.append(row)

        flops = None
        try:
            # Counted on the fp32 graph traced without XLA (XLA compiles that same
            # graph) and on direct convolutions: under portable_ops() Winograd's
            # 16 batched matmuls (4/9 of the multiply-adds) stay out, so GFLOP/s
            # and % of peak are rates of the same work for every path.
            from keras_gald.layers import portable_ops

            with portable_ops():
                flops = count_flops(
                    _inference_fn(model_for("fp32")).get_concrete_function(images))
            flops["gflop_executed"] = count_flops(
                _inference_fn(model_for("fp32")).get_concrete_function(images))["gflop"]
            if "bf16" in args.modes:
                # bf16 takes Winograd only for wider kernels. Its taps-path
                # convs run as dense dilated Conv2D ops whose oneDNN kernel
                # skips the padding taps, so they are counted as the taps.
                from keras_gald.ops import Policy

                with Policy.current().replace(taps_direct_forward_bf16=False):
                    flops["gflop_executed_bf16"] = count_flops(
                        _inference_fn(model_for("bf16")).get_concrete_function(images))["gflop"]
            if name not in results.get("params", {}):
                torch_model = torch_job["model"] if torch_job is not None else None
                _record_params(results, name, model_for("fp32"), torch_model, torch_ref)
        except Exception as exc:  # noqa: BLE001
            log(f"    FLOP / parameter count failed: {type(exc).__name__}: {exc}")
        models.clear()
        fresh_session()
        for row in config_rows:
            _add_flops(row, flops, results)
            if "gflop_s" in row:
                share = row.get("pct_conv_peak")
                log(f"    {name} {row['mode']}: {row['gflop']:.2f} GFLOP, "
                    f"{row['gflop_s']:.1f} GFLOP/s"
                    + ("" if share is None else f", {share:.0f}% of conv peak"))
        rows.extend(config_rows)
        if torch_job is not None:
            _torch_forward_rows(args, torch_job, torch_stats, name, height, width, rows,
                                results, flops)
            attach_torch_ratios(rows, name, f"1x{height}x{width}")
            del torch_job
            gc.collect()
        save_json(args, results)


def _add_flops(row, flops, results):
    if not flops:
        return
    row["gflop"] = flops["gflop"]
    row["gflop_by_op"] = flops["by_op"]
    row["tf_profiler_gflop"] = flops["tf_profiler_gflop"]
    executed = "gflop_executed_bf16" if row.get("mode") == "bf16" else "gflop_executed"
    if executed in flops:
        row["gflop_executed"] = flops[executed]
    if flops["uncounted"]:
        row["flops_uncounted_ops"] = flops["uncounted"][:20]
    if "ms" in row:
        row["gflop_s"] = flops["gflop"] / (row["ms"] / 1e3)
        peak = conv_peak(results, "bf16" if row["mode"] == "bf16" else "fp32")
        if peak:
            row["pct_conv_peak"] = 100.0 * row["gflop_s"] / peak


def compile_torch(torch, model):
    """`torch.compile` with static shapes and a fresh Dynamo cache.

    Dynamo caches per code object (`Bottleneck.forward`, ...) across models:
    without a reset, a new input size marks dimensions dynamic (an Inductor
    error in LDv2's reductions) and after 8 recompilations it silently falls
    back to eager.
    """
    torch._dynamo.reset()
    return torch.compile(model, dynamic=False)


def _torch_forward_job(args, torch, torch_ref, cfg, height, width):
    """The PyTorch twin of `cfg`, ready to time: `{"fns": {mode: call}, "model",
    "torch_gflop"}` (eager channels-last, plus `torch.compile` with `--torch-compile`)."""
    torch.manual_seed(0)
    model = build_torch(torch_ref, cfg).eval().to(memory_format=torch.channels_last)
    images = torch.rand(1, 3, height, width).contiguous(memory_format=torch.channels_last)
    variants = [("torch_eager", model, False)]
    if args.torch_compile:
        variants.append(("torch_compile", compile_torch(torch, model), False))
    if "bf16" in args.modes:
        variants.append(("torch_eager_bf16", model, True))

    def make_call(net, bf16):
        def call():
            with torch.inference_mode(), torch.autocast("cpu", torch.bfloat16, enabled=bf16):
                net(images)

        return call

    return dict(fns={mode: make_call(net, bf16) for mode, net, bf16 in variants}, model=model,
                torch_gflop=torch_flops(torch, torch_ref, cfg, height, width))


def _torch_row(args, section, name, mode, size, call, stats):
    """A PyTorch row: its stats from the in-turns run, or `call` timed alone now."""
    row = dict(config=name, mode=mode, input=size)
    if mode in stats:
        row.update(stats[mode])
        return row
    log(f"[{section}] {name} {mode} {size} ...")
    try:
        row.update(time_calls(call, args.warmup, args.repeats))
        log(f"    {row['ms']:.1f} ms (first call {row['first_ms']:.0f} ms)")
    except Exception as exc:  # noqa: BLE001
        row["error"] = f"{type(exc).__name__}: {str(exc)[:300]}"
        log(f"    FAILED: {row['error']}")
    return row


def _torch_forward_rows(args, job, stats, name, height, width, rows, results, flops):
    """Rows for the PyTorch variants: timings from the interleaved fp32 run
    (`stats`), or timed alone here when fp32 was not among the modes."""
    for mode, call in job["fns"].items():
        row = _torch_row(args, "forward", name, mode, f"1x{height}x{width}", call, stats)
        row["torch_gflop"] = job["torch_gflop"]
        if flops and "ms" in row:
            # The Keras graph's dense FLOPs: the same network, so the same work.
            row["gflop"] = flops["gflop"]
            row["gflop_s"] = flops["gflop"] / (row["ms"] / 1e3)
            peak = conv_peak(results, "bf16" if mode.endswith("bf16") else "fp32")
            if peak:
                row["pct_conv_peak"] = 100.0 * row["gflop_s"] / peak
        rows.append(row)


def attach_torch_ratios(rows, name, size):
    """Adds `torch_eager_ms`, `keras_over_torch` (and the `torch_compile`
    equivalents) to the Keras rows of config `name` at input `size`: fp32 and
    fp32_xla rows against PyTorch fp32, bf16 rows against PyTorch under bf16
    autocast (`torch_reference` names the twin)."""
    same = [r for r in rows if r["config"] == name and r["input"] == size and "ms" in r]
    torch_ms = {r["mode"]: r["ms"] for r in same if r["mode"] not in MODES}
    for row in same:
        if row["mode"] not in MODES:
            continue
        twins = TORCH_TWINS.get("fp32" if row["mode"] == "fp32_xla" else row["mode"], ())
        for torch_mode, ms_key, ratio_key in (
            (twins[0], "torch_eager_ms", "keras_over_torch"),
            ("torch_compile", "torch_compile_ms", "keras_over_torch_compile"),
        ):
            if torch_mode in twins and torch_mode in torch_ms:
                row[ms_key] = torch_ms[torch_mode]
                row[ratio_key] = row["ms"] / torch_ms[torch_mode]
                if ms_key == "torch_eager_ms":
                    row["torch_reference"] = torch_mode


def ld_overhead(results):
    """(ASPP+LDv1)/ASPP and (ASPP+LDv2)/ASPP forward-time ratios per backbone, mode, input."""
    times = {(r["config"], r["mode"], r["input"]): r["ms"] for r in results.get("forward", [])
             if "ms" in r}
    rows = []
    for (config, mode, size), ms in sorted(times.items()):
        if not config.endswith("_aspp"):
            continue
        entry = dict(backbone=config[: -len("_aspp")], mode=mode, input=size, aspp_ms=ms)
        for ld in ("ldv1", "ldv2"):
            other = times.get((f"{config}_{ld}", mode, size))
            if other is not None:
                entry[f"aspp_{ld}_ms"] = other
                entry[f"{ld}_over_aspp"] = other / ms
        if len(entry) > 4:
            rows.append(entry)
    results["ld_overhead"] = rows


def measure_ld_turns(args, results):
    """LD overhead timed in turns: for every backbone of `--configs` with an
    `_aspp` configuration, the ASPP, ASPP+LDv1 and ASPP+LDv2 Keras networks are
    built side by side and called round-robin (`time_interleaved`), per mode,
    so the per-round ratios see the same machine state. `ld_overhead` divides
    medians of separately timed configurations, which a slow spell of a shared
    machine can move by more than the LD modules cost."""
    import tensorflow as tf

    rows = results.setdefault("ld_turns", [])
    height, width = args.size, args.size
    images = tf.random.uniform((1, height, width, 3), seed=0)
    backbones = sorted({name[: -len("_aspp")] for name in args.configs if name.endswith("_aspp")})
    for backbone in backbones:
        names = [f"{backbone}_aspp", f"{backbone}_aspp_ldv1", f"{backbone}_aspp_ldv2"]
        for mode in args.modes:
            if mode == "fp32_xla":
                continue
            log(f"[ld_turns] {backbone} {mode} {height}x{width}: ASPP, +LDv1, +LDv2 in turns ...")
            set_policy(mode)
            try:
                fns = {}
                for name in names:
                    fn = _inference_fn(build_keras(CONFIGS[name], height, width))
                    fns[name] = lambda fn=fn: _sync_tf(fn(images))
                stats, times = time_interleaved(fns, args.warmup, args.repeats)
            finally:
                set_policy("fp32")
                fns = None
                fresh_session()
            row = dict(backbone=backbone, mode=mode, input=f"1x{height}x{width}",
                       **{f"{name}_ms": stats[name]["ms"] for name in names},
                       **{f"{name}_all": stats[name]["ms_all"] for name in names})
            for ld, name in (("ldv1", names[1]), ("ldv2", names[2])):
                row[f"{ld}_over_aspp"] = stats[name]["ms"] / stats[names[0]]["ms"]
                row[f"{ld}_over_aspp_paired"] = paired_ratio(times[name], times[names[0]])
            log(f"    ASPP {row[names[0] + '_ms']:.1f} ms; LDv1/ASPP "
                f"{row['ldv1_over_aspp']:.3f} (per round {row['ldv1_over_aspp_paired']:.3f}), "
                f"LDv2/ASPP {row['ldv2_over_aspp']:.3f} "
                f"(per round {row['ldv2_over_aspp_paired']:.3f})")
            rows.append(row)
            save_json(args, results)


# --------------------------------------------------------------- 4. train


def _labels(rng, batch, height, width):
    labels = rng.integers(0, NUM_CLASSES, size=(batch, height, width)).astype(np.int32)
    labels[rng.random(labels.shape) < 0.05] = IGNORE_INDEX  # some ignored pixels
    return labels


def measure_train(args, torch, torch_ref, results):
    import tensorflow as tf

    from keras_gald.losses import SegmentationCrossEntropy
    from keras_gald.optimizers import SGD

    rows = results.setdefault("train", [])
    rng = np.random.default_rng(0)
    for name in args.train_configs:
        cfg = CONFIGS[name]
        size = train_size(args, cfg)
        batch = args.train_batch
        images_np = rng.random((batch, size, size, 3), dtype=np.float32)
        labels_np = _labels(rng, batch, size, size)
        images, labels = tf.constant(images_np), tf.constant(labels_np)
        torch_job, torch_stats = None, {}
        if torch is not None:
            try:
                torch_job = _torch_train_job(args, torch, torch_ref, cfg, images_np, labels_np)
            except Exception as exc:  # noqa: BLE001
                log(f"    PyTorch model failed: {type(exc).__name__}: {exc}")
        for mode in args.modes:
            log(f"[train] {name} {mode} {batch}x{size}x{size} ...")
            row = dict(config=name, mode=mode, input=f"{batch}x{size}x{size}")
            set_policy(mode)
            try:
                model = build_keras(cfg, size, size)
                model.compile(
                    optimizer=SGD(learning_rate=1e-3, momentum=0.9),
                    loss=SegmentationCrossEntropy(ignore_index=IGNORE_INDEX),
                    jit_compile=mode == "fp32_xla",
                )
                row["jit_compile"] = bool(model.jit_compile)
                row["aux_loss"] = getattr(model, "aux_loss", None) is not None

                def keras_step(model=model):
                    model.train_on_batch(images, labels)

                torch_stats.update(_time_keras(args, row, keras_step, torch_job, settle=1))
            except Exception as exc:  # noqa: BLE001
                row["error"] = f"{type(exc).__name__}: {str(exc)[:300]}"
                log(f"    FAILED: {row['error']}")
            finally:
                set_policy("fp32")
                model = None
                fresh_session()
            rows.append(row)
            if "ms" in row:
                log(f"    {row['ms']:.1f} ms/step (first call {row['first_ms']:.0f} ms)")
        if torch_job is not None:
            for mode, step in torch_job["fns"].items():
                rows.append(_torch_row(args, "train", name, mode, f"{batch}x{size}x{size}",
                                       step, torch_stats))
            attach_torch_ratios(rows, name, f"{batch}x{size}x{size}")
            del torch_job
            gc.collect()
        save_json(args, results)


def _torch_train_job(args, torch, torch_ref, cfg, images_np, labels_np):
    """`{"fns": {mode: one SGD step}}` for the PyTorch twin of `cfg` (eager
    channels-last, plus `torch.compile` with `--torch-compile`)."""
    torch.manual_seed(0)
    model = build_torch(torch_ref, cfg).train().to(memory_format=torch.channels_last)
    images = torch.from_numpy(images_np).permute(0, 3, 1, 2).contiguous(
        memory_format=torch.channels_last)
    labels = torch.from_numpy(labels_np).long()
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    variants = [("torch_eager", model, False)]
    if args.torch_compile:
        variants.append(("torch_compile", compile_torch(torch, model), False))
    if "bf16" in args.modes:
        variants.append(("torch_eager_bf16", model, True))

    def make_step(net, bf16):
        def step():
            optimizer.zero_grad(set_to_none=True)
            with torch.autocast("cpu", torch.bfloat16, enabled=bf16):
                outputs = net(images)
            loss = torch_ref.segmentation_loss(outputs, labels, IGNORE_INDEX, 0.4)
            loss.backward()
            optimizer.step()
            return loss.item()

        return step

    return dict(fns={mode: make_step(net, bf16) for mode, net, bf16 in variants}, model=model)


# ---------------------------------------------------------- 5. LDv2 block


def measure_ldv2_block(args, torch, torch_ref, results):
    import tensorflow as tf

    from keras_gald.layers.ldv2 import LDv2

    rows = []
    s = args.ldv2_size
    rng = np.random.default_rng(0)
    xg = tf.constant(rng.standard_normal((1, s, s, 256)), tf.float32)
    xl = tf.constant(rng.standard_normal((1, s, s, 256)), tf.float32)
    # "slices": the default (its primitives XLA-compiled inside the graph);
    # "slices_plain": jit_slices=False, plain TF ops (what exports trace).
    layers = {
        "slices": LDv2(impl="slices", name="ldv2_slices"),
        "slices_plain": LDv2(impl="slices", jit_slices=False, name="ldv2_slices_plain"),
        "patches": LDv2(impl="patches", name="ldv2_patches"),
    }
    for layer in layers.values():
        layer.build([tuple(xg.shape), tuple(xl.shape)])
        layer.set_weights(layers["slices"].get_weights())

    from ldv2_impl import layer_fns  # benchmarks/ is on sys.path when run as a script

    def make(layer, backward):
        forward, forward_backward = layer_fns(layer)
        return forward_backward if backward else forward

    for pass_name in ("fwd", "fwd+bwd"):
        for jit in (False, True):
            mode = "fp32_xla" if jit else "fp32"
            times = {}
            for impl, layer in layers.items():
                fn = tf.function(make(layer, pass_name == "fwd+bwd"), jit_compile=jit)
                log(f"[ldv2_block] {impl} {pass_name} {mode} 1x{s}x{s}x512 ...")
                try:
                    timing = time_calls(lambda: _sync_tf(fn(xg, xl)), args.warmup, args.repeats)
                except Exception as exc:  # noqa: BLE001
                    log(f"    FAILED: {type(exc).__name__}: {str(exc)[:200]}")
                    rows.append(dict(impl=impl, pass_=pass_name, mode=mode,
                                     error=str(exc)[:300]))
                    continue
                times[impl] = timing["ms"]
                rows.append(dict(impl=impl, pass_=pass_name, mode=mode,
                                 input=f"1x{s}x{s}x(256+256)", **timing))
                log(f"    {timing['ms']:.1f} ms")
            for other in ("patches", "slices_plain"):
                if "slices" in times and other in times:
                    rows.append(dict(impl=f"{other}/slices", pass_=pass_name, mode=mode,
                                     ratio=times[other] / times["slices"]))
    if torch is not None:
        torch.manual_seed(0)
        block = torch_ref.LDv2(256, 256).to(memory_format=torch.channels_last)
        a = torch.randn(1, 256, s, s).contiguous(memory_format=torch.channels_last)
        b = torch.randn(1, 256, s, s).contiguous(memory_format=torch.channels_last)

        def torch_fwd():
            with torch.inference_mode():
                block.eval()(a, b)

        def torch_fwd_bwd():
            a_ = a.detach().requires_grad_()
            b_ = b.detach().requires_grad_()
            block.train()(a_, b_).square().sum().backward()

        for pass_name, fn in (("fwd", torch_fwd), ("fwd+bwd", torch_fwd_bwd)):
            log(f"[ldv2_block] torch (slices) {pass_name} 1x{s}x{s}x512 ...")
            timing = time_calls(fn, args.warmup, args.repeats)
            rows.append(dict(impl="torch_slices", pass_=pass_name, mode="torch_eager",
                             input=f"1x{s}x{s}x(256+256)", **timing))
            log(f"    {timing['ms']:.1f} ms")
    results["ldv2_block"] = rows
    save_json(args, results)


# ------------------------------------------------------ 5b. dilated conv


def measure_dilated_conv(args, torch, results):
    """One 3x3 conv of ASPP's shape (C_in -> C_out, SAME) per rate, on the 1/8 map
    of a `--size` image (batch 1) and of a `--train-size` crop (batch
    `--train-batch`), forward and forward + backward (input and kernel
    gradients): `dilated_conv2d(method="conv")` (tf.nn.conv2d forward,
    hand-written gradient), `method="taps"` (one matmul per tap over the region
    it reads), `method="winograd"` (F(2x2, 3x3)) and, at rate 1, `tf`
    (tf.nn.conv2d with TF's own gradient; TF's CPU backprop kernels reject
    rates > 1); which one `method="auto"` picks in a graph; PyTorch's conv
    alongside."""
    import tensorflow as tf

    from keras_gald.layers.conv import auto_method, dilated_conv2d, taps_fraction

    c_in, c_out = (int(v) for v in args.dilated_channels.split(","))
    rows = []
    maps = [(1, args.size // 8), (args.train_batch, args.train_size // 8)]
    for batch, side in maps:
        x = tf.random.normal((batch, side, side, c_in), seed=0)
        k = tf.random.normal((3, 3, c_in, c_out), seed=1) * 0.02
        for rate in (1, 2, 12, 24, 36):
            fraction = taps_fraction(side, side, (3, 3), (rate, rate))
            label = f"{batch}x{side}x{side}x{c_in}->{c_out} r{rate}"
            convs = {
                "conv": lambda x, k, r=rate: dilated_conv2d(x, k, (r, r), "SAME", method="conv"),
                "taps": lambda x, k, r=rate: dilated_conv2d(x, k, (r, r), "SAME", method="taps"),
                "winograd": lambda x, k, r=rate: dilated_conv2d(x, k, (r, r), "SAME",
                                                                method="winograd"),
            }
            if rate == 1:
                convs["tf"] = lambda x, k: tf.nn.conv2d(x, k, 1, "SAME")
            for pass_name in ("fwd", "fwd+bwd"):
                times = {}
                for method, conv in convs.items():
                    def run(x, k, conv=conv, backward=pass_name == "fwd+bwd"):
                        if not backward:
                            return conv(x, k)
                        with tf.GradientTape() as tape:
                            tape.watch([x, k])
                            y = conv(x, k)
                            loss = tf.reduce_sum(y * y)
                        return tape.gradient(loss, [x, k])

                    fn = tf.function(run)
                    log(f"[dilated_conv] {method} {pass_name} {label} ...")
                    timing = time_calls(lambda: _sync_tf(fn(x, k)), args.warmup, args.repeats)
                    times[method] = timing["ms"]
                    log(f"    {timing['ms']:.1f} ms")
                if torch is not None:
                    conv_t = torch.nn.Conv2d(c_in, c_out, 3, padding=rate, dilation=rate,
                                             bias=False).to(memory_format=torch.channels_last)
                    xt = torch.randn(batch, c_in, side, side).contiguous(
                        memory_format=torch.channels_last)

                    def torch_call(backward=pass_name == "fwd+bwd"):
                        if not backward:
                            with torch.inference_mode():
                                conv_t(xt)
                            return
                        x_ = xt.detach().requires_grad_()
                        conv_t(x_).square().sum().backward()

                    times["torch_eager"] = time_calls(torch_call, args.warmup,
                                                      args.repeats)["ms"]
                    log(f"    torch {times['torch_eager']:.1f} ms")
                auto = auto_method(side, side, k.shape, (rate, rate), "SAME", tf.float32,
                                   batch=batch)
                rows.append(dict(pass_=pass_name, rate=rate, input=label, taps_fraction=fraction,
                                 ms=times, auto=auto,
                                 conv_over_taps=times["conv"] / times["taps"],
                                 winograd_over_conv=times["winograd"] / times["conv"],
                                 auto_over_torch=(times[auto] / times["torch_eager"]
                                                  if "torch_eager" in times else None)))
    results["dilated_conv"] = rows
    save_json(args, results)


# ------------------------------------------- 4b. training layers, 4c. optimizer


def _layer_kind(layer):
    import keras

    if isinstance(layer, keras.layers.BatchNormalization):
        return "batchnorm"
    k, s, d = tuple(layer.kernel_size), tuple(layer.strides), tuple(layer.dilation_rate)
    if max(s) > 1:
        return "strided conv"
    if k == (1, 1):
        return "1x1 conv"
    return f"{k[0]}x{k[1]} conv rate 1" if max(d) == 1 else f"{k[0]}x{k[1]} conv dilated"


def _train_layer_specs(model, batch):
    """`{key: spec}` for every conv / BN layer of `model` with a functional
    input (layers inside subclassed blocks are not reachable and are counted
    in `skipped`), deduplicated by class, config and input shape."""
    import keras

    from keras_gald.layers.conv import DilatedConv2D

    specs, skipped = {}, 0
    for layer in model._flatten_layers(include_self=False, recursive=True):
        if not isinstance(layer, (keras.layers.Conv2D, keras.layers.BatchNormalization)):
            continue
        if isinstance(layer, keras.layers.Conv2D) and not isinstance(layer, DilatedConv2D):
            continue
        try:
            shape = (batch, *layer.input.shape[1:])
        except (AttributeError, ValueError):
            skipped += 1
            continue
        config = {k: v for k, v in layer.get_config().items() if k != "name"}
        key = json.dumps([type(layer).__name__, shape, config], sort_keys=True, default=str)
        spec = specs.setdefault(key, dict(layer=layer, shape=shape, count=0,
                                          kind=_layer_kind(layer)))
        spec["count"] += 1
    return specs, skipped


def _torch_twin_layer(torch, layer, shape):
    import keras

    if isinstance(layer, keras.layers.BatchNormalization):
        return torch.nn.BatchNorm2d(shape[-1], eps=layer.epsilon, momentum=1 - layer.momentum)
    (kh, kw), (sh, sw), (dh, dw) = layer.kernel_size, layer.strides, layer.dilation_rate
    if layer.padding == "same":
        if max(sh, sw) > 1 or kh % 2 == 0 or kw % 2 == 0:
            return None  # TF's asymmetric "same" has no PyTorch twin
        padding = (dh * (kh - 1) // 2, dw * (kw - 1) // 2)
    else:
        padding = 0
    return torch.nn.Conv2d(shape[-1], layer.filters, (kh, kw), stride=(sh, sw), padding=padding,
                           dilation=(dh, dw), groups=layer.groups, bias=layer.use_bias)


def measure_train_layers(args, torch, results):
    """Forward + backward (input and weight gradients, loss sum(y^2)) of each
    distinct conv and BatchNorm layer of the training configurations at the
    training crop, in turns: the library's layer (`ours`: DilatedConv2D with
    its hand-written gradients, FusedBatchNormalization), the stock Keras
    layer of the same config (`keras`: Conv2D / BatchNormalization with TF's
    own gradients) and PyTorch's (`torch_eager`, channels-last, train mode).
    Totals per layer kind are weighted by how often each layer occurs."""
    import keras
    import tensorflow as tf

    rows, totals = [], []
    for name in args.train_configs:
        cfg = CONFIGS[name]
        size = train_size(args, cfg)
        model = build_keras(cfg, size, size)
        specs, skipped = _train_layer_specs(model, args.train_batch)
        log(f"[train_layers] {name} {args.train_batch}x{size}x{size}: {len(specs)} distinct "
            f"conv/BN layers ({skipped} inside subclassed blocks not timed)")
        sums = {}
        for spec in specs.values():
            layer, shape = spec["layer"], spec["shape"]
            config = layer.get_config()
            stock_cls = (keras.layers.BatchNormalization
                         if isinstance(layer, keras.layers.BatchNormalization)
                         else keras.layers.Conv2D)
            impls = {"ours": type(layer).from_config(config),
                     "keras": stock_cls.from_config(config)}
            x = tf.random.normal(shape, seed=0)
            fns = {}
            for impl, lyr in impls.items():
                lyr.build(shape)

                @tf.function
                def fwd_bwd(x, lyr=lyr):
                    with tf.GradientTape() as tape:
                        tape.watch(x)
                        y = lyr(x, training=True)
                        loss = tf.reduce_sum(y * y)
                    return tape.gradient(loss, [x, *lyr.trainable_weights])

                fns[impl] = lambda fn=fwd_bwd: _sync_tf(fn(x))
            twin = _torch_twin_layer(torch, layer, shape) if torch is not None else None
            if twin is not None:
                twin = twin.train().to(memory_format=torch.channels_last)
                xt = torch.randn(shape[0], shape[3], shape[1], shape[2]).contiguous(
                    memory_format=torch.channels_last).requires_grad_()

                def torch_call(twin=twin, xt=xt):
                    twin.zero_grad(set_to_none=True)
                    xt.grad = None
                    twin(xt).square().sum().backward()

                fns["torch_eager"] = torch_call
            # settle: PyTorch's OpenMP threads spin on after its call and slow
            # the next few milliseconds of TF work, which is all a layer takes.
            stats, _ = time_interleaved(fns, args.warmup, args.repeats, settle=1)
            ms = {impl: st["ms"] for impl, st in stats.items()}
            desc = (f"BN {shape}" if spec["kind"] == "batchnorm" else
                    f"conv {layer.kernel_size[0]}x{layer.kernel_size[1]} s{layer.strides[0]} "
                    f"r{layer.dilation_rate[0]} {layer.padding} {shape}->{layer.filters}")
            rows.append(dict(config=name, kind=spec["kind"], layer=desc, count=spec["count"],
                             ms=ms))
            kind_sums = sums.setdefault(spec["kind"], {"count": 0})
            kind_sums["count"] += spec["count"]
            for impl, t in ms.items():
                kind_sums[impl] = kind_sums.get(impl, 0.0) + spec["count"] * t
            log(f"    {desc} x{spec['count']}: " + "  ".join(f"{k} {v:.2f}" for k, v in ms.items()))
        for kind, kind_sums in sorted(sums.items()):
            totals.append(dict(config=name, kind=kind, **kind_sums))
        model = None
        fresh_session()
    results["train_layers"] = rows
    results["train_layers_totals"] = totals
    save_json(args, results)


def measure_optimizer(args, torch, torch_ref, results):
    """One SGD update (momentum 0.9) of every trainable weight of the training
    configurations, in turns: `keras.optimizers.SGD` (Keras' element-wise
    ops), `keras_gald.optimizers.SGD` (TF's fused ResourceApplyKerasMomentum,
    what the library's training uses) and `torch.optim.SGD` (its default
    multi-tensor update) on the PyTorch twin."""
    import keras
    import tensorflow as tf

    from keras_gald.optimizers import SGD

    rows = []
    for name in args.train_configs:
        cfg = CONFIGS[name]
        size = train_size(args, cfg)
        model = build_keras(cfg, size, size)
        weights = model.trainable_variables
        count = int(sum(np.prod(w.shape) for w in weights))
        grads = [tf.random.normal(w.shape, seed=i) * 1e-3 for i, w in enumerate(weights)]
        fns = {}
        for impl, cls in (("keras", keras.optimizers.SGD), ("ours", SGD)):
            optimizer = cls(learning_rate=1e-3, momentum=0.9)
            optimizer.build(weights)
            apply = tf.function(lambda opt=optimizer: opt.apply(grads, weights))
            fns[impl] = lambda apply=apply: apply()
        if torch is not None:
            twin = build_torch(torch_ref, cfg)
            params = [p for p in twin.parameters() if p.requires_grad]
            for p in params:
                p.grad = torch.randn_like(p) * 1e-3
            torch_opt = torch.optim.SGD(params, lr=1e-3, momentum=0.9)
            fns["torch_eager"] = torch_opt.step
        log(f"[optimizer] {name}: {count / 1e6:.1f} M weights in {len(weights)} variables ...")
        stats, _ = time_interleaved(fns, args.warmup, args.repeats, settle=1)
        ms = {impl: st["ms"] for impl, st in stats.items()}
        log("    " + "  ".join(f"{k} {v:.1f} ms" for k, v in ms.items()))
        rows.append(dict(config=name, weights=count, variables=len(weights), ms=ms))
        model = None
        fresh_session()
    results["optimizer"] = rows
    save_json(args, results)


# --------------------------------------------------------------- 6. memory


def memory_child(spec):
    """Runs in a subprocess (BFC allocator on): one block, one pass; prints a JSON line."""
    import tensorflow as tf

    if spec["threads"]:
        tf.config.threading.set_intra_op_parallelism_threads(spec["threads"])
    if spec.get("inter_op_threads"):
        tf.config.threading.set_inter_op_parallelism_threads(spec["inter_op_threads"])
    from keras_gald.layers.aspp import ASPP
    from keras_gald.layers.ldv2 import LDv2

    n, h, w, c = spec["shape"]
    x = tf.random.normal((n, h, w, c), seed=0)
    if spec["block"] == "aspp":
        layer = ASPP(filters=256, dilation_rates=(12, 24, 36), name="aspp")
        inputs = [x]
        layer.build(x.shape)
        call = lambda xs, training: layer(xs[0], training=training)  # noqa: E731
    else:
        parts = spec["block"].split("_")  # ldv2_slices, ldv2_slices_plain, ldv2_patches
        layer = LDv2(impl=parts[1], jit_slices=parts[-1] != "plain", name="ldv2")
        xg = tf.random.normal((n, h, w, 256), seed=1)  # X_g: the ASPP output
        inputs = [xg, x]
        layer.build([tuple(xg.shape), tuple(x.shape)])
        call = lambda xs, training: layer(list(xs), training=training)  # noqa: E731

    if spec["pass"] == "fwd":
        @tf.function
        def run(*xs):
            return tf.reduce_sum(call(xs, False))
    else:
        @tf.function
        def run(*xs):
            with tf.GradientTape() as tape:
                tape.watch(list(xs))
                loss = tf.reduce_sum(call(xs, True))
            grads = tape.gradient(loss, list(xs) + layer.trainable_weights)
            return [tf.reduce_sum(g) for g in grads]

    concrete = run.get_concrete_function(*inputs)  # trace outside the measurement
    tf.config.experimental.reset_memory_stats("CPU:0")
    before = tf.config.experimental.get_memory_info("CPU:0")["current"]
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    _sync_tf(concrete(*inputs))
    seconds = time.perf_counter() - start
    info = tf.config.experimental.get_memory_info("CPU:0")
    rss_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print("MEMORY_RESULT " + json.dumps({
        "tf_peak_mib": info["peak"] / 2**20,
        "tf_before_mib": before / 2**20,
        "extra_mib": (info["peak"] - before) / 2**20,
        "maxrss_mib": rss_after / 1024,  # ru_maxrss is in KiB on Linux
        "maxrss_growth_mib": (rss_after - rss_before) / 1024,
        "seconds": seconds,
    }), flush=True)


def measure_memory(args, results):
    rows = []
    h, w = args.memory_hw
    for block in args.memory_blocks:
        for pass_name in ("fwd", "fwd+bwd"):
            spec = dict(block=block, shape=[1, h, w, 2048], threads=args.threads,
                        **{"pass": pass_name})
            log(f"[memory] {block} {pass_name} 1x{h}x{w}x2048 (subprocess) ...")
            env = dict(os.environ, TF_CPU_ALLOCATOR_USE_BFC="true")
            row = dict(block=block, pass_=pass_name, input=f"1x{h}x{w}x2048")
            try:
                proc = subprocess.run(
                    [sys.executable, __file__, "--memory-child", json.dumps(spec)],
                    env=env, capture_output=True, text=True, timeout=args.memory_timeout,
                )
                line = next((ln for ln in proc.stdout.splitlines()
                             if ln.startswith("MEMORY_RESULT ")), None)
                if line is None:
                    row["error"] = f"exit {proc.returncode}: {proc.stderr.strip()[-300:]}"
                else:
                    row.update(json.loads(line[len("MEMORY_RESULT "):]))
            except subprocess.TimeoutExpired:
                row["error"] = f"timed out after {args.memory_timeout} s"
            rows.append(row)
            if "error" in row:
                log(f"    FAILED: {row['error']}")
            else:
                log(f"    peak +{row['extra_mib']:.0f} MiB over inputs/weights "
                    f"(TF allocator; maxrss growth {row['maxrss_growth_mib']:.0f} MiB), "
                    f"{row['seconds']:.1f} s")
    results["memory"] = rows
    save_json(args, results)


# -------------------------------------------------------------- reporting


def _fmt(value, spec):
    return "-" if value is None else format(value, spec)


def print_tables(results):
    peak = results.get("peak", [])
    if peak:
        log("\n== Peak (GFLOP/s, median) ==")
        log(f"{'framework':<10}{'op':<9}{'dtype':<6}{'shape':<24}{'ms':>9}{'GFLOP/s':>10}"
            f"{'best':>8}")
        for r in peak:
            log(f"{r['framework']:<10}{r['op']:<9}{r['dtype']:<6}{r['shape']:<24}"
                f"{_fmt(r.get('ms'), '.2f'):>9}{_fmt(r.get('gflop_s'), '.1f'):>10}"
                f"{_fmt(r.get('gflop_s_best'), '.1f'):>8}")

    params = results.get("params", {})
    if params:
        log("\n== Parameters (trainable; main = inference graph, aux = training-only head) ==")
        log(f"{'config':<20}{'keras main':>13}{'torch main':>13}{'keras aux':>11}"
            f"{'torch aux':>11}  match")
        for name, p in params.items():
            t = p["torch"] or {}
            log(f"{name:<20}{p['keras']['main']:>13,}{_fmt(t.get('main'), ','):>13}"
                f"{p['keras']['aux']:>11,}{_fmt(t.get('aux'), ','):>11}  "
                f"{'-' if p['match'] is None else ('yes' if p['match'] else 'NO')}")

    for section, title in (("forward", "Forward (batch 1)"), ("train", "Training step (SGD)")):
        rows = results.get(section, [])
        if not rows:
            continue
        log(f"\n== {title}: median ms; GFLOP = dense ops of one forward; % of the TF conv "
            "peak of the same dtype; torch = the PyTorch twin in the same precision (bf16: "
            "torch.autocast) ==")
        header = (f"{'config':<20}{'mode':<18}{'input':<14}{'ms':>10}{'first ms':>10}"
                  f"{'GFLOP':>9}{'GFLOP/s':>9}{'%peak':>7}{'torch ms':>10}{'K/T':>6}"
                  f"{'K/T rnd':>8}")
        log(header)
        log("-" * len(header))
        for r in rows:
            if "error" in r:
                log(f"{r['config']:<20}{r['mode']:<18}{r['input']:<14}  ERROR {r['error'][:60]}")
                continue
            log(f"{r['config']:<20}{r['mode']:<18}{r['input']:<14}{r['ms']:>10.1f}"
                f"{r['first_ms']:>10.0f}{_fmt(r.get('gflop'), '.2f'):>9}"
                f"{_fmt(r.get('gflop_s'), '.1f'):>9}{_fmt(r.get('pct_conv_peak'), '.0f'):>7}"
                f"{_fmt(r.get('torch_eager_ms'), '.1f'):>10}"
                f"{_fmt(r.get('keras_over_torch'), '.2f'):>6}"
                f"{_fmt(r.get('keras_over_torch_paired'), '.2f'):>8}")

    flops = [r for r in results.get("forward", []) if r.get("torch_gflop") is not None]
    if flops:
        log("\n== FLOP cross-check: Keras graph (dense ops) vs torch FlopCounterMode ==")
        keras_flops = {(r["config"], r["input"]): r.get("gflop") for r in results["forward"]
                       if r["mode"] in MODES}
        for r in flops:
            if r["mode"] != "torch_eager":
                continue
            k = keras_flops.get((r["config"], r["input"]))
            log(f"{r['config']:<20}{r['input']:<14} keras {_fmt(k, '.3f'):>9} GFLOP   "
                f"torch {r['torch_gflop']:.3f} GFLOP")

    overhead = results.get("ld_overhead", [])
    if overhead:
        log("\n== LD overhead (forward time ratio to ASPP alone) ==")
        for r in overhead:
            log(f"{r['backbone']:<6}{r['mode']:<14}{r['input']:<14} LDv1 "
                f"{_fmt(r.get('ldv1_over_aspp'), '.3f')}  LDv2 {_fmt(r.get('ldv2_over_aspp'), '.3f')}")

    turns = results.get("ld_turns", [])
    if turns:
        log("\n== LD overhead timed in turns (ratio of medians / median of per-round ratios) ==")
        for r in turns:
            log(f"{r['backbone']:<6}{r['mode']:<14}{r['input']:<14} ASPP "
                f"{r[r['backbone'] + '_aspp_ms']:.1f} ms  LDv1 {r['ldv1_over_aspp']:.3f} / "
                f"{r['ldv1_over_aspp_paired']:.3f}  LDv2 {r['ldv2_over_aspp']:.3f} / "
                f"{r['ldv2_over_aspp_paired']:.3f}")

    block = results.get("ldv2_block", [])
    if block:
        log("\n== LDv2 block alone (median ms; ratios over the default slices) ==")
        for r in block:
            if "ratio" in r:
                log(f"{'':<14}{r['pass_']:<9}{r['mode']:<10} {r['impl']} = {r['ratio']:.2f}x")
            elif "ms" in r:
                log(f"{r['impl']:<14}{r['pass_']:<9}{r['mode']:<12}{r['input']:<22}"
                    f"{r['ms']:>9.1f} ms")
            else:
                log(f"{r['impl']:<14}{r['pass_']:<9}{r['mode']:<12} ERROR {r['error'][:60]}")

    dilated = results.get("dilated_conv", [])
    if dilated:
        log("\n== 3x3 conv (SAME), median ms: conv = tf.nn.conv2d + hand-written gradient, "
            "taps = one matmul per tap, winograd = F(2x2,3x3), tf = TF's own gradient "
            "(rate 1); auto picks ==")
        for r in dilated:
            times = "  ".join(f"{m} {ms:8.1f}" for m, ms in r["ms"].items())
            log(f"{r['input']:<34}{r['pass_']:<9}taps share {r['taps_fraction']:.2f}  {times}"
                f"  conv/taps {r['conv_over_taps']:.2f}  "
                f"winograd/conv {_fmt(r.get('winograd_over_conv'), '.2f')}  auto={r['auto']} "
                f"auto/torch {_fmt(r['auto_over_torch'], '.2f')}")

    layer_totals = results.get("train_layers_totals", [])
    if layer_totals:
        log("\n== Training layers: forward + backward ms summed over each kind's layers "
            "(ours = library layer, keras = stock Keras layer / TF gradients) ==")
        for r in layer_totals:
            ours, stock, tch = r.get("ours"), r.get("keras"), r.get("torch_eager")
            log(f"{r['config']:<18}{r['kind']:<18} x{r['count']:<4}ours {ours:8.1f}  keras "
                f"{stock:8.1f}  torch {_fmt(tch, '8.1f')}  ours/keras {ours / stock:.2f}  "
                f"ours/torch {_fmt(ours / tch if tch else None, '.2f')}")

    for r in results.get("optimizer", []):
        ms = r["ms"]
        log(f"\n== SGD update, {r['config']} ({r['weights'] / 1e6:.1f} M weights): "
            + "  ".join(f"{k} {v:.1f} ms" for k, v in ms.items()) + " ==")

    memory = results.get("memory", [])
    if memory:
        log("\n== Peak memory (TF BFC allocator peak above inputs+weights; maxrss growth) ==")
        for r in memory:
            if "error" in r:
                log(f"{r['block']:<14}{r['pass_']:<9}{r['input']:<20} ERROR {r['error'][:80]}")
            else:
                log(f"{r['block']:<14}{r['pass_']:<9}{r['input']:<20}{r['extra_mib']:>9.0f} MiB"
                    f"{r['maxrss_growth_mib']:>9.0f} MiB rss")

    backbones = [r for r in results.get("forward", []) if r["config"].endswith("_backbone")
                 and r["mode"] in MODES and r.get("pct_conv_peak") is not None]
    for r in backbones:
        log(f"backbone {r['config']} {r['mode']} {r['input']}: {r['pct_conv_peak']:.0f}% of the "
            "conv peak (issue #8 target: >= 80% for fp32 at full size)")


def save_json(args, results):
    path = pathlib.Path(args.json)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=1, default=str))


# ------------------------------------------------------------------- main


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Configurations: " + ", ".join(CONFIGS),
    )
    parser.add_argument("--quick", action="store_true",
                        help="tiny sizes and the resnet_tiny configs: a smoke test")
    parser.add_argument("--configs", help="comma-separated names or default / quick / all")
    parser.add_argument("--train-configs",
                        help="configs of the training section (default: --configs without "
                        "backbones; --quick without --configs: tiny_aspp_ldv2)")
    parser.add_argument("--modes", default=",".join(MODES), help=f"subset of {','.join(MODES)}")
    parser.add_argument("--sections", default=",".join(SECTIONS),
                        help=f"subset of {','.join(SECTIONS)}")
    parser.add_argument("--repeats", type=int, help="timed calls per measurement (5; quick 2)")
    parser.add_argument("--warmup", type=int, help="untimed calls first (1)")
    parser.add_argument("--threads", type=int,
                        default=len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                        else os.cpu_count(),
                        help="TF intra-op threads and torch threads (default: usable CPUs)")
    parser.add_argument("--inter-op-threads", type=int, default=1,
                        help="TF inter-op threads (default 1, as PyTorch runs one op at a "
                             "time; 0 keeps TF's default of one per core, which on 2 cores "
                             "runs two ops of two threads each at once: R50 FCN "
                             "forward 2439 vs 2109 ms here)")
    parser.add_argument("--size", type=int, help="forward input side (512; quick 128)")
    parser.add_argument("--train-size", type=int, help="training crop side (128; quick 64)")
    parser.add_argument("--train-batch", type=int, help="training batch (2)")
    parser.add_argument("--ldv2-size", type=int, help="LDv2 block map side (64; quick 32)")
    parser.add_argument("--dilated-channels",
                        help="C_in,C_out of the dilated_conv section (2048,256; quick 256,64)")
    parser.add_argument("--memory-hw", help="H,W of the memory test's feature map "
                        "(128,256 = 1/8 of 1024x2048; quick 16,32)")
    parser.add_argument("--memory-blocks", default="aspp,ldv2_slices,ldv2_slices_plain",
                        help=f"subset of {','.join(MEMORY_BLOCKS)} (ldv2_patches needs GBs)")
    parser.add_argument("--memory-timeout", type=int, default=1800,
                        help="seconds per memory subprocess")
    parser.add_argument("--peak-matmul", type=int, help="matmul side (2048; quick 512)")
    parser.add_argument("--peak-conv", type=int, help="conv map side (128; quick 64)")
    parser.add_argument("--large", action="store_true",
                        help=f"also time {LARGE_CONFIG} forward at {LARGE_SIZE[0]}x{LARGE_SIZE[1]}")
    parser.add_argument("--torch-compile", action="store_true",
                        help="also time torch.compile'd PyTorch models")
    parser.add_argument("--no-torch", action="store_true", help="skip PyTorch")
    parser.add_argument("--omp-wait-policy", choices=("auto", "passive", "unchanged"),
                        default="auto",
                        help="OMP_WAIT_POLICY=PASSIVE for PyTorch's OpenMP threads, whose "
                        "spinning stalls badly when other processes share the cores; auto: "
                        "only when the machine is busy at start")
    parser.add_argument("--json", default="runs/speed.json", help="output JSON path")
    parser.add_argument("--memory-child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.memory_child:
        return args

    index = 1 if args.quick else 0
    for key, values in SETTINGS.items():
        if getattr(args, key) is None:
            setattr(args, key, values[index])
    args.memory_hw = tuple(int(v) for v in str(args.memory_hw).split(","))

    def expand(names):
        expanded = []
        for name in names.split(","):
            for n in CONFIG_SETS.get(name.strip(), [name.strip()]):
                if n not in CONFIGS:
                    parser.error(f"unknown config {n!r}; choose from {', '.join(CONFIGS)}")
                if n not in expanded:
                    expanded.append(n)
        return expanded

    configs_given = args.configs is not None
    args.configs = expand(args.configs or ("quick" if args.quick else "default"))
    if args.train_configs:
        args.train_configs = expand(args.train_configs)
    elif args.quick and not configs_given:
        args.train_configs = ["tiny_aspp_ldv2"]  # one training config keeps --quick short
    else:
        args.train_configs = [n for n in args.configs if CONFIGS[n]["kind"] != "backbone"]
    backbones = [n for n in args.train_configs if CONFIGS[n]["kind"] == "backbone"]
    if backbones:
        parser.error(f"--train-configs: backbones have no loss: {backbones}")
    args.modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    args.sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    args.memory_blocks = [b.strip() for b in args.memory_blocks.split(",") if b.strip()]
    for what, values, valid in (("mode", args.modes, MODES), ("section", args.sections, SECTIONS),
                                ("memory block", args.memory_blocks, MEMORY_BLOCKS)):
        bad = [v for v in values if v not in valid]
        if bad:
            parser.error(f"unknown {what} {bad}; choose from {', '.join(valid)}")
    return args


def main(argv=None):
    args = parse_args(argv)
    if args.memory_child:
        memory_child(json.loads(args.memory_child))
        return

    import tensorflow as tf

    tf.get_logger().setLevel("ERROR")  # the TF profiler's deprecation warnings
    try:
        # Must happen before TF's runtime starts; torch gets the same count.
        tf.config.threading.set_intra_op_parallelism_threads(args.threads)
        if args.inter_op_threads:
            tf.config.threading.set_inter_op_parallelism_threads(args.inter_op_threads)
    except RuntimeError as exc:
        log(f"note: could not set TF threads ({exc})")

    notes = []
    load, cpus = os.getloadavg()[0], len(os.sched_getaffinity(0)) if hasattr(
        os, "sched_getaffinity") else (os.cpu_count() or 1)
    busy = load > 0.5 * cpus
    if busy:
        message = (f"machine busy (load average {load:.1f} on {cpus} CPUs): every number is "
                   "slowed down, PyTorch's spinning OpenMP threads most of all")
        notes.append(message)
        log(f"WARNING: {message}")
    if "OMP_WAIT_POLICY" not in os.environ and (
        args.omp_wait_policy == "passive" or (args.omp_wait_policy == "auto" and busy)
    ):
        os.environ["OMP_WAIT_POLICY"] = "PASSIVE"  # read when torch loads its OpenMP runtime
        notes.append("OMP_WAIT_POLICY=PASSIVE set for PyTorch")
        log("note: OMP_WAIT_POLICY=PASSIVE for PyTorch's OpenMP threads "
            "(--omp-wait-policy unchanged to keep its default)")
    torch, torch_ref = (None, "disabled with --no-torch") if args.no_torch else import_torch()
    if torch is None:
        notes.append(f"PyTorch skipped: {torch_ref}")
        log(f"note: PyTorch comparison skipped ({torch_ref}); "
            "install it with `pip install torch==2.13.0`")
        torch_ref = None
    else:
        torch.set_num_threads(args.threads)

    results = {
        "machine": machine_info(args.threads, torch),
        "settings": {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(args).items()
                     if k != "memory_child"},
        "methods": {
            "timing": "median of `repeats` calls after `warmup` calls; first_ms = first call "
                      "(includes tracing / XLA compilation); outputs pulled to host each call",
            "flops": "dense ops (Conv2D, DepthwiseConv2dNative, MatMul, BatchMatMul, Einsum; 2 "
                     "FLOPs per multiply-add) of the traced fp32 inference graph with static "
                     "shapes, direct convolutions (traced under portable_ops()); "
                     "gflop_executed: the same for the graph of the row's mode as run "
                     "(Winograd F(2x2,3x3) convolutions do 4/9 of the multiply-adds; "
                     "bf16 rows: the bf16 graph, its taps-path convs counted as taps); "
                     "tf_profiler_gflop: TF profiler float ops of the same graph "
                     "(adds element-wise ops); torch_gflop: torch FlopCounterMode",
            "pct_conv_peak": "achieved GFLOP/s / TF conv3x3 256->256 GFLOP/s of the same dtype "
                             "(fp32 for fp32, fp32_xla and torch rows) measured in this run",
            "memory": "one subprocess per measurement with TF_CPU_ALLOCATOR_USE_BFC=true; "
                      "extra_mib = tf.config.experimental.get_memory_info('CPU:0') peak minus "
                      "the allocation before the call (inputs, weights); maxrss_growth_mib = "
                      "ru_maxrss growth over the call (all allocators)",
            "torch": "benchmarks/torch_reference.py, eager, channels_last, fp32, "
                     "inference_mode for forward; same thread count as TF",
        },
        "notes": notes,
    }
    log(f"machine: {results['machine']['cpu_model']}, {results['machine']['usable_cpus']} usable "
        f"CPUs, load {results['machine']['loadavg_start']}, TF {tf.__version__}, "
        f"threads {args.threads}" + (f", torch {torch.__version__}" if torch else ""))
    log(f"configs: {', '.join(args.configs)} | train: {', '.join(args.train_configs)} | "
        f"modes: {', '.join(args.modes)} | sections: {', '.join(args.sections)}")
    started = time.perf_counter()

    if "peak" in args.sections:
        measure_peak(args, torch, results)
        save_json(args, results)
    if "forward" in args.sections:
        measure_forward(args, torch, torch_ref, results)
        ld_overhead(results)
    if "ld_turns" in args.sections:
        measure_ld_turns(args, results)
    if "train" in args.sections:
        measure_train(args, torch, torch_ref, results)
    if "train_layers" in args.sections:
        measure_train_layers(args, torch, results)
    if "optimizer" in args.sections:
        measure_optimizer(args, torch, torch_ref, results)
    if "dilated_conv" in args.sections:
        measure_dilated_conv(args, torch, results)
    if "ldv2_block" in args.sections:
        measure_ldv2_block(args, torch, torch_ref, results)
    if "memory" in args.sections:
        measure_memory(args, results)

    results["machine"]["loadavg_end"] = list(os.getloadavg())
    results["wall_seconds"] = time.perf_counter() - started
    save_json(args, results)
    print_tables(results)
    log(f"\nwrote {args.json} ({results['wall_seconds']:.0f} s; load average at start "
        f"{results['machine']['loadavg_start'][0]:.1f}, end {results['machine']['loadavg_end'][0]:.1f}"
        " - other processes on these cores slow every number down)")


if __name__ == "__main__":
    main()
