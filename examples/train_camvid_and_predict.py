"""Train a small GALD on a CamVid-layout folder, then draw predictions for a few
validation images.

The folder needs `train/` and `val/`, each with `images/*.jpg|png` and
`labels/*.png` (CamVid SegNet class ids 0-10, 11 = void). The recipe is
`training/configs` `camvid_lowres` (resnet_tiny at 0.375 scale, OHEM + aux, 1400 steps;
ASPP + LDv1 here); its training times and mIoU on 2 CPU cores are in the README's
"CamVid from scratch" section.

    python examples/train_camvid_and_predict.py --data-dir ../shared/data/camvid \
        --out runs/camvid_example --images 4

Writes `OUT/train/` (the training run: checkpoints, log.csv, model.keras,
metrics.json) and `OUT/predictions/examples/*.png` (input | prediction | ground
truth | errors) plus `OUT/predictions/metrics.json`.
"""

import argparse
import json
import pathlib
import sys

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", required=True, help="CamVid-layout folder")
    p.add_argument("--out", default="runs/camvid_example")
    p.add_argument("--steps", type=int, default=None, help="training steps (recipe: 1400)")
    p.add_argument("--ld", default="v1", choices=["v1", "v2", "none"], help="local distribution")
    p.add_argument("--images", type=int, default=4, help="validation images to draw")
    args = p.parse_args(argv)

    from training import train

    out = pathlib.Path(args.out)
    train_args = ["--config", "camvid_lowres", "--data-dir", args.data_dir,
                  "--run-dir", str(out / "train"), "--set", f"ld={args.ld}",
                  "--set", "export_saved_model=false"]
    if args.steps:
        train_args += ["--steps", str(args.steps)]
    train.main(train_args)  # resumes if OUT/train already has checkpoints

    import keras

    import keras_gald.models  # noqa: F401  (registers the custom objects)
    from keras_gald import data
    from training.evaluate import evaluate, summary_text

    config = json.loads((out / "train" / "config.json").read_text())
    model = keras.saving.load_model(out / "train" / "model.keras", compile=False)
    # The recipe trains at ~0.4 scale: infer at the same scale (logits are resized back).
    results = evaluate(model, data.camvid(args.data_dir, "val"), eval_scale=config["eval_scale"],
                       limit=args.images, images_to_show=args.images,
                       out=out / "predictions")
    print(summary_text(results))
    print(f"pictures in {out / 'predictions' / 'examples'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
