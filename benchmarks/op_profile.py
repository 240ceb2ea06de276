"""Where the time of whole networks goes, op by op, networks timed in turns.

Builds the configurations of `benchmarks/common/models.py` named by `--configs`, calls them
in turns (`--rounds` rounds, the order reversed every other round) under the TF
profiler, and sums each op's self time by top-level layer (the backbone by
stage). Comparing two networks this way shows what a module costs by its own
ops, apart from the spread of whole-network wall times on a shared machine.

Usage (from the repository root):
    python benchmarks/op_profile.py --configs r50_aspp,r50_aspp_ldv2 --mode fp32 --rounds 8 \
        --json benchmarks/results/op_profile_r50_fp32.json

Prints per layer group and network the op self time per call (ms), the sum of
all op time and the median wall time per call; writes JSON. `--group-by type`
sums by op type instead (`_FusedConv2D`, `MatMul`, `StridedSlice`, ...): what a
machine's kernels spend on convolutions against everything around them.
"""

import argparse
import collections
import json
import os
import pathlib
import re
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
BENCH_DIR = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR.parent))
sys.path.insert(0, str(BENCH_DIR))

import numpy as np  # noqa: E402

from common.machine import machine_info  # noqa: E402
from common.models import CONFIGS, build_keras, inference_fn, set_policy  # noqa: E402
from common.report import write_json  # noqa: E402
from common.timing import sync_tf  # noqa: E402


def layer_group(op_name):
    """`model/model_logits/layer/...` -> the layer, `resnet50_1/layer3_block0_...` -> `resnet/layer3`."""
    parts = op_name.split("/")
    if len(parts) < 3:
        return None
    model, rest = parts[0], parts[2:]
    if rest[0].startswith("resnet") and len(rest) > 1:
        return model, "resnet/" + rest[1].split("_")[0]
    return model, rest[0]


def op_self_times(logdir, rounds, group_by="layer"):
    """{model: Counter(layer group or op type -> ms of op self time per call)} from a profile."""
    from tensorflow.python.profiler.internal import _pywrap_profiler_plugin as plugin

    spaces = [str(p) for p in pathlib.Path(logdir).rglob("*.xplane.pb")]
    data, ok = plugin.xspace_to_tools_data(spaces, "framework_op_stats", {})
    if not ok:
        raise SystemExit(f"the profiler wrote no op statistics under {logdir}")
    table = json.loads(data)
    table = table[0] if isinstance(table, list) else table
    columns = [c["id"] for c in table["cols"]]
    groups = collections.defaultdict(collections.Counter)
    for row in table["rows"]:
        values = {c: (cell or {}).get("v") for c, cell in zip(columns, row["c"])}
        key = layer_group(values["operation"])
        if key is not None:
            group = key[1] if group_by == "layer" else values["type"]
            groups[key[0]][group] += values["total_self_time"] / rounds / 1e3
    return groups


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--configs", default="r50_aspp,r50_aspp_ldv2")
    parser.add_argument("--mode", default="fp32", choices=("fp32", "bf16"))
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--group-by", choices=("layer", "type"), default="layer",
                        help="sum op self time by top-level layer (default) or by op type")
    parser.add_argument("--json", default="runs/op_profile.json")
    args = parser.parse_args(argv)
    configs = [c for c in args.configs.split(",") if c]
    for name in configs:
        if name not in CONFIGS:
            raise SystemExit(f"unknown config {name!r}; known: {', '.join(CONFIGS)}")

    import tensorflow as tf

    tf.config.threading.set_inter_op_parallelism_threads(1)  # as speed.py
    set_policy(args.mode)
    x = tf.constant(np.random.default_rng(0).random((1, args.size, args.size, 3), np.float32))
    calls, models = [], []
    for name in configs:
        model = build_keras(CONFIGS[name], args.size, args.size)
        fn = inference_fn(model)
        for _ in range(2):  # trace, then one warm call
            sync_tf(fn(x))
        calls.append(lambda fn=fn: sync_tf(fn(x)))
        models.append(model.name)
    walls = [[] for _ in calls]
    with tempfile.TemporaryDirectory() as logdir:
        tf.profiler.experimental.start(logdir)
        for round_ in range(args.rounds):
            order = range(len(calls)) if round_ % 2 == 0 else reversed(range(len(calls)))
            for i in order:
                start = time.perf_counter()
                calls[i]()
                walls[i].append((time.perf_counter() - start) * 1e3)
        tf.profiler.experimental.stop()
        groups = op_self_times(logdir, args.rounds, args.group_by)

    def ops_of(model):  # traced calls name their ops "<model name>_<n>/..."
        found = [g for m, g in groups.items() if re.fullmatch(re.escape(model) + r"(_\d+)?", m)]
        return dict(sum(found, collections.Counter()))

    per_config = {name: ops_of(model) for name, model in zip(configs, models)}
    keys = sorted({k for g in per_config.values() for k in g},
                  key=lambda k: -max(g.get(k, 0.0) for g in per_config.values()))
    print(f"\n{args.mode}, 1x{args.size}x{args.size}, {args.rounds} rounds in turns; "
          "op self time per call, ms")
    print(f"{'layer group' if args.group_by == 'layer' else 'op type':<28}" + "".join(f"{c:>18}" for c in configs))
    for key in keys:
        print(f"{key:<28}" + "".join(f"{per_config[c].get(key, 0.0):18.1f}" for c in configs))
    totals = {c: sum(per_config[c].values()) for c in configs}
    wall = {c: float(np.median(w)) for c, w in zip(configs, walls)}
    print(f"{'all ops':<28}" + "".join(f"{totals[c]:18.1f}" for c in configs))
    print(f"{'wall (median)':<28}" + "".join(f"{wall[c]:18.1f}" for c in configs))
    results = dict(machine=machine_info(
        tf.config.threading.get_intra_op_parallelism_threads(), None),
                   settings=vars(args), op_ms=per_config, op_total_ms=totals,
                   wall_ms=wall, wall_all=dict(zip(configs, walls)))
    write_json(args.json, results)
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
