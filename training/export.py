"""`keras-gald export`: write a saved model's inference graph as SavedModel / ONNX / TFLite.

    keras-gald export --model model.keras --format saved_model|onnx|tflite --out PATH \\
        [--normalization imagenet] [--opset 17] [--input-size H W]

* saved_model: serving signature takes uint8 RGB `(N, H, W, 3)` (normalised inside) and
  returns `class_ids` / `probabilities`; a `logits` signature takes normalised float32.
* onnx: input `images` normalised float32 NHWC (dynamic N, H, W) -> `logits`.
* tflite: float32, builtin ops only (runs in `ai_edge_litert`); `--input-size H W` is
  required (a GALD network at dynamic H, W would need Flex ops, which are refused).

The output is written under a temporary name and renamed into place; an existing `--out`
is replaced only with `--overwrite`. A converter error exits 1 and writes nothing.
"""

import os
import pathlib
import sys

from training import checks, errors

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def build_parser():
    p = errors.ArgumentParser(prog="keras-gald export", description=__doc__.split("\n")[0],
                              epilog=errors.EXIT_CODES_HELP)
    p.add_argument("--model", required=True, help="a .keras model file")
    p.add_argument("--format", required=True, choices=["saved_model", "onnx", "tflite"])
    p.add_argument("--out", required=True, help="output path (folder for saved_model)")
    p.add_argument("--normalization", default="imagenet", choices=["imagenet", "bgr_mean", "none"],
                   help="normalisation baked into the SavedModel uint8 signature")
    p.add_argument("--opset", type=int, default=17)
    p.add_argument("--input-size", type=int, nargs=2, default=None, metavar=("H", "W"),
                   help="TFLite: fixed input size (required: builtin ops only)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    errors.add_debug_flag(p)
    return p


@errors.command("keras-gald export")
def main(argv=None):
    args = build_parser().parse_args(argv)
    # Everything checkable is checked before TensorFlow starts.
    checks.require_file(args.model, "model file")
    out = pathlib.Path(args.out)
    if args.format == "saved_model":
        if out.exists() and not out.is_dir():
            raise errors.UserError(f"--out {out} exists and is not a directory")
        if out.is_dir() and any(out.iterdir()) and not args.overwrite:
            raise errors.UserError(f"--out {out} already exists; pass --overwrite to replace it")
    else:
        checks.output_file(out, "--out", overwrite=args.overwrite)
    if args.format == "tflite":
        if args.input_size is None:
            raise errors.UserError(
                "--format tflite needs --input-size H W: a GALD network at dynamic size "
                "needs TF Select (Flex) ops, which the LiteRT runtime lacks")
        if min(args.input_size) < 1:
            raise errors.UserError(f"--input-size must be positive, got {args.input_size}")
    if not 7 <= args.opset <= 21:
        raise errors.UserError(f"--opset must be between 7 and 21, got {args.opset}")

    from keras_gald import export
    from keras_gald.io import load_model

    model = load_model(args.model)
    if args.format == "tflite":
        minimum = _min_size(model)
        if minimum and min(args.input_size) < minimum:
            raise errors.UserError(
                f"--input-size {args.input_size[0]} {args.input_size[1]} is below the "
                f"network's minimum of {minimum} pixels")
    try:
        if args.format == "saved_model":
            norm = None if args.normalization == "none" else args.normalization
            path = export.to_saved_model(model, args.out, normalization=norm)
        elif args.format == "onnx":
            path = export.to_onnx(model, args.out, opset=args.opset)
        else:
            path = export.to_tflite(model, args.out, input_size=args.input_size,
                                    select_tf_ops=False)
    except export.TFLiteConversionError as err:
        raise errors.CommandFailed(f"{err} (nothing written to {args.out})") from err
    print(f"exported {args.format} to {path}")
    return 0


def _min_size(model):
    for layer in getattr(model, "layers", []):
        if hasattr(layer, "min_size"):
            return int(layer.min_size)
    inner = getattr(model, "_logits_model", None)
    return _min_size(inner) if inner is not None and inner is not model else None


if __name__ == "__main__":
    sys.exit(main())
