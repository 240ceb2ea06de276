"""Speed of keras_gald on this machine, against its own peak and PyTorch.

Runs the `--sections` in this order, each described in its module:

- `peak` (`speed_sections/peak.py`): matmul and 3x3 conv throughput, TF and PyTorch.
- `forward`, `ld_turns` (`speed_sections/forward.py`): one image per
  configuration and mode with FLOPs and % of peak; LD overhead ratios.
- `train`, `train_layers`, `optimizer` (`speed_sections/train.py`): one SGD
  step; its conv / BN layers alone; the weight update alone.
- `dilated_conv`, `ldv2_block` (`speed_sections/kernels.py`): one dilated 3x3
  conv by each method; the LDv2 layer alone.
- `memory` (`common/memory.py`): peak memory of the ASPP head and the LDv2
  block on the 1/8 map of a 1024x2048 image, each in its own process.
- `jax` (`speed_sections/jax_backend.py`, what `--backend jax` runs): forward and
  training step of `--jax-configs` on TensorFlow, on JAX (in a child process with
  `KERAS_BACKEND=jax`) and on PyTorch, timed in turns.

Timings are medians of `--repeats` calls after `--warmup` calls (the first
call, which includes tracing / XLA compilation, is `first_ms`); Keras and
PyTorch are timed in turns (`common/timing.py`). PyTorch
(`benchmarks/torch_reference.py`) is skipped with a note when `import torch`
fails. TF runs one op at a time (`--inter-op-threads 1`), as PyTorch does;
PyTorch uses as many threads as TF (`--threads`). On a machine shared with
other jobs PyTorch's spinning OpenMP threads can run many times slower than on
an idle one: `--omp-wait-policy auto` (default) sets OMP_WAIT_POLICY=PASSIVE
when the load average at start exceeds half the usable CPUs, `passive` always,
`unchanged` never; the JSON records it (`machine.OMP_WAIT_POLICY`).

Usage (from the repository root; `pip install -e .[bench]` for PyTorch):
    python benchmarks/speed.py --quick                  # smoke test, ~3-5 min on 2 cores
    python benchmarks/speed.py                          # default set
    python benchmarks/speed.py --configs r50_aspp,r50_aspp_ldv2 --modes fp32,fp32_xla
    python benchmarks/speed.py --sections peak,ldv2_block,memory --repeats 10
    python benchmarks/speed.py --large --torch-compile --json runs/speed_full.json
    python benchmarks/speed.py --backend jax            # R50+ASPP+LDv2, official v1 R50
    python benchmarks/speed.py --backend jax --quick    # smoke test (tiny_aspp_ldv2)

The default set is long on a small CPU (R50 ASPP+LDv2 at 512x512 is ~460
GFLOP per forward; hours on 2 cores): trim it with `--configs`, `--modes`,
`--sections`, `--repeats`. Results are written to the JSON after every
configuration, so an interrupted run keeps what it measured.

Configurations (`--configs`, comma-separated; also `default`, `quick`, `all`)
are listed in `common/models.py`; `--large` adds R101 ASPP+LDv2 at 1024x2048
to the forward section.
"""

import argparse
import os
import pathlib
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
BENCH_DIR = pathlib.Path(__file__).resolve().parent
# Runnable from a checkout without `pip install -e .`; `common` and torch_reference sit here.
sys.path.insert(0, str(BENCH_DIR.parent))
sys.path.insert(0, str(BENCH_DIR))

from common.machine import check_load, machine_info, set_tf_threads, usable_cpus  # noqa: E402
from common.memory import MEMORY_BLOCKS, measure_memory  # noqa: E402
from common.models import (CONFIG_SETS, CONFIGS, LARGE_CONFIG, LARGE_SIZE, MODES,  # noqa: E402
                           import_torch)
from common.report import log, write_json  # noqa: E402
from speed_sections.forward import ld_overhead, measure_forward, measure_ld_turns  # noqa: E402
from speed_sections.jax_backend import measure_jax  # noqa: E402
from speed_sections.kernels import measure_dilated_conv, measure_ldv2_block  # noqa: E402
from speed_sections.peak import measure_peak  # noqa: E402
from speed_sections.tables import print_tables  # noqa: E402
from speed_sections.train import (measure_optimizer, measure_train,  # noqa: E402
                                  measure_train_layers)

SECTIONS = ("peak", "forward", "ld_turns", "train", "train_layers", "optimizer", "ldv2_block",
            "dilated_conv", "memory")
# Run by `--backend jax` (or named in --sections); not part of the default TF set.
EXTRA_SECTIONS = ("jax",)
JAX_CONFIGS = ("r50_aspp_ldv2,official_v1_r50", "tiny_aspp_ldv2")
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
    parser.add_argument("--sections",
                        help=f"subset of {','.join(SECTIONS + EXTRA_SECTIONS)} (default: all "
                        "but jax; with --backend jax: jax)")
    parser.add_argument("--backend", choices=("tensorflow", "jax"), default="tensorflow",
                        help="jax: time --jax-configs on JAX (child process), TensorFlow "
                        "and PyTorch in turns (the `jax` section)")
    parser.add_argument("--jax-configs",
                        help=f"configs of the jax section ({JAX_CONFIGS[0]}; quick {JAX_CONFIGS[1]})")
    parser.add_argument("--repeats", type=int, help="timed calls per measurement (5; quick 2)")
    parser.add_argument("--warmup", type=int, help="untimed calls first (1)")
    parser.add_argument("--threads", type=int,
                        default=usable_cpus(),
                        help="TF intra-op threads and torch threads (default: usable CPUs)")
    parser.add_argument("--inter-op-threads", type=int, default=1,
                        help="TF inter-op threads (default 1, as PyTorch runs one op at a "
                             "time; 0 keeps TF's default of one per core, which on 2 cores "
                             "runs two ops of two threads each at once, which is slower: "
                             "compare the two with --inter-op-threads 0)")
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
    args = parser.parse_args(argv)

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
    if args.sections is None:
        args.sections = "jax" if args.backend == "jax" else ",".join(SECTIONS)
    args.sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    if args.backend == "jax" and "jax" not in args.sections:
        args.sections.append("jax")
    args.jax_configs = expand(args.jax_configs or JAX_CONFIGS[index])
    bad = [n for n in args.jax_configs if CONFIGS[n]["kind"] == "backbone"]
    if bad:
        parser.error(f"--jax-configs: backbones have no loss: {bad}")
    args.memory_blocks = [b.strip() for b in args.memory_blocks.split(",") if b.strip()]
    for what, values, valid in (("mode", args.modes, MODES),
                                ("section", args.sections, SECTIONS + EXTRA_SECTIONS),
                                ("memory block", args.memory_blocks, MEMORY_BLOCKS)):
        bad = [v for v in values if v not in valid]
        if bad:
            parser.error(f"unknown {what} {bad}; choose from {', '.join(valid)}")
    return args


def main(argv=None):
    args = parse_args(argv)

    import tensorflow as tf

    tf.get_logger().setLevel("ERROR")  # the TF profiler's deprecation warnings
    set_tf_threads(args.threads, args.inter_op_threads)  # torch gets the same count
    notes = check_load(args.omp_wait_policy)  # before torch is imported
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
        "settings": {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(args).items()},
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
        write_json(args.json, results)
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
    if "jax" in args.sections:
        measure_jax(args, torch, torch_ref, results)

    results["machine"]["loadavg_end"] = list(os.getloadavg())
    results["wall_seconds"] = time.perf_counter() - started
    write_json(args.json, results)
    print_tables(results)
    log(f"\nwrote {args.json} ({results['wall_seconds']:.0f} s; load average at start "
        f"{results['machine']['loadavg_start'][0]:.1f}, end {results['machine']['loadavg_end'][0]:.1f}"
        " - other processes on these cores slow every number down)")


if __name__ == "__main__":
    main()
