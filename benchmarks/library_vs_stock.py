"""The library's fast paths against the stock ones they replace, in whole networks.

Each `--changes` entry names one optimisation of keras_gald (a
`keras_gald.ops.Policy` switch); for each case below one network is built
twice, once with that change switched on and once with it switched off while
its graph is traced (whatever this machine's default policy says, so the same
command shows whether a path wins on an AVX2 / oneDNN-off machine too),
and the two are timed in turns (`common.timing.time_interleaved`: one call of each per
round), so a slow spell of a shared machine hits both.

Changes:
    batchnorm     `FusedBatchNormalization` (TF's fused kernel for training and
                  inference, bfloat16/float16 straight in) against Keras'
                  `BatchNormalization.call` (moments and the affine transform op
                  by op, in float32). Layers inside subclassed blocks (GALDBlockV1,
                  LDv1) are switched too: the method is swapped on the class.
    conv_slices   float32 k x k convolutions with >= 1024 input or output
                  channels run over 512-channel slices
                  (`keras_gald.ops.conv.conv2d_sliced`) against one whole
                  `tf.nn.conv2d`.
    winograd      float32 3x3 "SAME" convolutions with >= 256 x 256 weights
                  per tap by Winograd F(2x2, 3x3) (`keras_gald.ops.winograd`)
                  against the path `dilated_conv2d` takes without it (one
                  `tf.nn.conv2d`, channel slices, or one matmul per tap).
    winograd_bf16 the same for bfloat16 convolutions with >= 512 x 512 weights
                  per tap (`Policy.winograd_min_weights_bf16`, `winograd_cost_bf16`).
    taps_forward_bf16
                  bfloat16 convolutions on the taps path (large rates on small
                  maps) run their forward as one `tf.nn.conv2d(dilations=...)`
                  (`Policy.taps_direct_forward_bf16`) against one matmul per tap.
    ldv2_fold     LDv2 (impl="slices") applies its output 1x1 conv before the
                  neighbourhood sum, folded into the value projection
                  (`LDv2.folds_output_projection`), against Eq. (8) literally
                  (values projected to `value_channels`, summed, then projected).

Cases (`--cases`, comma-separated):
    forward:<config>:<mode>   batch 1 at `--size` (512), inference graph
    train:<config>:<mode>     one SGD step at 2 x `--train-size` (128)
    conv:<N>x<H>x<W>x<C_in>x<C_out>:<rate>:<forward|train>[:<method>][:<mode>]
                              one 3x3 "SAME" `dilated_conv2d` (train: forward +
                              input and kernel gradients); `<method>` (default
                              auto) forces the library side's
                              `dilated_conv2d(method=...)`; `<mode>` fp32
                              (default) or bf16 (input and kernel cast to
                              bfloat16, as Keras' mixed_bfloat16 runs it)
    ldv2:<N>x<H>x<W>x<C_g>x<C_l>:<forward|train>:<mode>
                              the default `LDv2` layer alone on X_g, X_l
                              (train: forward + gradients of the inputs and
                              weights); 1x64x64x256x2048 is its place in the
                              R50 + ASPP + LDv2 network at 512 x 512
with `<config>` from `benchmarks/common/models.py` (`r50_backbone`, `official_v1_r50`,
`r50_aspp_ldv2`, ...) and `<mode>` `fp32` or `bf16` (`mixed_bfloat16`).

Usage (from the repository root):
    python benchmarks/library_vs_stock.py --changes batchnorm --json benchmarks/results/batchnorm_cpu.json
    python benchmarks/library_vs_stock.py --changes conv_slices --cases forward:official_v1_r50:fp32
    python benchmarks/library_vs_stock.py --changes winograd --cases conv:1x64x64x2304x512:1:forward
    python benchmarks/library_vs_stock.py --changes ldv2_fold --cases forward:r50_aspp_ldv2:fp32

Prints one row per change and case: library ms, stock ms, their ratio (of the
medians) and the median of the per-round ratios; writes JSON.
"""

import argparse
import contextlib
import os
import pathlib
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
BENCH_DIR = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR.parent))
sys.path.insert(0, str(BENCH_DIR))

import numpy as np  # noqa: E402

from common.machine import machine_info  # noqa: E402
from common.models import (CONFIGS, IGNORE_INDEX, build_keras, fresh_session,  # noqa: E402
                           inference_fn, ldv2_layer_fns, random_labels, set_policy, train_size)
from common.report import log, write_json  # noqa: E402
from common.timing import paired_ratio, sync_tf, time_interleaved  # noqa: E402

DEFAULT_CHANGES = "batchnorm,conv_slices,winograd,winograd_bf16,taps_forward_bf16,ldv2_fold"
DEFAULT_CASES = (
    "forward:r50_backbone:fp32,forward:r50_backbone:bf16,"
    "forward:official_v1_r50:fp32,forward:official_v1_r50:bf16,"
    "train:official_v1_r50:fp32,train:official_v1_r50:bf16,"
    "train:r50_aspp_ldv2:fp32,train:r50_aspp_ldv2:bf16"
)


@contextlib.contextmanager
def _swapped(owner, attribute, value):
    saved = getattr(owner, attribute)
    setattr(owner, attribute, value)
    try:
        yield
    finally:
        setattr(owner, attribute, saved)


_POLICY_FIELDS = {"conv_slices": "conv_slices", "winograd": "winograd",
                  "winograd_bf16": "winograd_bf16",
                  "taps_forward_bf16": "taps_direct_forward_bf16", "ldv2_fold": "ldv2_fold"}


def change_path(change, on):
    """A context in which graphs traced run with (`on=True`) or without `change`,
    whatever this machine's default `keras_gald.ops.Policy` says."""
    import keras

    from keras_gald.layers import norm
    from keras_gald.ops import Policy

    if change == "batchnorm":
        if on:
            return contextlib.nullcontext()
        return _swapped(norm.FusedBatchNormalization, "call", keras.layers.BatchNormalization.call)
    if change in _POLICY_FIELDS:
        return Policy.current().replace(**{_POLICY_FIELDS[change]: on})
    raise SystemExit(f"unknown change {change!r}; known: {DEFAULT_CHANGES}")


def stock_path(change):
    """A context in which graphs traced run without `change`."""
    return change_path(change, on=False)


_CONV_METHODS = ("auto", "conv", "taps", "winograd")


def parse_case(text):
    parts = text.split(":")
    if parts[0] == "conv":
        try:
            shape = tuple(int(v) for v in parts[1].split("x"))
            if int(parts[2]) < 1 or len(shape) != 5 or parts[3] not in ("forward", "train"):
                raise ValueError
            extra = parts[4:]
            method = extra.pop(0) if extra and extra[0] in _CONV_METHODS else "auto"
            mode = extra.pop(0) if extra and extra[0] in ("fp32", "bf16") else "fp32"
            if extra:
                raise ValueError
        except (IndexError, ValueError):
            raise SystemExit(f"bad case {text!r}: expected conv:NxHxWxCinxCout:<rate>:"
                             "forward|train[:auto|conv|taps|winograd][:fp32|bf16]")
        return parts[:4] + [method, mode]
    if parts[0] == "ldv2":
        try:
            shape = tuple(int(v) for v in parts[1].split("x"))
            if len(shape) != 5 or len(parts) != 4 or parts[2] not in ("forward", "train") \
                    or parts[3] not in ("fp32", "bf16"):
                raise ValueError
        except (IndexError, ValueError):
            raise SystemExit(f"bad case {text!r}: expected "
                             "ldv2:NxHxWxC_gxC_l:forward|train:fp32|bf16")
        return parts
    if len(parts) != 3 or parts[0] not in ("forward", "train") or parts[2] not in ("fp32", "bf16"):
        raise SystemExit(f"bad case {text!r}: expected forward|train:<config>:fp32|bf16")
    if parts[1] not in CONFIGS:
        raise SystemExit(f"unknown config {parts[1]!r}; known: {', '.join(CONFIGS)}")
    return parts


def build_call(kind, cfg, args):
    """A zero-argument callable running one forward / one training step of a
    freshly built network (blocking until its result is ready)."""
    import tensorflow as tf

    from keras_gald.losses import SegmentationCrossEntropy
    from keras_gald.optimizers import SGD

    rng = np.random.default_rng(0)
    if kind == "forward":
        size = args.size
        model = build_keras(cfg, size, size)
        fn = inference_fn(model)
        x = tf.constant(rng.random((1, size, size, 3), dtype=np.float32))
        return lambda: sync_tf(fn(x))
    size = train_size(args, cfg)
    model = build_keras(cfg, size, size)
    model.compile(optimizer=SGD(learning_rate=1e-3, momentum=0.9),
                  loss=SegmentationCrossEntropy(ignore_index=IGNORE_INDEX))
    images = tf.constant(rng.random((args.train_batch, size, size, 3), dtype=np.float32))
    labels = tf.constant(random_labels(rng, args.train_batch, size, size))
    return lambda: model.train_on_batch(images, labels)


def build_conv_call(shape, rate, kind, method="auto", mode="fp32"):
    """One 3x3 "SAME" `dilated_conv2d` (and its gradients for "train") in a
    freshly traced graph; `mode="bf16"` casts input and kernel to bfloat16."""
    import tensorflow as tf

    from keras_gald.ops.conv import dilated_conv2d

    n, h, w, c_in, c_out = shape
    dtype = tf.bfloat16 if mode == "bf16" else tf.float32
    rng = np.random.default_rng(0)
    x = tf.cast(rng.standard_normal((n, h, w, c_in), dtype=np.float32), dtype)
    kernel = tf.constant(rng.standard_normal((3, 3, c_in, c_out), dtype=np.float32) * 0.02)

    @tf.function
    def step():
        with tf.GradientTape() as tape:
            tape.watch([x, kernel])
            y = dilated_conv2d(x, tf.cast(kernel, dtype), (rate, rate), "SAME", method=method)
            loss = tf.reduce_sum(tf.square(tf.cast(y, tf.float32)))
        return [y] if kind == "forward" else tape.gradient(loss, [x, kernel])

    return lambda: [t.numpy() for t in step()]


def build_ldv2_call(shape, kind):
    """The default `LDv2` on random X_g, X_l in a freshly traced graph."""
    import tensorflow as tf

    from keras_gald.layers.ldv2 import LDv2

    n, h, w, c_g, c_l = shape
    rng = np.random.default_rng(0)
    xg = tf.constant(rng.standard_normal((n, h, w, c_g), dtype=np.float32))
    xl = tf.constant(rng.standard_normal((n, h, w, c_l), dtype=np.float32))
    layer = LDv2()
    layer([xg, xl])
    layer.set_weights([np.random.default_rng(1).standard_normal(v.shape).astype("float32") * 0.02
                       if "variance" not in v.path else np.ones(v.shape, "float32")
                       for v in layer.weights])
    forward, forward_backward = ldv2_layer_fns(layer)
    fn = tf.function(forward if kind == "forward" else forward_backward)
    return lambda: sync_tf(fn(xg, xl))


def run_case(args, change, case):
    parts = parse_case(case)
    if parts[0] == "conv":
        _, shape, rate, kind, forced, mode = parts
        shape, rate = tuple(int(v) for v in shape.split("x")), int(rate)
        config, settle = parts[1], 0
        build_ours = lambda: build_conv_call(shape, rate, kind, forced, mode)  # noqa: E731
        build_stock = lambda: build_conv_call(shape, rate, kind, "auto", mode)  # noqa: E731
    elif parts[0] == "ldv2":
        _, shape, kind, mode = parts
        shape, config, settle = tuple(int(v) for v in shape.split("x")), parts[1], 0
        build_ours = build_stock = lambda: build_ldv2_call(shape, kind)  # noqa: E731
    else:
        kind, config, mode = parts
        cfg = CONFIGS[config]
        build_ours = build_stock = lambda: build_call(kind, cfg, args)  # noqa: E731
        settle = 1 if kind == "train" else 0
    set_policy(mode)
    try:
        with change_path(change, on=True):
            ours = build_ours()
            ours()  # traced with the change, whatever this machine's default
        with stock_path(change):
            stock = build_stock()
            stock()  # traced (and cached) without the change
        stats, times = time_interleaved({"keras_gald": ours, "stock": stock},
                                              args.warmup, args.repeats, settle=settle)
    finally:
        set_policy("fp32")
        fresh_session()
    row = dict(change=change, case=case, kind=kind, config=config, mode=mode,
               keras_gald_ms=stats["keras_gald"]["ms"], stock_ms=stats["stock"]["ms"],
               keras_gald_all=stats["keras_gald"]["ms_all"], stock_all=stats["stock"]["ms_all"])
    row["ratio"] = row["keras_gald_ms"] / row["stock_ms"]
    row["ratio_per_round"] = paired_ratio(times["keras_gald"], times["stock"])
    log(f"[{change} {case}] keras_gald {row['keras_gald_ms']:.1f} ms, stock "
              f"{row['stock_ms']:.1f} ms, ratio {row['ratio']:.3f} "
              f"(per round {row['ratio_per_round']:.3f})")
    return row


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--changes", default=DEFAULT_CHANGES)
    parser.add_argument("--cases", default=DEFAULT_CASES)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--train-size", type=int, default=128)
    parser.add_argument("--train-batch", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--json", default="runs/library_vs_stock.json")
    args = parser.parse_args(argv)
    cases = [c for c in args.cases.split(",") if c]
    changes = [c for c in args.changes.split(",") if c]
    for case in cases:
        parse_case(case)
    for change in changes:
        stock_path(change)

    import tensorflow as tf

    # One op at a time, as in speed.py (TF's default ran two 2-thread ops at once).
    tf.config.threading.set_inter_op_parallelism_threads(1)
    results = dict(machine=machine_info(
        tf.config.threading.get_intra_op_parallelism_threads(), None),
                   settings=vars(args), rows=[])
    for change in changes:
        for case in cases:
            results["rows"].append(run_case(args, change, case))
            write_json(args.json, results)
    print(f"\n{'change':<13}{'case':<38}{'keras_gald ms':>14}{'stock ms':>10}{'ratio':>8}"
          f"{'per round':>11}")
    for row in results["rows"]:
        print(f"{row['change']:<13}{row['case']:<38}{row['keras_gald_ms']:14.1f}"
              f"{row['stock_ms']:10.1f}{row['ratio']:8.3f}{row['ratio_per_round']:11.3f}")
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
