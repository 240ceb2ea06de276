"""What tracing LDv2 costs: graph nodes and seconds to trace one forward + backward.

Every `fit`, `predict` and export traces the model's graph, and LDv2's shifted
slices are its largest share (k^2 windows per primitive, three primitives with
their gradients). This traces a small LDv2 layer (k=5, r=3, 16 channels; the
node count does not depend on the widths) inside a `tf.function` with its
input gradient, `--repeats` times in fresh functions, and prints the first
trace's time (it also traces the slice primitives, which later traces of the
same shapes reuse), the median of the others, the nodes of the outer graph and
of the functions it calls (the XLA-compiled slice primitives under the default
`jit_slices=True`).

Usage (from the repository root; `--tree DIR` traces another checkout's
`keras_gald`, e.g. one made with `git archive REV | tar -x -C DIR`):
    python benchmarks/ldv2_trace.py [--repeats 5] [--tree DIR]
"""

import argparse
import os
import pathlib
import statistics
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def trace_once(layer, tf):
    """Seconds to trace one forward + backward of `layer`, and the graph's node counts."""

    @tf.function
    def step(xg, xl):
        with tf.GradientTape() as tape:
            tape.watch(xg)
            y = layer([xg, xl], training=True)
            loss = tf.reduce_sum(y * y)
        return tape.gradient(loss, [xg] + layer.trainable_weights)

    spec = tf.TensorSpec((None, None, None, 16))
    start = time.perf_counter()
    concrete = step.get_concrete_function(spec, spec)
    seconds = time.perf_counter() - start
    library = concrete.graph.as_graph_def().library
    return seconds, len(concrete.graph.get_operations()), sum(
        len(f.node_def) for f in library.function)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--tree", help="trace the keras_gald of this source tree")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(pathlib.Path(args.tree or pathlib.Path(__file__).parents[1]).resolve()))

    import tensorflow as tf

    import keras_gald

    layer = keras_gald.layers.LDv2(key_channels=16, value_channels=16)
    layer([tf.zeros((1, 6, 8, 16)), tf.zeros((1, 6, 8, 16))])  # build
    runs = [trace_once(layer, tf) for _ in range(max(2, args.repeats))]
    later = statistics.median(r[0] for r in runs[1:])
    print(f"keras_gald from {pathlib.Path(keras_gald.__file__).parent}")
    print(f"LDv2 (k=5, r=3) forward + backward: first trace {runs[0][0]:.2f} s, later traces "
          f"{later:.2f} s (median of {len(runs) - 1}); {runs[0][1]} nodes in the graph, "
          f"{runs[0][2]} in the functions it calls")


if __name__ == "__main__":
    main()
