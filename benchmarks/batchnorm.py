"""The library's BatchNorm against Keras' own, in whole networks (issue #8).

`keras_gald.layers.FusedBatchNormalization` runs TF's fused kernel for
training and inference and hands bfloat16/float16 inputs to it directly;
Keras' `BatchNormalization` (the reference here) computes moments and the
affine transform op by op, in float32. For each case below one network is
built twice, once with every BN on the library's path and once with the same
layers on Keras' `BatchNormalization.call` (the graph is traced with that
method swapped in), and the two are timed in turns (`speed.time_interleaved`:
one call of each per round), so a slow spell of a shared machine hits both.

Cases (`--cases`, comma-separated):
    forward:<config>:<mode>   batch 1 at `--size` (512), inference graph
    train:<config>:<mode>     one SGD step at 2 x `--train-size` (128)
with `<config>` from `benchmarks/speed.py` (`r50_backbone`, `official_v1_r50`,
`r50_aspp_ldv2`, ...) and `<mode>` `fp32` or `bf16` (`mixed_bfloat16`).
Layers inside subclassed blocks (GALDBlockV1, LDv1) are swapped too: the
method is swapped on the class.

Usage (from the repository root):
    python benchmarks/batchnorm.py --json benchmarks/results/batchnorm_cpu.json
    python benchmarks/batchnorm.py --cases forward:r50_backbone:bf16 --repeats 3

Prints one row per case: library ms, Keras ms, their ratio (median of the
medians) and the median of the per-round ratios; writes JSON.
"""

import argparse
import contextlib
import json
import pathlib
import platform
import sys

BENCH_DIR = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR.parent))
sys.path.insert(0, str(BENCH_DIR))

import numpy as np  # noqa: E402

import speed  # noqa: E402

DEFAULT_CASES = (
    "forward:r50_backbone:fp32,forward:r50_backbone:bf16,"
    "forward:official_v1_r50:fp32,forward:official_v1_r50:bf16,"
    "train:official_v1_r50:fp32,train:official_v1_r50:bf16,"
    "train:r50_aspp_ldv2:fp32,train:r50_aspp_ldv2:bf16"
)


@contextlib.contextmanager
def keras_batchnorm():
    """Inside: every `FusedBatchNormalization` call runs Keras' own `call`."""
    import keras

    from keras_gald.layers.norm import FusedBatchNormalization

    saved = FusedBatchNormalization.call
    FusedBatchNormalization.call = keras.layers.BatchNormalization.call
    try:
        yield
    finally:
        FusedBatchNormalization.call = saved


def parse_case(text):
    parts = text.split(":")
    if len(parts) != 3 or parts[0] not in ("forward", "train") or parts[2] not in ("fp32", "bf16"):
        raise SystemExit(f"bad case {text!r}: expected forward|train:<config>:fp32|bf16")
    if parts[1] not in speed.CONFIGS:
        raise SystemExit(f"unknown config {parts[1]!r}; known: {', '.join(speed.CONFIGS)}")
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
        model = speed.build_keras(cfg, size, size)
        fn = speed._inference_fn(model)
        x = tf.constant(rng.random((1, size, size, 3), dtype=np.float32))
        return lambda: speed._sync_tf(fn(x))
    size = speed.train_size(args, cfg)
    model = speed.build_keras(cfg, size, size)
    model.compile(optimizer=SGD(learning_rate=1e-3, momentum=0.9),
                  loss=SegmentationCrossEntropy(ignore_index=speed.IGNORE_INDEX))
    images = tf.constant(rng.random((args.train_batch, size, size, 3), dtype=np.float32))
    labels = tf.constant(speed._labels(rng, args.train_batch, size, size))
    return lambda: model.train_on_batch(images, labels)


def run_case(args, case):
    kind, config, mode = parse_case(case)
    cfg = speed.CONFIGS[config]
    speed.set_policy(mode)
    try:
        ours = build_call(kind, cfg, args)
        ours()  # traced with the library's BN
        with keras_batchnorm():
            stock = build_call(kind, cfg, args)
            stock()  # traced (and cached) with Keras' BN
        stats, times = speed.time_interleaved({"keras_gald": ours, "keras": stock},
                                              args.warmup, args.repeats,
                                              settle=1 if kind == "train" else 0)
    finally:
        speed.set_policy("fp32")
        speed.fresh_session()
    row = dict(case=case, kind=kind, config=config, mode=mode,
               keras_gald_ms=stats["keras_gald"]["ms"], keras_ms=stats["keras"]["ms"],
               keras_gald_all=stats["keras_gald"]["ms_all"], keras_all=stats["keras"]["ms_all"])
    row["ratio"] = row["keras_gald_ms"] / row["keras_ms"]
    row["ratio_per_round"] = speed.paired_ratio(times["keras_gald"], times["keras"])
    speed.log(f"[{case}] keras_gald {row['keras_gald_ms']:.1f} ms, Keras BN "
              f"{row['keras_ms']:.1f} ms, ratio {row['ratio']:.3f} "
              f"(per round {row['ratio_per_round']:.3f})")
    return row


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", default=DEFAULT_CASES)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--train-size", type=int, default=128)
    parser.add_argument("--train-batch", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--json", default="runs/batchnorm.json")
    args = parser.parse_args(argv)
    cases = [c for c in args.cases.split(",") if c]
    for case in cases:
        parse_case(case)

    import tensorflow as tf

    # One op at a time, as in speed.py (TF's default ran two 2-thread ops at once).
    tf.config.threading.set_inter_op_parallelism_threads(1)
    results = dict(machine=dict(processor=platform.processor() or platform.machine(),
                                cpus=speed.os.cpu_count(), tf=tf.__version__),
                   settings=vars(args), rows=[])
    for case in cases:
        results["rows"].append(run_case(args, case))
        path = pathlib.Path(args.json)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(results, indent=1))
    print("\ncase                              keras_gald ms   Keras BN ms   ratio  per round")
    for row in results["rows"]:
        print(f"{row['case']:34s} {row['keras_gald_ms']:13.1f} {row['keras_ms']:13.1f} "
              f"{row['ratio']:7.3f} {row['ratio_per_round']:10.3f}")
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
