"""Peak memory of one block (the ASPP head or LDv2) for one pass, each measured
in a process of its own (`python -m common.memory SPEC`).

The child runs with TF's CPU BFC allocator (`TF_CPU_ALLOCATOR_USE_BFC=true`),
so `tf.config.experimental.get_memory_info("CPU:0")` reports the allocator's
peak; `extra_mib` is that peak minus what was allocated before the call
(inputs and weights). The growth of the process's `ru_maxrss` over the call is
reported as a cross-check (it also sees memory allocated outside TF's
allocator). A fresh process per measurement keeps one block's peak out of the
next one's. `ldv2_slices` is the default layer (XLA-compiled primitives),
`ldv2_slices_plain` the same with `jit_slices=False`; `ldv2_patches`
materialises k^2 = 25 copies of the key/value maps (GBs at the 1/8 map of a
1024x2048 image). Results: benchmarks/README.md, "LDv2 block and memory".
"""

import json
import os
import pathlib
import resource
import subprocess
import sys
import time

from common.report import log, write_json
from common.timing import sync_tf

BENCH_DIR = pathlib.Path(__file__).resolve().parents[1]

MEMORY_BLOCKS = ("aspp", "ldv2_slices", "ldv2_slices_plain", "ldv2_patches")


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
    sync_tf(concrete(*inputs))
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
    """The `memory` section of speed.py: every block of `args.memory_blocks`,
    forward and forward + backward, on a (1, H, W, 2048) map (`args.memory_hw`)."""
    rows = []
    h, w = args.memory_hw
    for block in args.memory_blocks:
        for pass_name in ("fwd", "fwd+bwd"):
            spec = dict(block=block, shape=[1, h, w, 2048], threads=args.threads,
                        **{"pass": pass_name})
            log(f"[memory] {block} {pass_name} 1x{h}x{w}x2048 (subprocess) ...")
            # The child imports `common` and `keras_gald` from this checkout.
            path = [str(BENCH_DIR), str(BENCH_DIR.parent), os.environ.get("PYTHONPATH", "")]
            env = dict(os.environ, TF_CPU_ALLOCATOR_USE_BFC="true",
                       PYTHONPATH=os.pathsep.join(p for p in path if p))
            row = dict(block=block, pass_=pass_name, input=f"1x{h}x{w}x2048")
            try:
                proc = subprocess.run(
                    [sys.executable, "-m", "common.memory", json.dumps(spec)],
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
    write_json(args.json, results)


if __name__ == "__main__":
    memory_child(json.loads(sys.argv[1]))
