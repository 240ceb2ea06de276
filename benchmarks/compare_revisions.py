"""TensorFlow speed of this checkout against another git revision, timed in turns.

A refactoring must not slow the networks down. This script extracts `--base`
(a git revision) into a temporary folder and starts one worker process per
source tree (this checkout, the base), each importing its own `keras_gald`
and building the same networks from the same seed. The parent then asks the
two workers for one timed call at a time, alternately (the order reversed
every other round), so a slow spell of a shared machine hits both trees alike.
Reported per network and mode: the median ms of each tree and the median over
rounds of head / base (≤ 1.0: this checkout is as fast or faster).

Modes: `forward` (the inference graph, `tf.function`, one image at
`--size`) and `train` (one `train_on_batch` SGD step on `--batch` images at
`--train-size`, with the auxiliary loss).

Usage (from the repository root):
    python benchmarks/compare_revisions.py --base 4dc1e23
    python benchmarks/compare_revisions.py --base main~3 --configs r50_aspp_ldv2 \\
        --modes forward --rounds 3 --json benchmarks/results/revisions.json
"""

import argparse
import json
import os
import pathlib
import statistics
import subprocess
import sys
import tarfile
import tempfile

REPO = pathlib.Path(__file__).resolve().parent.parent
CONFIGS = {
    "tiny_aspp_ldv2": dict(kind="gald", backbone="resnet_tiny", ga="aspp", ld="v2"),
    "r50_aspp_ldv2": dict(kind="gald", backbone="resnet50", ga="aspp", ld="v2"),
    "official_v1_r50": dict(kind="official_v1", depth=50),
}
NUM_CLASSES = 19


# ----------------------------------------------------------------- worker side


def _worker():
    """Reads one JSON request per line; answers one JSON line per request."""
    import time

    import numpy as np
    import tensorflow as tf

    import keras
    import keras_gald as kg

    tf.config.threading.set_inter_op_parallelism_threads(1)
    built = {}

    def build(name, mode, size, train_size, batch):
        cfg = CONFIGS[name]
        keras.utils.set_random_seed(0)
        side = size if mode == "forward" else train_size
        shape = (side, side, 3)
        if cfg["kind"] == "gald":
            model = kg.models.GALD(cfg["backbone"], ga=cfg["ga"], ld=cfg["ld"],
                                   num_classes=NUM_CLASSES, output_stride=8, input_shape=shape)
        else:
            model = kg.models.official_gald_v1(cfg["depth"], num_classes=NUM_CLASSES,
                                               input_shape=shape, upsample_logits=True)
        rng = np.random.default_rng(0)
        if mode == "forward":
            images = tf.constant(rng.normal(size=(1, *shape)).astype("float32"))
            fn = tf.function(model.inference_model())
            return lambda: fn(images, training=False).numpy()
        images = rng.normal(size=(batch, *shape)).astype("float32")
        labels = rng.integers(0, NUM_CLASSES, size=(batch, side, side)).astype("int32")
        model.compile(optimizer=keras.optimizers.SGD(0.01, momentum=0.9),
                      loss=kg.losses.SegmentationCrossEntropy(ignore_index=255))
        return lambda: model.train_on_batch(images, labels)

    for line in sys.stdin:
        request = json.loads(line)
        key = (request["config"], request["mode"])
        if request["op"] == "build":
            fn = built[key] = build(request["config"], request["mode"], request["size"],
                                    request["train_size"], request["batch"])
            for _ in range(request["warmup"]):
                fn()
            answer = {"ok": True}
        else:
            start = time.perf_counter()
            built[key]()
            answer = {"ms": (time.perf_counter() - start) * 1e3}
        print(json.dumps(answer), flush=True)


# ----------------------------------------------------------------- parent side


class Worker:
    def __init__(self, tree, label):
        env = dict(os.environ, PYTHONPATH=str(tree), TF_CPP_MIN_LOG_LEVEL="2",
                   KERAS_BACKEND="tensorflow")
        self.label = label
        self.proc = subprocess.Popen(
            [sys.executable, str(pathlib.Path(__file__).resolve()), "--worker"],
            cwd=tree, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

    def ask(self, **request):
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise SystemExit(f"compare_revisions: the {self.label} worker died "
                             f"(exit code {self.proc.wait()}); see its messages above")
        return json.loads(line)

    def close(self):
        self.proc.stdin.close()
        self.proc.wait()


def extract(revision, into):
    """`git archive` of `revision` unpacked under `into`; returns that folder."""
    archive = subprocess.run(["git", "-C", str(REPO), "archive", "--format=tar", revision],
                             capture_output=True, check=False)
    if archive.returncode:
        raise SystemExit(f"compare_revisions: cannot read revision {revision!r}: "
                         f"{archive.stderr.decode().strip()}")
    tree = pathlib.Path(into) / "base"
    tree.mkdir()
    tar_path = pathlib.Path(into) / "base.tar"
    tar_path.write_bytes(archive.stdout)
    with tarfile.open(tar_path) as tar:
        tar.extractall(tree, filter="data")
    return tree


def write_json(path, results):
    # Written after every row, atomically: an interrupted run keeps what it measured.
    path = pathlib.Path(path)
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(results, indent=1) + "\n")
    os.replace(partial, path)


def cpu_flags():
    try:
        text = pathlib.Path("/proc/cpuinfo").read_text()
    except OSError:
        return []
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines()
                  if line.startswith("flags")), [])
    return sorted(f for f in flags if f.startswith(("avx512", "avx2", "amx")))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", required=True, help="git revision to compare against")
    parser.add_argument("--configs", default="r50_aspp_ldv2,official_v1_r50",
                        help=f"comma-separated, from {sorted(CONFIGS)}")
    parser.add_argument("--modes", default="forward,train", help="forward and/or train")
    parser.add_argument("--size", type=int, default=512, help="forward input side")
    parser.add_argument("--train-size", type=int, default=256, help="training input side")
    parser.add_argument("--batch", type=int, default=2, help="training batch")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args(argv)
    configs = [c for c in args.configs.split(",") if c]
    modes = [m for m in args.modes.split(",") if m]
    unknown = sorted(set(configs) - set(CONFIGS)) + sorted(set(modes) - {"forward", "train"})
    if unknown:
        parser.error(f"unknown configs / modes: {unknown}")

    head_rev = subprocess.run(["git", "-C", str(REPO), "describe", "--always", "--dirty"],
                              capture_output=True, text=True).stdout.strip()
    results = {"base": args.base, "head": head_rev, "cpu_flags": cpu_flags(),
               "TF_ENABLE_ONEDNN_OPTS": os.environ.get("TF_ENABLE_ONEDNN_OPTS"),
               "args": vars(args), "rows": []}
    print(f"CPU flags: {' '.join(results['cpu_flags']) or 'unknown'}; "
          f"TF_ENABLE_ONEDNN_OPTS={results['TF_ENABLE_ONEDNN_OPTS']}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        workers = [Worker(REPO, "head"), Worker(extract(args.base, tmp), "base")]
        try:
            for config in configs:
                for mode in modes:
                    request = dict(config=config, mode=mode, size=args.size,
                                   train_size=args.train_size, batch=args.batch)
                    for worker in workers:
                        worker.ask(op="build", warmup=args.warmup, **request)
                    times = {w.label: [] for w in workers}
                    for round_ in range(args.rounds):
                        order = workers if round_ % 2 == 0 else workers[::-1]
                        for worker in order:
                            times[worker.label].append(worker.ask(op="run", **request)["ms"])
                    ratio = statistics.median(h / b for h, b in zip(times["head"], times["base"]))
                    row = {"config": config, "mode": mode,
                           "head_ms": statistics.median(times["head"]),
                           "base_ms": statistics.median(times["base"]),
                           "head_over_base": ratio, "ms_all": times}
                    results["rows"].append(row)
                    print(f"{config:18s} {mode:8s} head {row['head_ms']:9.1f} ms  "
                          f"base {row['base_ms']:9.1f} ms  head/base {ratio:.3f}", flush=True)
                    if args.json:
                        write_json(args.json, results)
        finally:
            for worker in workers:
                worker.close()
    return results


if __name__ == "__main__":
    if sys.argv[1:] == ["--worker"]:
        _worker()
    else:
        main()
