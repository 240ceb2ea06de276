"""Speed of LDv2's two implementations: impl="slices" (default) vs "patches".

Times, for the default LDv2 config (k=5, r=3, key 256, value 512, out 256,
1 head, padding="zeros"), batch 1, 64x64 map, X_g 256 + X_l 256 = 512 input
channels:

* `layer`: the whole layer (1x1 projections + local attention + out conv/BN);
* `core`: only the local attention (logits, softmax, weighted sum) on
  precomputed q/k/v, where the two implementations actually differ;

each forward and forward+backward (gradients w.r.t. inputs and all weights),
under `tf.function` and `tf.function(jit_compile=True)`. Medians of `--repeats`
timed calls after warm-up; the slices/patches speed ratio (>1: slices faster)
comes from the same run.

Usage (from the repository root):
    python benchmarks/ldv2_impl.py [--quick] [--size 64] [--batch 1]
        [--global-channels 256] [--local-channels 256] [--repeats 10]
"""

import argparse
import os
import pathlib
import statistics
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# Runnable from a checkout without `pip install -e .`; `common` sits beside this file.
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from common.models import ldv2_layer_fns  # noqa: E402
from keras_gald.layers.ldv2 import LDv2  # noqa: E402


def _median_ms(fn, args, warmup, repeats):
    for _ in range(warmup):
        _block(fn(*args))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        _block(fn(*args))
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def _block(result):
    # Pull every output to the host so asynchronous devices finish.
    for t in tf.nest.flatten(result):
        t.numpy()


def _core_fns(layer):
    def forward(q, k, v):
        return layer._aggregate(tf.nn.softmax(layer._logits(q, k), axis=-1), v)

    def forward_backward(q, k, v):
        with tf.GradientTape() as tape:
            tape.watch([q, k, v])
            loss = tf.reduce_sum(tf.square(forward(q, k, v)))
        return tape.gradient(loss, [q, k, v])

    return forward, forward_backward


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="3 repeats, 1 warm-up call")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--global-channels", type=int, default=256)
    parser.add_argument("--local-channels", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()
    repeats, warmup = (3, 1) if args.quick else (args.repeats, 2)

    rng = np.random.default_rng(0)
    n, s = args.batch, args.size
    xg = tf.constant(rng.standard_normal((n, s, s, args.global_channels)), tf.float32)
    xl = tf.constant(rng.standard_normal((n, s, s, args.local_channels)), tf.float32)

    layers = {impl: LDv2(impl=impl, name=impl) for impl in ("patches", "slices")}
    layers["slices"]([xg, xl])
    layers["patches"]([xg, xl])
    layers["patches"].set_weights(layers["slices"].get_weights())
    _, q, k, v = layers["slices"]._prepare([xg, xl])

    devices = [d.name for d in tf.config.list_logical_devices()]
    print(
        f"LDv2 k=5 r=3 key=256 value=512 out=256 heads=1 padding=zeros | "
        f"N={n} {s}x{s} X_g={args.global_channels} X_l={args.local_channels} | "
        f"TF {tf.__version__} devices={devices} | median of {repeats} ms"
    )
    header = (
        f"{'part':<6}{'pass':<10}{'compile':<9}"
        f"{'patches ms':>12}{'slices ms':>12}{'slices/patches speed':>23}"
    )
    print(header)
    print("-" * len(header))
    for part, make, inputs in (
        ("layer", ldv2_layer_fns, (xg, xl)),
        ("core", _core_fns, (q, k, v)),
    ):
        for pass_index, pass_name in enumerate(("fwd", "fwd+bwd")):
            for jit in (False, True):
                ms = {}
                for impl, layer in layers.items():
                    fn = tf.function(make(layer)[pass_index], jit_compile=jit)
                    ms[impl] = _median_ms(fn, inputs, warmup, repeats)
                print(
                    f"{part:<6}{pass_name:<10}{'xla' if jit else 'graph':<9}"
                    f"{ms['patches']:>12.2f}{ms['slices']:>12.2f}"
                    f"{ms['patches'] / ms['slices']:>22.2f}x"
                )


if __name__ == "__main__":
    main()
