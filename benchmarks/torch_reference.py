"""PyTorch twins of the keras_gald networks, for timing comparisons only.

Written from scratch for `benchmarks/speed.py` (not derived from the GALD
authors' code): the same layer shapes, parameter counts and FLOPs as the
Keras models, with PyTorch's default random initialisation (no weights are
ever loaded; the numbers these networks compute are meaningless).

Networks (NCHW modules; run them with `torch.channels_last` tensors):

* `DilatedResNet`: `keras_gald.backbones.build_resnet` - ResNet v1
  bottlenecks (stride on the 3x3 conv, no conv biases), deep stem (3x 3x3
  convs, ceil-mode max-pool) or classic stem, output stride 8/16/32 with
  multi-grid on layer4; returns `(layer3, layer4)`.
* `GALDNet`: `keras_gald.models.GALD(backbone, ga, ld, ...)` for `ga` in
  `aspp`, `cgnl`, `None` and `ld` in `v1`, `v2`, `None` (arrangement
  "gald"): GA -> LD -> concat with X -> 3x3 conv 512 + BN + ReLU + Dropout ->
  1x1 classifier -> bilinear upsample (half-pixel) to the input size; aux head
  (3x3 256 + BN + ReLU + Dropout + 1x1) on layer3 in training mode.
* `OfficialGALDv1`: `keras_gald.models.official_gald_v1(depth)` - the
  authors' GALD v1 (conva -> GALDBlock(down, CGNL, upsample, LDv1) -> convb ->
  concat -> bottleneck -> classifier; `dsn` aux head).

In `eval()` mode every network returns the logits; in `train()` mode a dict
`{"logits", "aux_logits"}` (as `keras_gald.models.Segmenter` does with
`training=True`).

`compare_param_counts(keras_model, torch_model)` checks both against each
other (trainable Keras weights vs `torch.nn.Module.parameters()`; BatchNorm
moving statistics are buffers on both sides and excluded).

Usage (parameter-count check, from the repository root; needs `pip install
torch==2.13.0`, i.e. `pip install -e .[bench]`):
    python benchmarks/torch_reference.py --backbone resnet50 --ga aspp --ld v2
    python benchmarks/torch_reference.py --official 101
"""

import argparse
import math
import os
import pathlib
import sys

import torch
import torch.nn.functional as F
from torch import nn

# The Keras side's count (no TensorFlow import at module level); benchmarks/ is on
# sys.path whether this file runs as a script or is imported by one.
from common.models import keras_param_counts

# Mirrors keras_gald.backbones.resnet.BACKBONES (kept separate so this file
# imports without TensorFlow); the parameter-count check catches any drift.
BACKBONES = {
    "resnet50": dict(blocks=(3, 4, 6, 3), planes=(64, 128, 256, 512), stem_width=64),
    "resnet101": dict(blocks=(3, 4, 23, 3), planes=(64, 128, 256, 512), stem_width=64),
    "resnet_tiny": dict(blocks=(1, 1, 1, 1), planes=(4, 8, 16, 32), stem_width=4),
    "resnet_small": dict(blocks=(2, 2, 2, 3), planes=(4, 8, 16, 32), stem_width=4),
}
EXPANSION = 4
# Per output stride: (stride, dilation) of layer1..layer4 before multi-grid.
STAGE_LAYOUT = {
    8: [(1, 1), (2, 1), (1, 2), (1, 4)],
    16: [(1, 1), (2, 1), (2, 1), (1, 2)],
    32: [(1, 1), (2, 1), (2, 1), (2, 1)],
}
ASPP_RATES = {8: (12, 24, 36), 16: (6, 12, 18), 32: (3, 6, 9)}
BN_EPS = 1e-5


def conv_bn_relu(cin, cout, kernel, stride=1, padding=None, dilation=1, bias=False, relu=True,
                 groups=1):
    """`Conv2d -> BatchNorm2d(eps 1e-5) [-> ReLU]`; padding defaults to 'same' for odd kernels."""
    if padding is None:
        padding = dilation * (kernel - 1) // 2
    layers = [
        nn.Conv2d(cin, cout, kernel, stride=stride, padding=padding, dilation=dilation, bias=bias,
                  groups=groups),
        nn.BatchNorm2d(cout, eps=BN_EPS),
    ]
    if relu:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


# ----------------------------------------------------------------- backbone


class Bottleneck(nn.Module):
    """ResNet v1 bottleneck, stride (or dilation) on the 3x3 conv."""

    def __init__(self, cin, planes, stride, dilation, downsample):
        super().__init__()
        cout = planes * EXPANSION
        self.conv1 = conv_bn_relu(cin, planes, 1)
        self.conv2 = conv_bn_relu(planes, planes, 3, stride=stride, dilation=dilation)
        self.conv3 = conv_bn_relu(planes, cout, 1, relu=False)
        self.downsample = (
            conv_bn_relu(cin, cout, 1, stride=stride, padding=0, relu=False) if downsample else None
        )

    def forward(self, x):
        shortcut = x if self.downsample is None else self.downsample(x)
        return F.relu(self.conv3(self.conv2(self.conv1(x))) + shortcut)


class DilatedResNet(nn.Module):
    """Dilated ResNet v1 backbone; `forward(x) -> (layer3, layer4)`.

    Args:
        name: a key of `BACKBONES`.
        output_stride: 8, 16 or 32.
        multi_grid: dilation multipliers of layer4's blocks (block `i` uses
            `multi_grid[i % len]`).
        stem: `"deep"` (3x3 s2, 3x3, 3x3 to 2w channels; ceil-mode max-pool)
            or `"classic"` (7x7 s2; floor-mode max-pool).
    """

    def __init__(self, name="resnet101", output_stride=8, multi_grid=(1, 2, 4), stem="deep"):
        super().__init__()
        spec = BACKBONES[name]
        width = spec["stem_width"]
        if stem == "deep":
            self.stem = nn.Sequential(
                conv_bn_relu(3, width, 3, stride=2),
                conv_bn_relu(width, width, 3),
                conv_bn_relu(width, 2 * width, 3),
                nn.MaxPool2d(3, 2, 1, ceil_mode=True),
            )
            cin = 2 * width
        elif stem == "classic":
            self.stem = nn.Sequential(
                conv_bn_relu(3, width, 7, stride=2),
                nn.MaxPool2d(3, 2, 1, ceil_mode=False),
            )
            cin = width
        else:
            raise ValueError(f"unknown stem {stem!r}")
        stages = []
        for stage, ((stride, dilation), n_blocks, planes) in enumerate(
            zip(STAGE_LAYOUT[output_stride], spec["blocks"], spec["planes"]), start=1
        ):
            blocks = []
            for b in range(n_blocks):
                grid = multi_grid[b % len(multi_grid)] if stage == 4 else 1
                downsample = b == 0 and (stride != 1 or cin != planes * EXPANSION)
                blocks.append(
                    Bottleneck(cin, planes, stride if b == 0 else 1, dilation * grid, downsample)
                )
                cin = planes * EXPANSION
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.channels = (spec["planes"][2] * EXPANSION, spec["planes"][3] * EXPANSION)

    def forward(self, x):
        x = self.layer2(self.layer1(self.stem(x)))
        stage3 = self.layer3(x)
        return stage3, self.layer4(stage3)


# ------------------------------------------------------------- GA / LD blocks


class ASPP(nn.Module):
    """keras_gald.layers.ASPP: [image pool, 1x1, 3x3 @ rates] -> concat -> 1x1 -> Dropout2d."""

    def __init__(self, cin, filters=256, rates=(12, 24, 36), dropout=0.1):
        super().__init__()
        self.pool_branch = conv_bn_relu(cin, filters, 1)
        self.branches = nn.ModuleList(
            [conv_bn_relu(cin, filters, 1)]
            + [conv_bn_relu(cin, filters, 3, dilation=r) for r in rates]
        )
        self.bottleneck = conv_bn_relu((2 + len(rates)) * filters, filters, 1)
        self.dropout = nn.Dropout2d(dropout)

    def forward(self, x):
        pooled = self.pool_branch(F.adaptive_avg_pool2d(x, 1))
        outs = [F.interpolate(pooled, size=x.shape[2:], mode="bilinear", align_corners=True)]
        outs += [branch(x) for branch in self.branches]
        return self.dropout(self.bottleneck(torch.cat(outs, 1)))


class LDv1(nn.Module):
    """keras_gald.layers.LDv1: mask from log2(d) depthwise 3x3 stride-2 convs.

    `padding=1, final_relu=False, align_corners=False` are the paper defaults
    (the library's); `padding=0, final_relu=True, align_corners=True` the
    authors' `LocalAttenModule`. Returns `x * M + x`.
    """

    def __init__(self, channels, downsample_rate=8, padding=1, final_relu=False,
                 align_corners=False):
        super().__init__()
        n = int(math.log2(downsample_rate))
        # Depthwise 3x3 stride 2 with bias -> BN; the ReLU is applied in forward.
        self.convs = nn.ModuleList(
            [
                conv_bn_relu(channels, channels, 3, stride=2, padding=padding, bias=True,
                             relu=False, groups=channels)
                for _ in range(n)
            ]
        )
        self.final_relu = final_relu
        self.align_corners = align_corners

    def forward(self, x):
        y = x
        for i, block in enumerate(self.convs):
            y = block(y)
            if i < len(self.convs) - 1 or self.final_relu:
                y = F.relu(y)
        y = F.interpolate(y, size=x.shape[2:], mode="bilinear", align_corners=self.align_corners)
        return x * torch.sigmoid(y) + x


class LDv2(nn.Module):
    """keras_gald.layers.LDv2 (impl="slices", padding="zeros", combine="concat").

    q, k, v = 1x1 convs (with bias) of concat(X_g, X_l); each position attends
    over a k x k neighbourhood with dilation r (zero-padded keys/values): the
    logits of neighbour n are `sum_c q * shift_n(k)`, the output
    `sum_n softmax_n * shift_n(v)`; then 1x1 conv (no bias) + BN + ReLU and
    concat with X_l. Shifted slices of once-padded maps, so no k^2-fold copy
    of k or v is built. `fold_output=True` (default, as keras_gald's
    `LDv2.folds_output_projection`) applies the output 1x1 conv per head
    before the neighbourhood sum, folded into the value conv, when that
    narrows the summed values (`heads * C_out < value_channels`); same numbers,
    same parameters.
    """

    def __init__(self, global_channels, local_channels, kernel_size=5, dilation=3,
                 key_channels=256, value_channels=512, out_channels=None, num_heads=1,
                 combine="concat", fold_output=True):
        super().__init__()
        cin = global_channels + local_channels
        self.query = nn.Conv2d(cin, key_channels, 1)
        self.key = nn.Conv2d(cin, key_channels, 1)
        self.value = nn.Conv2d(cin, value_channels, 1)
        self.out = conv_bn_relu(value_channels, out_channels or global_channels, 1)
        self.heads = num_heads
        self.scale = 1.0 / math.sqrt(key_channels // num_heads)
        half = (kernel_size - 1) // 2
        self.offsets = [
            ((i - half) * dilation, (j - half) * dilation)
            for i in range(kernel_size)
            for j in range(kernel_size)
        ]
        self.pad = half * dilation
        self.combine = combine
        self.fold = fold_output and num_heads * (out_channels or global_channels) < value_channels

    def _shifted(self, padded, height, width):
        p = self.pad
        for dy, dx in self.offsets:
            yield padded[..., p + dy : p + dy + height, p + dx : p + dx + width]

    def forward(self, x_global, x_local):
        x = torch.cat([x_global, x_local], 1)
        height, width = x.shape[2:]
        # (N, C, H, W) -> (N, heads, C / heads, H, W)
        split = lambda t: t.unflatten(1, (self.heads, -1))
        q = split(self.query(x)) * self.scale
        k = split(F.pad(self.key(x), [self.pad] * 4))
        v = split(F.pad(self._folded_value(x) if self.fold else self.value(x), [self.pad] * 4))
        logits = torch.stack([(q * k_n).sum(2) for k_n in self._shifted(k, height, width)], 2)
        weights = torch.softmax(logits, 2)  # (N, heads, K, H, W)
        out = None
        for n, v_n in enumerate(self._shifted(v, height, width)):
            term = weights[:, :, n : n + 1] * v_n
            out = term if out is None else out + term
        if self.fold:
            x_gald = self.out[2](self.out[1](out.sum(1)))  # BN, ReLU after the folded conv
        else:
            x_gald = self.out(out.flatten(1, 2))
        return torch.cat([x_gald, x_local], 1) if self.combine == "concat" else x_gald

    def _folded_value(self, x):
        """(N, heads * C_out, H, W): head h holds W_o,h (W_v,h x + b_v,h)."""
        heads = self.heads
        w_v = self.value.weight[:, :, 0, 0].unflatten(0, (heads, -1))  # (h, d, C_in)
        b_v = self.value.bias.unflatten(0, (heads, -1))  # (h, d)
        w_o = self.out[0].weight[:, :, 0, 0].unflatten(1, (heads, -1)).transpose(0, 1)  # (h, C_out, d)
        weight = torch.matmul(w_o, w_v).flatten(0, 1)[:, :, None, None]
        bias = torch.matmul(w_o, b_v[:, :, None]).flatten()
        return F.conv2d(x, weight, bias)


class CGNL(nn.Module):
    """keras_gald.layers.CGNL (the authors' SpatialCGNL, dot product, no scale)."""

    def __init__(self, channels, planes, groups=8):
        super().__init__()
        self.t = nn.Conv2d(channels, planes, 1, bias=False)
        self.p = nn.Conv2d(channels, planes, 1, bias=False)
        self.g = nn.Conv2d(channels, planes, 1, bias=False)
        self.z = nn.Conv2d(planes, channels, 1, groups=groups, bias=False)
        self.gn = nn.GroupNorm(groups, channels, eps=BN_EPS)
        self.groups = groups

    def forward(self, x):
        t, p, g = self.t(x), self.p(x), self.g(x)
        n = x.shape[0]
        # One scalar affinity per sample and channel group.
        att = (p.reshape(n, self.groups, -1) * g.reshape(n, self.groups, -1)).sum(-1)
        y = (t.unflatten(1, (self.groups, -1)) * att[:, :, None, None, None]).flatten(1, 2)
        return self.gn(self.z(y)) + x


class GALDBlockV1(nn.Module):
    """keras_gald.layers.GALDBlockV1 (authors' GALDBlock): down -> CGNL -> up = u; LDv1(u) + u."""

    def __init__(self, channels, planes, groups=8):
        super().__init__()
        self.down = conv_bn_relu(channels, channels, 3, stride=2, padding=0, bias=True,
                                 groups=channels)
        self.long_relation = CGNL(channels, planes, groups)
        self.local_attention = LDv1(channels, 8, padding=0, final_relu=True, align_corners=True)

    def forward(self, x):
        u = self.long_relation(self.down(x))
        u = F.interpolate(u, size=x.shape[2:], mode="bilinear", align_corners=True)
        return self.local_attention(u) + u


# ---------------------------------------------------------------- networks


class GALDNet(nn.Module):
    """`keras_gald.models.GALD(...)` with arrangement "gald" (see module docstring).

    Args mirror `GALD`: `backbone`, `ga` in ("aspp", "cgnl", None), `ld` in
    ("v1", "v2", None), `num_classes`, `output_stride`, `aux_head`,
    `multi_grid`, `stem`, `head_channels`, `aspp_filters`, `dropout`,
    `ldv2_kwargs` (`kernel_size`, `dilation_rate`, `key_channels`,
    `value_channels`, `out_channels`, `num_heads`).
    """

    def __init__(self, backbone="resnet101", ga="aspp", ld="v2", num_classes=19,
                 output_stride=8, aux_head=True, multi_grid=(1, 2, 4), stem="deep",
                 head_channels=512, aspp_filters=256, dropout=0.1, ldv2_kwargs=None):
        super().__init__()
        if ga not in ("aspp", "cgnl", None) or ld not in ("v1", "v2", None):
            raise NotImplementedError(f"torch reference has no ga={ga!r} / ld={ld!r}")
        self.backbone = DilatedResNet(backbone, output_stride, multi_grid, stem)
        c3, c4 = self.backbone.channels
        self.ga = nn.Identity()
        xg_channels = c4
        if ga == "aspp":
            self.ga = ASPP(c4, aspp_filters, ASPP_RATES[output_stride])
            xg_channels = aspp_filters
        elif ga == "cgnl":
            # As keras_gald: reduce 2048 -> head width first, then CGNL.
            self.ga = nn.Sequential(
                conv_bn_relu(c4, head_channels, 3), CGNL(head_channels, head_channels // 2, 8)
            )
            xg_channels = head_channels
        self.ld_kind = ld
        self.ld = None
        if ld == "v1":
            self.ld = LDv1(xg_channels)
        elif ld == "v2":
            kwargs = dict(ldv2_kwargs or {})
            if "dilation_rate" in kwargs:
                kwargs["dilation"] = kwargs.pop("dilation_rate")
            self.ld = LDv2(xg_channels, c4, **kwargs)
        if ga is None and ld is None:
            head_in = c4  # FCN: the head sees X alone
        elif ld == "v2":
            head_in = (self.ld.out[0].out_channels) + c4
        elif ga is None:  # LDv1 alone on X, then concat with X
            head_in = 2 * c4
        else:
            head_in = xg_channels + c4
        self.fcn = ga is None and ld is None
        self.head = nn.Sequential(conv_bn_relu(head_in, head_channels, 3), nn.Dropout(dropout))
        self.classifier = nn.Conv2d(head_channels, num_classes, 1)
        self.aux = None
        if aux_head:
            self.aux = nn.Sequential(
                conv_bn_relu(c3, 256, 3), nn.Dropout(dropout), nn.Conv2d(256, num_classes, 1)
            )

    def forward(self, images):
        stage3, x = self.backbone(images)
        if self.fcn:
            features = x
        else:
            xg = self.ga(x)
            if self.ld_kind == "v2":
                features = self.ld(xg, x)  # already concat [X_gald, X]
            else:
                if self.ld is not None:
                    xg = self.ld(xg)
                features = torch.cat([xg, x], 1)
        logits = self.classifier(self.head(features))
        logits = F.interpolate(logits, size=images.shape[2:], mode="bilinear",
                               align_corners=False)
        if self.training and self.aux is not None:
            return {"logits": logits, "aux_logits": self.aux(stage3)}
        return logits

    def aux_parameters(self):
        return [] if self.aux is None else list(self.aux.parameters())


class OfficialGALDv1(nn.Module):
    """`keras_gald.models.official_gald_v1(depth, upsample_logits=...)`."""

    def __init__(self, depth=101, num_classes=19, upsample_logits=False, aux_head=True):
        super().__init__()
        self.backbone = DilatedResNet(f"resnet{depth}", 8, (1, 2, 4), "deep")
        c3, c4 = self.backbone.channels
        width = 512
        self.conva = conv_bn_relu(c4, width, 3)
        self.a2block = GALDBlockV1(width, width // 2)
        self.convb = conv_bn_relu(width, width, 3)
        self.bottleneck = conv_bn_relu(c4 + width, width, 3)
        self.classifier = nn.Conv2d(width, num_classes, 1)
        self.upsample_logits = upsample_logits
        self.dsn = None
        if aux_head:
            self.dsn = nn.Sequential(
                conv_bn_relu(c3, 512, 3, bias=True), nn.Dropout2d(0.1),
                nn.Conv2d(512, num_classes, 1),
            )

    def forward(self, images):
        stage3, x = self.backbone(images)
        out = self.convb(self.a2block(self.conva(x)))
        logits = self.classifier(self.bottleneck(torch.cat([x, out], 1)))
        if self.upsample_logits:
            logits = F.interpolate(logits, size=images.shape[2:], mode="bilinear",
                                   align_corners=True)
        if self.training and self.dsn is not None:
            return {"logits": logits, "aux_logits": self.dsn(stage3)}
        return logits

    def aux_parameters(self):
        return [] if self.dsn is None else list(self.dsn.parameters())


def build_torch_model(kind, **kwargs):
    """Builds a network by kind: `"gald"` (GALDNet kwargs), `"official_v1"`
    (`depth`, `num_classes`, `upsample_logits`, `aux_head`) or `"backbone"`
    (`backbone`, `output_stride`, `multi_grid`, `stem`)."""
    if kind == "gald":
        return GALDNet(**kwargs)
    if kind == "official_v1":
        return OfficialGALDv1(**kwargs)
    if kind == "backbone":
        return DilatedResNet(kwargs.get("backbone", "resnet101"), kwargs.get("output_stride", 8),
                             kwargs.get("multi_grid", (1, 2, 4)), kwargs.get("stem", "deep"))
    raise ValueError(f"unknown kind {kind!r}")


def segmentation_loss(outputs, labels, ignore_index=255, aux_weight=0.4):
    """Cross-entropy (ignore label) on the logits + `aux_weight` x the aux CE.

    Both are resized (bilinear, half-pixel, as keras_gald's losses) to the
    label size first when needed; `outputs` is a tensor or the train-mode dict.
    """
    def ce(logits):
        if logits.shape[2:] != labels.shape[1:]:
            logits = F.interpolate(logits, size=labels.shape[1:], mode="bilinear",
                                   align_corners=False)
        return F.cross_entropy(logits, labels, ignore_index=ignore_index)

    if not isinstance(outputs, dict):
        return ce(outputs)
    loss = ce(outputs["logits"])
    if "aux_logits" in outputs:
        loss = loss + aux_weight * ce(outputs["aux_logits"])
    return loss


# ------------------------------------------------------------ param counts


def torch_param_counts(model):
    """`{"total", "aux", "main"}` parameter counts (buffers excluded)."""
    total = sum(p.numel() for p in model.parameters())
    aux_fn = getattr(model, "aux_parameters", None)
    aux = sum(p.numel() for p in aux_fn()) if aux_fn else 0
    return {"total": total, "aux": aux, "main": total - aux}


def compare_param_counts(keras_model, torch_model):
    """Both models' counts and whether they match (dict, printable)."""
    k, t = keras_param_counts(keras_model), torch_param_counts(torch_model)
    return {
        "keras": k,
        "torch": t,
        "match": k == t,
        "diff_total": k["total"] - t["total"],
    }


def main():
    parser = argparse.ArgumentParser(description="Keras vs PyTorch parameter counts.")
    parser.add_argument("--backbone", default="resnet50")
    parser.add_argument("--ga", default="aspp", help="aspp, cgnl or none")
    parser.add_argument("--ld", default="v2", help="v1, v2 or none")
    parser.add_argument("--official", type=int, choices=(50, 101),
                        help="compare official_gald_v1(depth) instead")
    parser.add_argument("--num-classes", type=int, default=19)
    args = parser.parse_args()

    # TensorFlow only for this check: the networks above never need it.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
    from keras_gald.models import GALD, official_gald_v1

    if args.official:
        label = f"official_gald_v1 R{args.official}"
        keras_model = official_gald_v1(args.official, num_classes=args.num_classes)
        torch_model = OfficialGALDv1(args.official, args.num_classes)
    else:
        ga = None if args.ga.lower() == "none" else args.ga
        ld = None if args.ld.lower() == "none" else args.ld
        label = f"GALD {args.backbone} ga={ga} ld={ld}"
        keras_model = GALD(args.backbone, ga=ga, ld=ld, num_classes=args.num_classes)
        torch_model = GALDNet(args.backbone, ga=ga, ld=ld, num_classes=args.num_classes)
    result = compare_param_counts(keras_model, torch_model)
    print(label)
    for part in ("main", "aux", "total"):
        k, t = result["keras"][part], result["torch"][part]
        print(f"  {part:<6} keras {k:>12,}  torch {t:>12,}  diff {k - t:+,}")
    print("  match" if result["match"] else "  MISMATCH")


if __name__ == "__main__":
    main()
