"""The paper's GA/LD ablation (Table I-style) at small scale on CamVid, from scratch.

Trains, with the same recipe (`training/configs` `camvid`), step budget and seeds:

    fcn         dilated ResNet + 3x3 conv head (no global aggregation)
    aspp        + ASPP (GA)
    aspp_ldv1   + ASPP + LDv1
    aspp_ldv2   + ASPP + LDv2
    psp_ldv2, cgnl_ldv1   (optional, `--variants`)

then evaluates each on the validation split (same downscaled whole-image inference as
the recipe) with mIoU, per-class IoU and the boundary F-score at 3/5/9/12 px, and
writes `results.json` and `results.md` to `--out`.

Order is seed-major (every variant for seed 0, then seed 1, ...), so a budget that
runs out still leaves complete seeds. Before starting a run the script estimates
its duration from the runs already timed and stops when the wall-clock budget
(`--budget-minutes`) would be exceeded. Interrupted? Run the same command again:
finished runs are read back from `RUN/eval.json`, a run killed mid-training resumes
from its last checkpoint (`keras-gald train` resume), and the tables are rebuilt.

    python benchmarks/camvid_ablation.py --data-dir ../shared/data/camvid \\
        --budget-minutes 120 --seeds 0 1 2

`--quick` is a smoke test (a few steps, a few validation images).
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
DEFAULT_VARIANTS = ("fcn", "aspp", "aspp_ldv1", "aspp_ldv2")
BOUNDARY_PX = (3, 5, 9, 12)


def build_parser():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", default=str(REPO.parent / "shared" / "data" / "camvid"),
                   help="CamVid in train|val/images|labels layout (default ../shared/data/camvid)")
    p.add_argument("--budget-minutes", type=float, default=120.0,
                   help="wall-clock budget for the whole ablation (training + evaluation)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--variants", nargs="+", default=list(DEFAULT_VARIANTS),
                   choices=sorted(VARIANTS))
    p.add_argument("--config", default="camvid", help="training preset (default camvid)")
    p.add_argument("--steps", type=int, default=None, help="training steps (default: the preset's)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="extra TrainConfig overrides, same for every run")
    p.add_argument("--out", default=str(REPO / "runs" / "camvid_ablation"))
    p.add_argument("--quick", action="store_true", help="smoke test: 4 steps, 4 val images")
    return p


def mean_std(values):
    """-> (mean, sample std) of the non-None values; std None below two values."""
    values = [v for v in values if v is not None]
    if not values:
        return None, None
    mean = sum(values) / len(values)
    std = (math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))
           if len(values) > 1 else None)
    return mean, std


def fmt_mean_std(values, scale=100.0, digits=2):
    mean, std = mean_std(values)
    if mean is None:
        return "n/a"
    if std is None:
        return f"{scale * mean:.{digits}f}"
    return f"{scale * mean:.{digits}f} ± {scale * std:.{digits}f}"


def train_run(args, variant, seed, run_dir, extra_sets=()):
    """Trains one (variant, seed) in a subprocess (resumes from its checkpoints).

    `extra_sets`: further `KEY=VALUE` overrides, applied after `args.set`.
    """
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
        cmd += ["--set", item]
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


def evaluate_run(args, run_dir, train_seconds):
    import keras

    import keras_gald.models  # noqa: F401  (registers the custom objects)
    from keras_gald import data
    from keras_gald import evaluation

    config = json.loads((run_dir / "config.json").read_text())
    model = keras.saving.load_model(run_dir / "model.keras", compile=False)
    source = data.camvid(args.data_dir, "val")
    t0 = time.time()
    results = evaluation.evaluate(model, data.make_eval_dataset(source), source[1].num_classes,
                                  source[1].class_names, eval_scale=config["eval_scale"],
                                  boundary=True, boundary_thresholds=BOUNDARY_PX,
                                  max_images=4 if args.quick else 0)
    results["eval_seconds"] = round(time.time() - t0, 1)
    results["train_seconds"] = round(train_seconds, 1)
    results["params"] = int(model.count_params())
    results["steps"] = config["steps"]
    results["config"] = {k: config[k] for k in ("backbone", "ga", "ld", "crop_size", "batch_size",
                                                "lr", "loss", "seed", "eval_scale")}
    (run_dir / "eval.json").write_text(json.dumps(results, indent=2))
    return results


def chance_levels(confusion):
    """mIoU of a uniformly random predictor (expected) and of always predicting the
    most frequent class, from the validation label histogram."""
    import numpy as np

    counts = np.asarray(confusion, np.float64).sum(1)
    p = counts / counts.sum()
    k = len(p)
    uniform = float(np.mean(p / (1.0 + (k - 1) * p)))
    majority = float(p.max() / k)  # IoU of the majority class is p_max; others 0
    return uniform, majority


def summarise(args, results, wall_seconds):
    import numpy as np

    variants = [v for v in args.variants if any(r["variant"] == v for r in results)]
    class_names = results[0]["class_names"]
    chance_uniform, chance_majority = chance_levels(results[0]["confusion_matrix"])
    summary = {"variants": {}, "chance_miou_uniform": chance_uniform,
               "chance_miou_majority": chance_majority, "boundary_px": list(BOUNDARY_PX),
               "wall_seconds": round(wall_seconds, 1), "data_dir": args.data_dir,
               "command": " ".join(["python", "benchmarks/camvid_ablation.py"] + sys.argv[1:]),
               "runs": results}
    by_seed = {}
    for v in variants:
        runs = [r for r in results if r["variant"] == v]
        by_seed[v] = {r["seed"]: r for r in runs}
        miou = [r["mean_iou"] for r in runs]
        bf = np.array([r["boundary_f"]["mean_f"] for r in runs], np.float64)
        per_class = np.array([[np.nan if r["per_class_iou"][c] is None else r["per_class_iou"][c]
                               for c in class_names] for r in runs], np.float64)
        summary["variants"][v] = {
            "label": VARIANTS[v]["label"], "seeds": [r["seed"] for r in runs],
            "mean_iou": mean_std(miou), "mean_iou_per_seed": miou,
            "boundary_f": [mean_std(list(bf[:, t])) for t in range(len(BOUNDARY_PX))],
            "per_class_iou_mean": dict(zip(class_names, np.nanmean(per_class, 0).tolist())),
            "params": runs[0]["params"],
            "train_minutes_per_run": float(np.mean([r["train_seconds"] for r in runs]) / 60),
        }
    # Paired differences against the ASPP model, seed by seed (same data order and init seed).
    if "aspp" in by_seed:
        for v in variants:
            common = sorted(set(by_seed[v]) & set(by_seed["aspp"]))
            if v == "aspp" or not common:
                continue
            d_miou = [by_seed[v][s]["mean_iou"] - by_seed["aspp"][s]["mean_iou"] for s in common]
            d_bf = [by_seed[v][s]["boundary_f"]["mean_f"][0]
                    - by_seed["aspp"][s]["boundary_f"]["mean_f"][0] for s in common]
            summary["variants"][v]["vs_aspp"] = {"seeds": common, "d_mean_iou": d_miou,
                                                 "d_boundary_f_3px": d_bf}

    lines = [f"CamVid val ({results[0]['num_images']} images, 11 classes), trained from scratch, "
             f"{results[0]['steps']} steps each; mean ± sample std over seeds.", "",
             "| model | params | seeds | mIoU % | Δ mIoU vs ASPP (paired) | "
             + " | ".join(f"bF {px}px %" for px in BOUNDARY_PX) + " | train min/run |",
             "|---|---|---|---|---|" + "---|" * len(BOUNDARY_PX) + "---|"]
    for v in variants:
        s = summary["variants"][v]
        runs = [r for r in results if r["variant"] == v]
        delta = "—"
        if "vs_aspp" in s:
            delta = fmt_mean_std(s["vs_aspp"]["d_mean_iou"])
            if not delta.startswith("-"):
                delta = "+" + delta
        bfs = [fmt_mean_std([r["boundary_f"]["mean_f"][t] for r in runs])
               for t in range(len(BOUNDARY_PX))]
        lines.append(f"| {s['label']} | {s['params'] / 1e6:.2f}M | {len(runs)} | "
                     f"{fmt_mean_std(s['mean_iou_per_seed'])} | {delta} | " + " | ".join(bfs)
                     + f" | {s['train_minutes_per_run']:.1f} |")
    lines += ["", f"Chance: uniformly random prediction {100 * chance_uniform:.2f} % mIoU "
              f"(expected), always the most frequent class {100 * chance_majority:.2f} %.", "",
              "Per-class IoU % (mean over seeds):", "",
              "| class | " + " | ".join(variants) + " |", "|---|" + "---|" * len(variants)]
    for c in class_names:
        lines.append(f"| {c} | " + " | ".join(
            f"{100 * summary['variants'][v]['per_class_iou_mean'][c]:.1f}" for v in variants) + " |")
    run_minutes = sum(r["train_seconds"] + r["eval_seconds"] for r in results) / 60
    summary["run_minutes_total"] = round(run_minutes, 1)
    lines += ["", f"Time: {len(results)} runs, {run_minutes:.0f} min of training + evaluation in "
              f"all (wall time of this invocation {wall_seconds / 60:.1f} min; finished runs "
              "are read back, not redone). "
              f"Command: `{summary['command']}`"]
    markdown = "\n".join(lines)
    return summary, markdown


def main(argv=None):
    args = build_parser().parse_args(argv)
    data_dir = pathlib.Path(args.data_dir)
    if not (data_dir / "train").is_dir() or not (data_dir / "val").is_dir():
        print(f"camvid_ablation: {data_dir} needs train/ and val/ folders "
              "(images/*.jpg + labels/*.png)", file=sys.stderr)
        return 2
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.time()
    budget = args.budget_minutes * 60
    plan = [(seed, v) for seed in args.seeds for v in args.variants]
    print(f"camvid ablation: {len(plan)} runs ({len(args.seeds)} seeds x {len(args.variants)} "
          f"variants), budget {args.budget_minutes:g} min, output {out}", flush=True)
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
        elapsed = time.time() - t_start
        estimate = max(durations) if durations else 0.0
        if durations and elapsed + estimate > budget:
            print(f"budget: {elapsed / 60:.1f} of {args.budget_minutes:g} min used and a run takes "
                  f"~{estimate / 60:.1f} min; stopping before {variant} seed {seed} "
                  "(rerun with a larger --budget-minutes to continue)", flush=True)
            break
        print(f"[{i + 1}/{len(plan)}] {variant} seed {seed}: training "
              f"({elapsed / 60:.1f} min elapsed)", flush=True)
        t0 = time.time()
        train_seconds = train_run(args, variant, seed, run_dir)
        r = evaluate_run(args, run_dir, train_seconds)
        durations.append(time.time() - t0)
        r.update(variant=variant, seed=seed)
        results.append(r)
        print(f"[{i + 1}/{len(plan)}] {variant} seed {seed}: mIoU {100 * r['mean_iou']:.2f}%, "
              f"bF@3px {100 * r['boundary_f']['mean_f'][0]:.2f}%, "
              f"train {train_seconds / 60:.1f} min", flush=True)
        summary, markdown = summarise(args, results, time.time() - t_start)
        (out / "results.json").write_text(json.dumps(summary, indent=2))
        (out / "results.md").write_text(markdown + "\n")
    if not results:
        print("no run finished", file=sys.stderr)
        return 1
    summary, markdown = summarise(args, results, time.time() - t_start)
    (out / "results.json").write_text(json.dumps(summary, indent=2))
    (out / "results.md").write_text(markdown + "\n")
    print(markdown)
    print(f"wrote {out / 'results.md'} and {out / 'results.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
