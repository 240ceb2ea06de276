"""Choosing the CamVid-from-scratch recipe: validation mIoU at a fixed CPU budget.

Each candidate (backbone width/depth x input resolution x scale augmentation) of the
FCN + ASPP network gets the same wall-clock training budget on this machine:

1. a pilot run (60 steps, discarded) measures its seconds per training step;
2. the real run trains `budget / step_time` steps, so the poly LR schedule runs to
   its end inside the budget, then is evaluated on `val` (mIoU, boundary F).

Every run uses the recipe's fixed parts: OHEM (thresh 0.7, min_kept = 8.5 % of the
pixels of a batch: the authors' 100000 of 2 x 769^2 per GPU) + auxiliary loss 0.4,
SGD momentum 0.9, LR 0.05 poly 0.9, batch 8, random scale / crop / flip. The best
mIoU within the budget is the recipe (`training/configs` `camvid_lowres`). Results go to
`--out` as `sweep.json` and `sweep.md`; finished candidates are read back on rerun.

    python benchmarks/camvid_recipe_sweep.py --data-dir ../shared/data/camvid \\
        --budget-minutes-per-run 5

Candidates are compared with one seed: the ablation's seed spread (`README`) says
which differences are beyond noise.
"""

import argparse
import csv
import json
import pathlib
import sys

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
sys.path.insert(0, str(REPO))

import camvid_ablation as ablation  # noqa: E402

OHEM_KEEP_FRACTION = 0.085


def candidate(name, backbone, base_scale, crop, scale_factors=(0.8, 1.2)):
    lo, hi = scale_factors
    return dict(name=name, backbone=backbone, base_scale=base_scale, crop=crop,
                scale_range=(round(base_scale * lo, 4), round(base_scale * hi, 4)))


CANDIDATES = [
    candidate("tiny@0.375", "resnet_tiny", 0.375, (112, 144)),
    candidate("small@0.375", "resnet_small", 0.375, (112, 144)),
    candidate("small@0.5", "resnet_small", 0.5, (144, 192)),
    candidate("small_x2@0.375", "resnet_small_x2", 0.375, (112, 144)),
    candidate("small_x2@0.5", "resnet_small_x2", 0.5, (144, 192)),
    candidate("small_x4@0.375", "resnet_small_x4", 0.375, (112, 144)),
    # Added after the six above had run: the cheapest network led, so go cheaper
    # still, and try the paper's 0.5-2.0 scale augmentation on the leader.
    candidate("tiny@0.25", "resnet_tiny", 0.25, (80, 112)),
    candidate("tiny@0.5", "resnet_tiny", 0.5, (144, 192)),
    candidate("tiny@0.375 paper-scale", "resnet_tiny", 0.375, (112, 144), (0.5, 2.0)),
]


def overrides(c, batch_size=8):
    pixels = c["crop"][0] * c["crop"][1] * batch_size
    return [f"backbone={c['backbone']}", f"crop_size={c['crop'][0]},{c['crop'][1]}",
            f"scale_range={c['scale_range'][0]},{c['scale_range'][1]}",
            f"eval_scale={c['base_scale']}", "loss=ohem", "ohem_thresh=0.7",
            f"ohem_min_kept={int(round(OHEM_KEEP_FRACTION * pixels))}", "aux_head=true",
            f"batch_size={batch_size}"]


def seconds_per_step(log_csv):
    """Training seconds per step between the first and last logged checkpoint
    (the first interval holds graph tracing and is left out)."""
    with open(log_csv, newline="") as f:
        rows = list(csv.DictReader(f))
    if len(rows) < 2:
        raise RuntimeError(f"{log_csv}: need two logged intervals to time a step")
    first, last = rows[0], rows[-1]
    return ((float(last["train_seconds"]) - float(first["train_seconds"]))
            / (float(last["step"]) - float(first["step"])))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", default=str(REPO.parent / "shared" / "data" / "camvid"))
    p.add_argument("--budget-minutes-per-run", type=float, default=5.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--only", nargs="+", help="candidate names to run (default all)")
    p.add_argument("--out", default=str(REPO / "runs" / "camvid_recipe_sweep"))
    p.add_argument("--quick", action="store_true", help="smoke test: tiny pilot and budget")
    args = p.parse_args(argv)
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    # The ablation's helpers read these fields.
    run_args = argparse.Namespace(config="camvid_lowres", data_dir=args.data_dir, steps=None,
                                  quick=args.quick, set=[])
    budget = args.budget_minutes_per_run * 60
    chosen = [c for c in CANDIDATES if not args.only or c["name"] in args.only]
    results = []
    for i, c in enumerate(chosen):
        slug = c["name"].replace("@", "_s").replace(" ", "_")
        run_dir = out / slug
        done = run_dir / "eval.json"
        if done.exists():
            r = json.loads(done.read_text())
            print(f"[{i + 1}/{len(chosen)}] {c['name']}: done earlier, "
                  f"mIoU {100 * r['mean_iou']:.2f}%", flush=True)
            results.append(r)
            continue
        pilot_dir = out / f"{slug}.pilot"
        pilot_steps = 6 if args.quick else 60
        if not (pilot_dir / "log.csv").exists() or not (pilot_dir / "metrics.json").exists():
            print(f"[{i + 1}/{len(chosen)}] {c['name']}: pilot ({pilot_steps} steps)", flush=True)
            ablation.train_run(run_args, "aspp", args.seed, pilot_dir, extra_sets=overrides(c) + [
                f"steps={pilot_steps}", f"checkpoint_every={pilot_steps // 3}",
                "eval_max_images=1", "resume=false"])
        step_seconds = seconds_per_step(pilot_dir / "log.csv")
        steps = 8 if args.quick else max(50, int(budget / step_seconds) // 50 * 50)
        print(f"[{i + 1}/{len(chosen)}] {c['name']}: {step_seconds:.3f} s/step -> {steps} steps "
              f"in {args.budget_minutes_per_run:g} min", flush=True)
        extra = overrides(c) + [f"steps={steps}", f"checkpoint_every={min(50, steps)}"]
        train_seconds = ablation.train_run(run_args, "aspp", args.seed, run_dir, extra_sets=extra)
        r = ablation.evaluate_run(run_args, run_dir, train_seconds)
        r.update(candidate=c, seconds_per_step=step_seconds)
        done.write_text(json.dumps(r, indent=2))
        print(f"[{i + 1}/{len(chosen)}] {c['name']}: mIoU {100 * r['mean_iou']:.2f}%, "
              f"bF@3px {100 * ablation.boundary_f_at(r, 3):.2f}%", flush=True)
        results.append(r)

    lines = [f"CamVid val, FCN + ASPP from scratch, OHEM + aux, seed {args.seed}, "
             f"~{args.budget_minutes_per_run:g} min of training per candidate on this machine.",
             "", "| candidate | backbone | scale (train range) | crop | params | s/step | steps | "
             "train min | mIoU % | bF@3px % |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        c = r["candidate"]
        lines.append(
            f"| {c['name']} | {c['backbone']} | {c['base_scale']} ({c['scale_range'][0]}-"
            f"{c['scale_range'][1]}) | {c['crop'][0]}x{c['crop'][1]} | {r['params'] / 1e6:.2f}M | "
            f"{r['seconds_per_step']:.3f} | {r['steps']} | {r['train_seconds'] / 60:.1f} | "
            f"{100 * r['mean_iou']:.2f} | {100 * ablation.boundary_f_at(r, 3):.2f} |")
    if results:
        best = max(results, key=lambda r: r["mean_iou"])
        lines += ["", f"Best within the budget: {best['candidate']['name']} "
                  f"({100 * best['mean_iou']:.2f} % mIoU).",
                  "Command: `python benchmarks/camvid_recipe_sweep.py "
                  + " ".join(sys.argv[1:]) + "`"]
    markdown = "\n".join(lines)
    (out / "sweep.md").write_text(markdown + "\n")
    (out / "sweep.json").write_text(json.dumps(results, indent=2))
    print(markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
