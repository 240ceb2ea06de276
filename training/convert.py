"""`keras-gald convert`: the authors' PyTorch GALD checkpoint -> a Keras `.keras` model.

    keras-gald convert GALD_res101.pth --depth 101 --num-classes 19 --out gald101.keras
    python -m training.convert GALD_res50.npz --depth 50 --out gald50.keras --upsample-logits

Builds `keras_gald.models.official.official_gald_v1(depth, num_classes)`,
loads the checkpoint with
`keras_gald.convert.official.load_official_state_dict` (strict unless
`--lenient`), prints the load report and saves the model. `.pth` files need
PyTorch; `.npz` files (`np.savez(path, **{k: v.numpy() for k, v in
state_dict.items()})`) do not.

Exit status: 0 on success, 1 when the checkpoint does not fit (the report
names the missing / unexpected / mismatched keys) or cannot be read, or when
`--lenient` loaded no tensor at all (the result would be a random model), 2 on
bad arguments. The model is written under a temporary name and renamed; an
existing `--out` is replaced only with `--overwrite`.
"""

import os
import sys

from training import checks, errors


def build_parser():
    parser = errors.ArgumentParser(
        prog="keras-gald convert", epilog=errors.EXIT_CODES_HELP,
        description="Convert the GALD authors' PyTorch checkpoint (GALD_res50/101) to a Keras model.",
    )
    parser.add_argument("checkpoint", help="the authors' state_dict: .pth/.pt (needs PyTorch) or .npz")
    parser.add_argument("--depth", type=int, choices=(50, 101), default=101, help="ResNet depth (default 101)")
    parser.add_argument("--num-classes", type=int, default=19, help="number of classes (default 19)")
    parser.add_argument("--out", required=True, help="output Keras model file (.keras)")
    parser.add_argument(
        "--upsample-logits",
        action="store_true",
        help="end the network with a bilinear (align_corners=True) resize of the 1/8 logits "
        "to the input size",
    )
    parser.add_argument(
        "--no-aux-head",
        action="store_true",
        help="leave out the training-only dsn head (its checkpoint keys are ignored)",
    )
    parser.add_argument(
        "--lenient",
        action="store_true",
        help="load what matches; missing/mismatched weights keep their initialisation "
        "(also allows backbone-only checkpoints)",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    errors.add_debug_flag(parser)
    return parser


@errors.command("keras-gald convert")
def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.out.endswith(".keras"):
        parser.error(f"--out must end with .keras, got {args.out!r}")
    if args.num_classes < 1:
        parser.error(f"--num-classes must be >= 1, got {args.num_classes}")
    checks.require_file(args.checkpoint, "checkpoint")
    checks.output_file(args.out, "--out", overwrite=args.overwrite)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

    from keras_gald.convert.official import OfficialCheckpointError, load_official_state_dict
    from keras_gald.models.official import official_gald_v1

    model = official_gald_v1(
        depth=args.depth,
        num_classes=args.num_classes,
        upsample_logits=args.upsample_logits,
        aux_head=not args.no_aux_head,
    )
    try:
        report = load_official_state_dict(model, args.checkpoint, strict=not args.lenient)
    except OfficialCheckpointError as error:
        print(error.report, file=sys.stderr)
        print(
            f"keras-gald convert: error: {args.checkpoint} does not fit official_gald_v1(depth={args.depth}, "
            f"num_classes={args.num_classes}); check --depth / --num-classes, or pass --lenient",
            file=sys.stderr,
        )
        return 1
    except (OSError, ImportError, ValueError, TypeError) as error:
        print(f"keras-gald convert: error: {error}", file=sys.stderr)
        return 1
    print(report)
    if not report.loaded:
        print(f"keras-gald convert: error: no tensor of {args.checkpoint} fits "
              f"official_gald_v1(depth={args.depth}, num_classes={args.num_classes}) (0 loaded); "
              "nothing saved", file=sys.stderr)
        return 1
    if report.untouched and not args.lenient:
        print(
            "keras-gald convert: error: the checkpoint has no weights for "
            f"{len(report.untouched)} layers ({', '.join(report.untouched[:6])}, ...); "
            "pass --lenient to save a model whose other layers keep their initialisation",
            file=sys.stderr,
        )
        return 1
    from keras_gald.io import save_model

    save_model(model, args.out)
    print(f"saved {args.out} ({model.count_params():,} weights)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
