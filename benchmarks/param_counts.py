"""Parameter counts of the paper's configurations (Table IV / Table VI).

Usage: python benchmarks/param_counts.py [--json out.json]

Counts are for the inference graph (no auxiliary head) and, separately, the
auxiliary head; BatchNorm moving statistics are excluded, as PyTorch's
`sum(p.numel() for p in model.parameters())` excludes its buffers.
"""

import argparse
import json
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

from keras_gald.models import GALD  # noqa: E402

CONFIGS = [
    ("R50 FCN", dict(backbone="resnet50", ga=None, ld=None)),
    ("R50 +ASPP", dict(backbone="resnet50", ga="aspp", ld=None)),
    ("R50 +ASPP +LDv1", dict(backbone="resnet50", ga="aspp", ld="v1")),
    ("R50 +ASPP +LDv2", dict(backbone="resnet50", ga="aspp", ld="v2")),
    ("R101 +ASPP (FCN R101 row)", dict(backbone="resnet101", ga="aspp", ld=None)),
    ("R101 GALDv2 (ASPP+LDv2)", dict(backbone="resnet101", ga="aspp", ld="v2")),
]
PAPER = {
    "R50 +ASPP": "47.5M",
    "R50 +ASPP +LDv1": "+0.4M",
    "R50 +ASPP +LDv2": "+2.3M",
    "R101 +ASPP (FCN R101 row)": "65.4M",
    "R101 GALDv2 (ASPP+LDv2)": "66.8M",
}


def trainable_params(weights):
    return int(sum(np.prod(w.shape) for w in weights))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", help="write the counts to this JSON file")
    args = parser.parse_args()
    rows = []
    for label, kwargs in CONFIGS:
        model = GALD(num_classes=19, **kwargs)
        inference = model.inference_model()
        main_params = trainable_params(inference.trainable_weights)
        aux = trainable_params(model.trainable_weights) - main_params
        rows.append({"config": label, "params": main_params, "aux_head": aux, "paper": PAPER.get(label, "")})
        print(f"{label:28s} {main_params / 1e6:7.2f}M  (+aux head {aux / 1e6:.2f}M)  paper {PAPER.get(label, '-')}", flush=True)
    base = {r["config"]: r["params"] for r in rows}
    print(f"LDv1 over ASPP (R50): +{(base['R50 +ASPP +LDv1'] - base['R50 +ASPP']) / 1e6:.2f}M")
    print(f"LDv2 over ASPP (R50): +{(base['R50 +ASPP +LDv2'] - base['R50 +ASPP']) / 1e6:.2f}M")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
