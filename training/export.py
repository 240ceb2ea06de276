"""`keras-gald export`: write a saved model's inference graph as SavedModel / ONNX / TFLite.

    keras-gald export --model model.keras --format saved_model|onnx|tflite --out PATH \\
        [--normalization imagenet] [--opset 17] [--input-size H W]

* saved_model: serving signature takes uint8 RGB `(N, H, W, 3)` (normalised inside) and
  returns `class_ids` / `probabilities`; a `logits` signature takes normalised float32.
* onnx: input `images` normalised float32 NHWC (dynamic N, H, W) -> `logits`.
* tflite: float32; `--input-size H W` fixes the input (needed for a builtin-ops-only
  GALD model; dynamic H, W need the Flex delegate).
"""

import argparse
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def build_parser():
    p = argparse.ArgumentParser(prog="keras-gald export", description=__doc__.split("\n")[0])
    p.add_argument("--model", required=True, help="a .keras model file")
    p.add_argument("--format", required=True, choices=["saved_model", "onnx", "tflite"])
    p.add_argument("--out", required=True, help="output path (folder for saved_model)")
    p.add_argument("--normalization", default="imagenet", choices=["imagenet", "bgr_mean", "none"],
                   help="normalisation baked into the SavedModel uint8 signature")
    p.add_argument("--opset", type=int, default=17)
    p.add_argument("--input-size", type=int, nargs=2, default=None, metavar=("H", "W"),
                   help="TFLite: fixed input size (default dynamic)")
    return p


def main(argv=None):
    args = build_parser().parse_args(argv)
    import keras

    import keras_gald.models  # noqa: F401  (registers the serializable layers)
    from keras_gald import export

    model = keras.saving.load_model(args.model, compile=False)
    if args.format == "saved_model":
        norm = None if args.normalization == "none" else args.normalization
        path = export.to_saved_model(model, args.out, normalization=norm)
    elif args.format == "onnx":
        path = export.to_onnx(model, args.out, opset=args.opset)
    else:
        path = export.to_tflite(model, args.out, input_size=args.input_size)
    print(f"exported {args.format} to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
