"""The paper's GA/LD ablation (Table I-style) on CamVid from scratch, with paired seeds.

Trains, with one recipe (`--config`, default `camvid`: full resolution, where the
output-stride-8 feature map, 46x61, is 3.5x LDv2's 13x13 window per side) and the same
seeds (same seed = same initialisation and data order):

    fcn         dilated ResNet + 3x3 conv head (no global aggregation)
    aspp        + ASPP (GA)
    aspp_ldv1   + ASPP + LDv1
    aspp_ldv2   + ASPP + LDv2
    psp_ldv2, cgnl_ldv1, psp, cgnl   (on request)

Plan: `--variants` (default aspp aspp_ldv2) for `--seeds` (default 0-4), then
`--more-variants` (default fcn aspp_ldv1) for `--more-seeds` (default 0 1 2), seed-major
inside each group, so complete ASPP / LDv2 pairs come first. Each run trains in a
subprocess (`python -m training.train`, on the GPU when one is visible) and is evaluated in
another on the validation split at the recipe's `eval_scale` (IoU at full label size):
mIoU, per-class IoU and the boundary F-score (pooled over images) at 1, 2, 3, 5 px of the
label size (`--boundary-px`) and at the G-SCNN fractions of the image diagonal
(`keras_gald.metrics`; 1, 2, 3, 3 px at 360x480). `RUN/eval.json` holds each run's numbers with the machine (CPU model
and flags, GPUs) and the load average around it.

The summary (`OUT/results.json`, `OUT/results.md`; with `--results PREFIX` also
`PREFIX.json`, `PREFIX.md` and one `PREFIX/<variant>-seed<k>.json` per run): mean ±
sample std per variant, and paired differences against FCN + ASPP over the common seeds
with a 95 % t-interval (Student t quantile, n - 1 degrees of freedom) for mIoU, the
small classes' IoU (pole, sign_symbol, pedestrian, bicyclist) and every boundary
tolerance.

Interrupted? Run the same command again: finished runs are read back from
`RUN/eval.json`, a run killed mid-training resumes from its last checkpoint
(`keras-gald train` resume), and the tables are rebuilt. `--summarise-only` rebuilds
them from the finished runs without training anything.

    python benchmarks/camvid_ablation.py --data-dir ../shared/data/camvid \\
        --out runs/camvid_ablation --results benchmarks/results/camvid_ablation_fullres

`--quick` is a smoke test (4 steps, 4 validation images per run).
"""

import argparse
import json
import math
import os
import pathlib
import subprocess
import sys
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

VARIANTS = {
    "fcn": dict(ga="none", ld="none", label="FCN (dilated ResNet, no GA)"),
    "aspp": dict(ga="aspp", ld="none", label="FCN + ASPP"),
    "aspp_ldv1": dict(ga="aspp", ld="v1", label="FCN + ASPP + LDv1"),
    "aspp_ldv2": dict(ga="aspp", ld="v2", label="FCN + ASPP + LDv2"),
    "psp_ldv2": dict(ga="psp", ld="v2", label="FCN + PSP + LDv2"),
    "cgnl_ldv1": dict(ga="cgnl", ld="v1", label="FCN + CGNL + LDv1"),
    "psp": dict(ga="psp", ld="none", label="FCN + PSP"),
    "cgnl": dict(ga="cgnl", ld="none", label="FCN + CGNL"),
}
REFERENCE = "aspp"
PRIMARY_VARIANTS = ("aspp", "aspp_ldv2")
PRIMARY_SEEDS = (0, 1, 2, 3, 4)
MORE_VARIANTS = ("fcn", "aspp_ldv1")
MORE_SEEDS = (0, 1, 2)
# Boundary tolerances in pixels of the evaluated label; the G-SCNN fractions of the image
# diagonal (keras_gald.metrics.DEFAULT_BOUNDARY_THRESHOLDS) are evaluated after them.
BOUNDARY_PX = (1, 2, 3, 5)
SMALL_CLASSES = ("pole", "sign_symbol", "pedestrian", "bicyclist")
CPU_FLAGS = ("sse4_2", "avx", "avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512_vnni",
             "avx512_bf16", "amx_tile", "amx_bf16", "amx_int8")

# Student t quantile t_{0.975, df} (two-sided 95 %), df = 1..30.
T_975 = {
    1: 12.706204736174694, 2: 4.302652729749462, 3: 3.1824463052837078,
    4: 2.7764451051977934, 5: 2.5705818356363146, 6: 2.4469118511449786,
    7: 2.364624251592784, 8: 2.306004135204166, 9: 2.262157162798205,
    10: 2.228138851986274, 11: 2.200985160091639, 12: 2.1788128296672284,
    13: 2.1603686564627913, 14: 2.144786687917804, 15: 2.131449545559776,
    16: 2.1199052992212546, 17: 2.1098155778333156, 18: 2.1009220402410382,
    19: 2.0930240544083087, 20: 2.085963447265864, 21: 2.0796138447276795,
    22: 2.0738730679040254, 23: 2.0686576104190486, 24: 2.0638985616280245,
    25: 2.0595385527532972, 26: 2.0555294386428735, 27: 2.0518305164802846,
    28: 2.0484071417952454, 29: 2.045229642132703, 30: 2.0422724563012378,
}


def build_parser():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", default=str(REPO.parent / "shared" / "data" / "camvid"),
                   help="CamVid in train|val/images|labels layout (default ../shared/data/camvid)")
    p.add_argument("--variants", nargs="+", default=list(PRIMARY_VARIANTS),
                   choices=sorted(VARIANTS), help="first group (default aspp aspp_ldv2)")
    p.add_argument("--seeds", type=int, nargs="+", default=list(PRIMARY_SEEDS),
                   help="seeds of the first group (default 0 1 2 3 4)")
    p.add_argument("--more-variants", nargs="*", default=list(MORE_VARIANTS),
                   choices=sorted(VARIANTS),
                   help="second group, run after the first (default fcn aspp_ldv1; none: "
                        "give the flag alone)")
    p.add_argument("--more-seeds", type=int, nargs="+", default=list(MORE_SEEDS),
                   help="seeds of the second group (default 0 1 2)")
    p.add_argument("--boundary-px", type=int, nargs="+", default=list(BOUNDARY_PX),
                   help="boundary F tolerances in pixels of the label (default 1 2 3 5); the "
                        "G-SCNN fractions of the diagonal are always added")
    p.add_argument("--budget-minutes", type=float, default=0.0,
                   help="stop before a run that would end past this wall-clock budget "
                        "(0: no limit)")
    p.add_argument("--config", default="camvid", help="training preset (default camvid)")
    p.add_argument("--steps", type=int, default=None, help="training steps (default: the preset's)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="extra TrainConfig overrides, same for every run (ldv2_*: the "
                        "LDv2 runs only, e.g. ldv2_kernel_size=3 for a window sweep)")
    p.add_argument("--out", default=str(REPO / "runs" / "camvid_ablation"),
                   help="run directories and results.{json,md}")
    p.add_argument("--results", default=None, metavar="PREFIX",
                   help="also write PREFIX.json, PREFIX.md and PREFIX/<variant>-seed<k>.json")
    p.add_argument("--summarise-only", action="store_true",
                   help="train nothing: summarise the finished runs found in --out")
    p.add_argument("--quick", action="store_true", help="smoke test: 4 steps, 4 val images")
    # Internal: evaluate one trained run (a subprocess of the ablation).
    p.add_argument("--evaluate-run", default=None, help=argparse.SUPPRESS)
    p.add_argument("--run-info", default="{}", help=argparse.SUPPRESS)
    return p


def plan_runs(args):
    """-> [(seed, variant)]: the first group seed-major, then the second, no repeats."""
    plan = []
    for variants, seeds in ((args.variants, args.seeds), (args.more_variants, args.more_seeds)):
        for seed in seeds:
            for v in variants:
                if (seed, v) not in plan:
                    plan.append((seed, v))
    return plan


# ------------------------------------------------------------------ statistics


def t_quantile_975(df):
    """Student t quantile t_{0.975, df} (a two-sided 95 % interval), df 1..30."""
    if df not in T_975:
        raise ValueError(f"the Student t quantile is tabulated for 1..30 degrees of freedom, "
                         f"got {df}")
    return T_975[df]


def mean_std(values):
    """-> (mean, sample std) of the non-None values; std None below two values."""
    values = [v for v in values if v is not None]
    if not values:
        return None, None
    mean = sum(values) / len(values)
    std = (math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))
           if len(values) > 1 else None)
    return mean, std


def t_interval(values):
    """95 % t-interval of the mean of `values` (None entries dropped).

    -> dict(n, mean, std, half_width, low, high); `std` and the interval are None
    below two values.
    """
    values = [v for v in values if v is not None]
    mean, std = mean_std(values)
    out = dict(n=len(values), mean=mean, std=std, half_width=None, low=None, high=None)
    if std is not None:
        half = t_quantile_975(len(values) - 1) * std / math.sqrt(len(values))
        out.update(half_width=half, low=mean - half, high=mean + half)
    return out


def paired_differences(runs, reference, value):
    """Seed-by-seed differences `value(run) - value(reference run)`.

    `runs`, `reference`: {seed: run}; `value(run)` may return None (left out).
    -> (seeds, differences) over the seeds both have a value for.
    """
    seeds, diffs = [], []
    for seed in sorted(set(runs) & set(reference)):
        a, b = value(runs[seed]), value(reference[seed])
        if a is not None and b is not None:
            seeds.append(seed)
            diffs.append(a - b)
    return seeds, diffs


def fmt_pct(value, digits=2):
    return "n/a" if value is None else f"{100 * value:.{digits}f}"


def fmt_mean_std(values, digits=2):
    mean, std = mean_std(values)
    if mean is None:
        return "n/a"
    if std is None:
        return fmt_pct(mean, digits)
    return f"{fmt_pct(mean, digits)} ± {fmt_pct(std, digits)}"


def fmt_signed(value, digits=2):
    return "n/a" if value is None else f"{100 * value:+.{digits}f}"


def fmt_interval(interval, digits=2):
    """'+1.23 [-0.45, +2.91]' (percentage points); one value: '+1.23 (1 seed)'."""
    if interval["mean"] is None:
        return "n/a"
    if interval["low"] is None:
        return f"{fmt_signed(interval['mean'], digits)} ({interval['n']} seed)"
    return (f"{fmt_signed(interval['mean'], digits)} [{fmt_signed(interval['low'], digits)}, "
            f"{fmt_signed(interval['high'], digits)}]")


def boundary_f_at(result, px):
    """An evaluation result's boundary F-score at a tolerance of `px` pixels."""
    thresholds = [float(t) for t in result["boundary_f"]["thresholds"]]
    if float(px) not in thresholds:
        raise ValueError(f"no boundary F-score at {px} px (tolerances {thresholds})")
    return result["boundary_f"]["mean_f"][thresholds.index(float(px))]


# ------------------------------------------------------------------ training / evaluation


def train_command(args, variant, seed, run_dir, extra_sets=()):
    """The `training.train` command line of one (variant, seed); `extra_sets`: further
    `KEY=VALUE` overrides, applied after `args.set`."""
    spec = VARIANTS[variant]
    cmd = [sys.executable, "-m", "training.train", "--config", args.config,
           "--data-dir", args.data_dir, "--run-dir", str(run_dir),
           "--set", f"ga={spec['ga']}", "--set", f"ld={spec['ld']}",
           "--set", f"seed={seed}", "--set", "export_saved_model=false"]
    if args.steps:
        cmd += ["--steps", str(args.steps)]
    if args.quick:
        cmd += ["--steps", "4", "--checkpoint-every", "2", "--set", "eval_max_images=4"]
    for item in list(args.set) + list(extra_sets):
        if item.startswith("ldv2_") and spec["ld"] != "v2":
            continue  # LDv2's window settings (a Table II(b) sweep) shape the LDv2 runs only
        cmd += ["--set", item]
    return cmd


def train_run(args, variant, seed, run_dir, extra_sets=()):
    """Trains one (variant, seed) in a subprocess (resumes from its checkpoints).

    Returns the wall seconds of this training process.
    """
    cmd = train_command(args, variant, seed, run_dir, extra_sets)
    env = dict(os.environ, PYTHONPATH=str(REPO))
    env.pop("TF_CONFIG", None)
    log_path = run_dir / "train_stdout.log"
    run_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    last_progress = 0.0
    with open(log_path, "a") as log:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, bufsize=1)
        for line in proc.stdout:
            log.write(line)
            text = line.strip()
            # Keras progress bars redraw with \r; print a line every 30 s and key lines.
            if text.startswith(("resumed from", "final mIoU", "trained steps", "model ")):
                print(f"    [{variant} s{seed}] {text}", flush=True)
            elif "Epoch" in text and time.time() - last_progress > 30:
                print(f"    [{variant} s{seed}] {text[-60:]} ({time.time() - t0:.0f}s)", flush=True)
                last_progress = time.time()
        proc.wait()
    if proc.returncode != 0:
        tail = log_path.read_text()[-3000:]
        raise RuntimeError(f"training {variant} seed {seed} failed (log {log_path}):\n{tail}")
    return time.time() - t0


def training_log_times(run_dir):
    """-> (train_seconds, seconds_per_step) from `RUN/log.csv`: the cumulative training
    time of the last row, and the time per step after the first logged interval (which
    holds graph tracing); None where the log is too short."""
    import csv

    path = pathlib.Path(run_dir) / "log.csv"
    if not path.is_file():
        return None, None
    with open(path, newline="") as f:
        rows = [r for r in csv.DictReader(f) if r.get("train_seconds") not in (None, "", "NA")]
    if not rows:
        return None, None
    total = float(rows[-1]["train_seconds"])
    if len(rows) < 2:
        return total, None
    first, last = rows[0], rows[-1]
    per_step = ((float(last["train_seconds"]) - float(first["train_seconds"]))
                / (float(last["step"]) - float(first["step"])))
    return total, per_step


def machine_info():
    """CPU model, core count and the vector flags that matter to TensorFlow, the GPUs
    TensorFlow sees (name, compute capability) and the library versions."""
    import platform

    import keras
    import tensorflow as tf

    info = {"platform": platform.platform(), "python": platform.python_version(),
            "tensorflow": tf.__version__, "keras": keras.__version__,
            "cpu_count": os.cpu_count(), "cpu_model": None, "cpu_flags": [],
            "onednn_opts": os.environ.get("TF_ENABLE_ONEDNN_OPTS")}
    if hasattr(os, "sched_getaffinity"):
        info["cpus_usable"] = len(os.sched_getaffinity(0))
    cpuinfo = pathlib.Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and info["cpu_model"] is None:
                info["cpu_model"] = value.strip()
            elif key.strip() == "flags" and not info["cpu_flags"]:
                present = set(value.split())
                info["cpu_flags"] = [f for f in CPU_FLAGS if f in present]
    else:
        info["cpu_model"] = platform.processor() or None
    gpus = []
    for device in tf.config.list_physical_devices("GPU"):
        details = tf.config.experimental.get_device_details(device)
        gpus.append({"name": details.get("device_name", device.name),
                     "compute_capability": details.get("compute_capability")})
    info["gpus"] = gpus
    return info


def label_sizes(source, limit=0):
    """Distinct (height, width) of the label PNGs evaluated (first `limit` when > 0)."""
    from PIL import Image

    pairs = source.pairs if limit <= 0 else source.pairs[:limit]
    sizes = set()
    for _, label_path in pairs:
        with Image.open(label_path) as im:
            sizes.add((im.height, im.width))
    return sorted(sizes)


def network_geometry(model, input_hw):
    """The 1/8 logits' size for an `input_hw` input and the LD layer's window."""
    import keras
    import numpy as np

    features = keras.Model(model.inputs, model.get_layer("classifier").output)
    shape = features([np.zeros((1, *input_hw, 3), np.float32)]).shape
    geometry = {"input_hw": list(input_hw), "feature_map_hw": [int(shape[1]), int(shape[2])]}
    names = {layer.name for layer in model.layers}
    if "ld_v2" in names:
        cfg = model.get_layer("ld_v2").get_config()
        k, r = int(cfg["kernel_size"]), int(cfg["dilation_rate"])
        geometry["ldv2"] = {"kernel_size": k, "dilation_rate": r, "window_span": (k - 1) * r + 1}
    if "ld_v1" in names:
        geometry["ldv1"] = {"downsample_rate": int(model.get_layer("ld_v1").get_config()
                                                   ["downsample_rate"])}
    return geometry


def evaluate_run(args, run_dir, train_seconds, run_info=None):
    """Evaluates `RUN/model.keras` on val (in this process); writes and returns `RUN/eval.json`.

    `run_info`: extra fields stored with the results (timings, load average).
    """
    import keras

    import keras_gald.models  # noqa: F401  (registers the custom objects)
    from keras_gald import data, evaluation, metrics

    run_dir = pathlib.Path(run_dir)
    config = json.loads((run_dir / "config.json").read_text())
    model = keras.saving.load_model(run_dir / "model.keras", compile=False)
    source = data.camvid(args.data_dir, "val")
    limit = 4 if args.quick else 0
    boundary_px = getattr(args, "boundary_px", None) or BOUNDARY_PX
    thresholds = tuple(float(px) for px in boundary_px) + tuple(
        metrics.DEFAULT_BOUNDARY_THRESHOLDS)
    t0 = time.time()
    results = evaluation.evaluate(model, data.make_eval_dataset(source), source[1].num_classes,
                                  source[1].class_names, eval_scale=config["eval_scale"],
                                  boundary=True, boundary_thresholds=thresholds,
                                  max_images=limit, verbose=0)
    results["eval_seconds"] = round(time.time() - t0, 1)
    sizes = label_sizes(source, limit)
    results["label_sizes"] = [list(s) for s in sizes]
    results["boundary_f"]["tolerance_px"] = {
        f"{h}x{w}": [metrics.boundary_tolerance_px((h, w), t) for t in thresholds]
        for h, w in sizes}
    h, w = sizes[0]
    scale = config["eval_scale"]
    results["geometry"] = network_geometry(
        model, (int(round(h * scale)), int(round(w * scale))))
    results["train_seconds"] = None if train_seconds is None else round(train_seconds, 1)
    results["params"] = int(model.count_params())
    results["steps"] = config["steps"]
    results["config"] = {k: config[k] for k in ("name", "backbone", "ga", "ld", "crop_size",
                                                "scale_range", "batch_size", "lr", "loss",
                                                "ohem_min_kept", "seed", "eval_scale")}
    results["machine"] = machine_info()
    results.update(run_info or {})
    results["load_average_after_eval"] = list(os.getloadavg())
    atomic_write_json(run_dir / "eval.json", results)
    return results


def evaluate_run_subprocess(args, run_dir, run_info):
    """`evaluate_run` in a fresh process (the parent never holds the accelerator)."""
    cmd = [sys.executable, str(pathlib.Path(__file__).resolve()), "--evaluate-run",
           str(run_dir), "--data-dir", args.data_dir, "--run-info", json.dumps(run_info),
           "--boundary-px", *map(str, args.boundary_px)]
    if args.quick:
        cmd.append("--quick")
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    with open(run_dir / "eval_stdout.log", "a") as log:
        log.write(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        raise RuntimeError(f"evaluating {run_dir} failed (log {run_dir / 'eval_stdout.log'}):\n"
                           + (proc.stdout + proc.stderr)[-3000:])
    return json.loads((run_dir / "eval.json").read_text())


def chance_levels(confusion):
    """mIoU of a uniformly random predictor (expected) and of always predicting the
    most frequent class, from the validation label histogram."""
    counts = [sum(row) for row in confusion]
    total = float(sum(counts))
    p = [c / total for c in counts]
    k = len(p)
    uniform = sum(pc / (1.0 + (k - 1) * pc) for pc in p) / k
    majority = max(p) / k  # IoU of the majority class is p_max; others 0
    return uniform, majority


# ------------------------------------------------------------------ summary


def threshold_label(threshold, tolerance_px):
    """'2 px' for a pixel tolerance; '0.001875 (2 px)' for a fraction of the diagonal."""
    px = sorted(set(tolerance_px))
    px_text = "/".join(str(p) for p in px)
    if threshold >= 1:
        return f"{px_text} px"
    return f"{threshold:g} ({px_text} px)"


def mean_and_delta_rows(variants, summary, by_seed, columns):
    """Markdown rows `| label | mean ± std; Δ [CI] | ...`, one per variant.

    `columns`: `(value_fn, delta_group, delta_key)` per column: `value_fn(run)` gives the
    per-seed values, `summary[v]["vs_aspp"][delta_group][delta_key]` the paired interval.
    """
    rows = []
    for v in variants:
        e = summary[v]
        cells = []
        for value_fn, group, key in columns:
            cell = fmt_mean_std([value_fn(r) for r in by_seed[v].values()])
            if "vs_aspp" in e:
                cell += f"; Δ {fmt_interval(e['vs_aspp'][group][key])}"
            cells.append(cell)
        rows.append(f"| {e['label']} | " + " | ".join(cells) + " |")
    return rows


def summarise(args, results, wall_seconds):
    """-> (summary dict, Markdown) of the finished runs `results` (eval.json dicts with
    `variant` and `seed`)."""
    order = list(dict.fromkeys(list(args.variants) + list(args.more_variants)))
    order += [v for v in dict.fromkeys(r["variant"] for r in results) if v not in order]
    variants = [v for v in order if any(r["variant"] == v for r in results)]
    first = results[0]
    class_names = first["class_names"]
    thresholds = first["boundary_f"]["thresholds"]
    other = [f"{r['variant']}-seed{r['seed']}" for r in results
             if r["boundary_f"]["thresholds"] != thresholds]
    if other:
        raise ValueError(f"{', '.join(other)} scored other boundary tolerances than "
                         f"{first['variant']}-seed{first['seed']} ({thresholds}): use one --out "
                         "per --boundary-px")
    tol = first["boundary_f"].get("tolerance_px", {})
    sizes = sorted(tol)
    per_threshold_px = [[tol[s][i] for s in sizes] for i in range(len(thresholds))]
    labels = [threshold_label(t, px) for t, px in zip(thresholds, per_threshold_px)]
    px_idx = [i for i, t in enumerate(thresholds) if t >= 1]
    frac_idx = [i for i, t in enumerate(thresholds) if t < 1]
    chance_uniform, chance_majority = chance_levels(first["confusion_matrix"])
    geometry = first.get("geometry", {})
    span = next((r["geometry"]["ldv2"] for r in results if "ldv2" in r.get("geometry", {})),
                None)

    by_seed = {v: {r["seed"]: r for r in results if r["variant"] == v} for v in variants}

    def bf(i):
        return lambda r: r["boundary_f"]["mean_f"][i]

    def iou(c):
        return lambda r: r["per_class_iou"].get(c)

    def miou(r):
        return r["mean_iou"]

    summary = {
        "dataset": f"CamVid val, {first['num_images']} images",
        "config": first["config"], "steps": first["steps"],
        "geometry": geometry, "ldv2_window": span,
        "boundary_thresholds": thresholds, "boundary_tolerance_px": tol,
        "chance_miou_uniform": chance_uniform, "chance_miou_majority": chance_majority,
        "confidence": "95 % t-interval over seeds (Student t quantile, n - 1 df)",
        "variants": {}, "wall_seconds": round(wall_seconds, 1),
        "command": " ".join(["python", "benchmarks/camvid_ablation.py"] + sys.argv[1:]),
    }
    for v in variants:
        runs = [by_seed[v][s] for s in sorted(by_seed[v])]
        entry = {
            "label": VARIANTS[v]["label"], "seeds": sorted(by_seed[v]),
            "params": runs[0]["params"],
            "mean_iou": t_interval([miou(r) for r in runs]),
            "mean_iou_per_seed": {str(r["seed"]): r["mean_iou"] for r in runs},
            "boundary_f": {labels[i]: t_interval([bf(i)(r) for r in runs])
                           for i in range(len(thresholds))},
            "per_class_iou": {c: t_interval([iou(c)(r) for r in runs]) for c in class_names},
            "train_seconds_per_run": mean_std([r.get("train_seconds") for r in runs])[0],
        }
        if v != REFERENCE and REFERENCE in by_seed:
            ref = by_seed[REFERENCE]
            seeds, d = paired_differences(by_seed[v], ref, miou)
            entry["vs_aspp"] = {
                "seeds": seeds, "mean_iou": dict(t_interval(d), differences=d),
                "boundary_f": {labels[i]: t_interval(paired_differences(by_seed[v], ref, bf(i))[1])
                               for i in range(len(thresholds))},
                "per_class_iou": {c: t_interval(paired_differences(by_seed[v], ref, iou(c))[1])
                                  for c in class_names},
            }
        summary["variants"][v] = entry

    s = summary["variants"]
    lines = ["# CamVid GA/LD ablation, trained from scratch", ""]
    fm = geometry.get("feature_map_hw")
    recipe = (f"Recipe `{first['config']['name']}`: {first['config']['backbone']}, crop "
              f"{'x'.join(map(str, first['config']['crop_size']))}, batch "
              f"{first['config']['batch_size']}, {first['steps']} steps, inference at scale "
              f"{first['config']['eval_scale']:g}")
    if fm:
        recipe += (f" ({'x'.join(map(str, geometry['input_hw']))} input): the output-stride-8 "
                   f"feature map is {fm[0]}x{fm[1]}")
    if span:
        recipe += (f"; LDv2's window (k {span['kernel_size']}, dilation "
                   f"{span['dilation_rate']}) spans (k-1)*r+1 = {span['window_span']} positions "
                   f"per side; the map's shorter side is {min(fm) / span['window_span']:.1f}x "
                   "that" if fm else "")
    lines += [recipe + ".", "",
              f"{summary['dataset']} (IoU and boundaries at the label size, "
              f"{', '.join(sizes) or 'n/a'}). Mean ± sample std over seeds; Δ: paired "
              "difference against FCN + ASPP on the same seeds (same initialisation and data "
              "order), mean [95 % t-interval over seeds, Student t quantile with n - 1 degrees "
              "of freedom], percentage points. bF: boundary F-score, matched and total "
              "boundary pixels pooled over the images.", "",
              "| model | params | seeds | mIoU % | Δ mIoU vs ASPP [95 % CI] | "
              + " | ".join(f"bF {labels[i]} %" for i in px_idx) + " |",
              "|---|---|---|---|---|" + "---|" * len(px_idx)]
    for v in variants:
        e = s[v]
        delta = fmt_interval(e["vs_aspp"]["mean_iou"]) if "vs_aspp" in e else "—"
        runs = list(by_seed[v].values())
        lines.append(f"| {e['label']} | {e['params'] / 1e6:.2f}M | {len(runs)} | "
                     f"{fmt_mean_std([miou(r) for r in runs])} | {delta} | "
                     + " | ".join(fmt_mean_std([bf(i)(r) for r in runs]) for i in px_idx)
                     + " |")
    others = [v for v in variants if "vs_aspp" in s[v]]
    if others:
        lines += ["", "Boundary F-score, Δ vs ASPP [95 % CI], percentage points:", "",
                  "| model | seeds | " + " | ".join(f"Δ bF {labels[i]}" for i in px_idx) + " |",
                  "|---|---|" + "---|" * len(px_idx)]
        for v in others:
            e = s[v]
            lines.append(f"| {e['label']} | {len(e['vs_aspp']['seeds'])} | " + " | ".join(
                fmt_interval(e["vs_aspp"]["boundary_f"][labels[i]]) for i in px_idx) + " |")
    if frac_idx:
        lines += ["", "G-SCNN tolerances (fractions of the image diagonal, the paper's Table V; "
                  "their pixel equivalents at this label size in brackets, so equal brackets "
                  "give equal columns), bF % and Δ vs ASPP [95 % CI]:", "",
                  "| model | " + " | ".join(f"bF {labels[i]}" for i in frac_idx) + " |",
                  "|---|" + "---|" * len(frac_idx)]
        lines += mean_and_delta_rows(
            variants, s, by_seed, [(bf(i), "boundary_f", labels[i]) for i in frac_idx])
    small = [c for c in SMALL_CLASSES if c in class_names]
    if small:
        lines += ["", "Small classes, IoU % (mean ± std) and Δ vs ASPP [95 % CI]:", "",
                  "| model | " + " | ".join(small) + " |", "|---|" + "---|" * len(small)]
        lines += mean_and_delta_rows(
            variants, s, by_seed, [(iou(c), "per_class_iou", c) for c in small])
    all_seeds = sorted({r["seed"] for r in results})
    lines += ["", "mIoU % per seed:", "",
              "| model | " + " | ".join(f"seed {k}" for k in all_seeds) + " |",
              "|---|" + "---|" * len(all_seeds)]
    for v in variants:
        lines.append(f"| {s[v]['label']} | " + " | ".join(
            fmt_pct(by_seed[v][k]["mean_iou"]) if k in by_seed[v] else "—" for k in all_seeds)
            + " |")
    lines += ["", "Per-class IoU % (mean over seeds):", "",
              "| class | " + " | ".join(variants) + " |", "|---|" + "---|" * len(variants)]
    for c in class_names:
        lines.append(f"| {c} | " + " | ".join(
            fmt_pct(s[v]["per_class_iou"][c]["mean"], 1) for v in variants) + " |")
    run_minutes = sum((r.get("train_process_seconds") or r.get("train_seconds") or 0)
                      + r.get("eval_seconds", 0) for r in results) / 60
    summary["run_minutes_total"] = round(run_minutes, 1)
    machines = sorted({describe_machine(r.get("machine")) for r in results})
    summary["machines"] = machines
    loads = [x for r in results for x in (r.get("load_average_before") or [])[:1]
             + (r.get("load_average_after_train") or [])[:1]]
    lines += ["", f"Chance: uniformly random prediction {fmt_pct(chance_uniform)} % mIoU "
              f"(expected), always the most frequent class {fmt_pct(chance_majority)} %.", "",
              "Minutes per run (training process + evaluation): " + ", ".join(
                  f"{v} {mean_std([run_total_minutes(r) for r in by_seed[v].values()])[0]:.1f}"
                  for v in variants) + ".",
              f"Time: {len(results)} runs, {run_minutes:.0f} min of training + evaluation in "
              "all (finished runs are read back, not redone). Machine: "
              + "; ".join(machines)
              + (f"; 1-minute load average {min(loads):.1f}-{max(loads):.1f} around the runs"
                 if loads else "") + ".",
              f"Command: `{summary['command']}`"]
    return summary, "\n".join(lines)


def run_total_minutes(r):
    return ((r.get("train_process_seconds") or r.get("train_seconds") or 0)
            + r.get("eval_seconds", 0)) / 60


def describe_machine(info):
    if not info:
        return "unknown"
    if info.get("gpus"):
        return ", ".join(g["name"] for g in info["gpus"]) + " (GPU)"
    flags = [f for f in ("avx512f", "avx512_bf16", "amx_bf16") if f in info.get("cpu_flags", [])]
    best = flags[-1] if flags else ("avx2" if "avx2" in info.get("cpu_flags", []) else "no AVX2")
    cores = info.get("cpus_usable", info.get("cpu_count"))
    return f"{info.get('cpu_model') or 'CPU'}, {cores} cores, {best}"


def atomic_write_text(path, text):
    """Writes `path` through a temporary file and a rename (no half-written file on a kill)."""
    path = pathlib.Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def atomic_write_json(path, obj):
    atomic_write_text(path, json.dumps(obj, indent=2) + "\n")


def write_outputs(args, out, results, t_start):
    summary, markdown = summarise(args, results, time.time() - t_start)
    summary["runs"] = [{"variant": r["variant"], "seed": r["seed"], "mean_iou": r["mean_iou"],
                        "file": f"{r['variant']}-seed{r['seed']}.json"} for r in results]
    atomic_write_json(out / "results.json", summary)
    atomic_write_text(out / "results.md", markdown + "\n")
    if args.results:
        prefix = pathlib.Path(args.results)
        prefix.mkdir(parents=True, exist_ok=True)
        for r in results:
            atomic_write_json(prefix / f"{r['variant']}-seed{r['seed']}.json", r)
        atomic_write_json(prefix.with_name(prefix.name + ".json"), summary)
        atomic_write_text(prefix.with_name(prefix.name + ".md"), markdown + "\n")
    return markdown


def main(argv=None):
    args = build_parser().parse_args(argv)
    if min(args.boundary_px) < 1:
        print("camvid_ablation: --boundary-px takes whole pixels >= 1", file=sys.stderr)
        return 2
    if args.evaluate_run:
        evaluate_run(args, pathlib.Path(args.evaluate_run),
                     training_log_times(args.evaluate_run)[0], json.loads(args.run_info))
        return 0
    data_dir = pathlib.Path(args.data_dir)
    if not (data_dir / "train").is_dir() or not (data_dir / "val").is_dir():
        print(f"camvid_ablation: {data_dir} needs train/ and val/ folders "
              "(images/*.jpg + labels/*.png)", file=sys.stderr)
        return 2
    if REFERENCE not in args.variants + args.more_variants:
        print(f"camvid_ablation: the differences are paired against {REFERENCE!r}: "
              "list it in --variants", file=sys.stderr)
        return 2
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.time()
    budget = args.budget_minutes * 60
    plan = plan_runs(args)
    print(f"camvid ablation: {len(plan)} runs, budget "
          f"{f'{args.budget_minutes:g} min' if budget else 'none'}, output {out}", flush=True)
    results, durations = [], []
    for i, (seed, variant) in enumerate(plan):
        run_dir = out / f"{variant}-seed{seed}"
        done = run_dir / "eval.json"
        if done.exists():
            r = json.loads(done.read_text())
            r.update(variant=variant, seed=seed)
            results.append(r)
            print(f"[{i + 1}/{len(plan)}] {variant} seed {seed}: done earlier, "
                  f"mIoU {100 * r['mean_iou']:.2f}%", flush=True)
            continue
        if args.summarise_only:
            continue
        elapsed = time.time() - t_start
        estimate = max(durations) if durations else 0.0
        if budget and durations and elapsed + estimate > budget:
            print(f"budget: {elapsed / 60:.1f} of {args.budget_minutes:g} min used and a run takes "
                  f"~{estimate / 60:.1f} min; stopping before {variant} seed {seed} "
                  "(rerun with a larger --budget-minutes to continue)", flush=True)
            break
        print(f"[{i + 1}/{len(plan)}] {variant} seed {seed}: training "
              f"({elapsed / 60:.1f} min elapsed)", flush=True)
        t0 = time.time()
        load_before = list(os.getloadavg())
        resumed = (run_dir / "log.csv").exists()
        process_seconds = train_run(args, variant, seed, run_dir)
        train_seconds, seconds_per_step = training_log_times(run_dir)
        r = evaluate_run_subprocess(args, run_dir, {
            "variant": variant, "seed": seed, "resumed": resumed,
            "train_process_seconds": round(process_seconds, 1),
            "seconds_per_step": seconds_per_step, "load_average_before": load_before,
            "load_average_after_train": list(os.getloadavg())})
        durations.append(time.time() - t0)
        results.append(r)
        print(f"[{i + 1}/{len(plan)}] {variant} seed {seed}: mIoU {100 * r['mean_iou']:.2f}%, "
              f"train {process_seconds / 60:.1f} min, eval {r['eval_seconds'] / 60:.1f} min",
              flush=True)
        write_outputs(args, out, results, t_start)
    if not results:
        print("no run finished", file=sys.stderr)
        return 1
    try:
        markdown = write_outputs(args, out, results, t_start)
    except ValueError as err:
        print(f"camvid_ablation: {err}", file=sys.stderr)
        return 2
    print(markdown)
    print(f"wrote {out / 'results.md'} and {out / 'results.json'}"
          + (f", {args.results}.{{json,md}} and {args.results}/" if args.results else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
