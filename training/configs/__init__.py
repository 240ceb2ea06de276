"""Named training presets: `get(name) -> TrainConfig`.

* `default`: the built-in synthetic street scenes (`keras_gald.data.synthetic_source`),
  sized to train on a 2-core CPU in about 3 minutes and reach a clearly
  above-chance validation mIoU.
* `cityscapes`: the GALD paper's recipe (ResNet-101, ASPP + LDv2, OS 8, crop 832,
  batch 8, SGD momentum 0.9, wd 5e-4, LR 0.01 poly 0.9 per iteration, 50k
  iterations, OHEM thresh 0.7 / min_kept 100000, aux 0.4, SyncBN). Scale
  augmentation 0.5-2.0 (the paper's text); the authors' released code uses
  0.7-2.1 -- set `--set scale_range=0.7,2.1` to match the code.
* `camvid`: the from-scratch CPU recipe at full CamVid resolution, where local
  distribution is local: training crops and inference at 360x480, so the output-stride-8
  feature map is 46x61, about 3.5x LDv2's 13x13 window (k 5, dilation 3) per side.
  `camvid_lowres`' model, loss and optimiser (nothing tuned on the validation split),
  random scale 0.8-1.2, crop 360x480, OHEM min_kept 8.5 % of a batch's pixels, 900 steps
  (sized for a 2-core CPU: step times in benchmarks/README.md). The GA/LD ablation with
  it: `benchmarks/camvid_ablation.py`.
* `camvid_lowres`: the earlier from-scratch CPU recipe, chosen by
  `benchmarks/camvid_recipe_sweep.py` (best validation mIoU for 4 minutes of training on
  2 CPU cores among 9 backbone depth/width x resolution x augmentation candidates):
  `resnet_tiny` + ASPP, images at 0.375x (random scale 0.3-0.45, crop 112x144),
  OHEM (0.7, min_kept 8.5 % of a batch's pixels) + aux loss 0.4, SGD LR 0.05 poly 0.9,
  batch 8, 1400 steps. Its 1/8 feature map (17x23) is about LDv2's window, so LD is
  nearly global there. Both read `--data-dir` laid out as train|val/images|labels.
* `folder`: your own images and masks (`--dataset folder --data-dir D`, see
  `keras_gald.data.folder_dataset`): the `camvid_lowres` CPU recipe (`resnet_tiny`, 1000 steps,
  batch 8, CE + aux loss) with `auto_size`: crop, random-scale range and evaluation scale
  chosen from the median image size (`suggest_training_sizes`: short side scaled to <= 128,
  crops <= 128x160), so a run takes minutes on 2 CPU cores.
* `ade20k`, `pascal_context`, `coco_stuff`: the paper's backbone/head with the
  settings commonly used for these datasets in the GALD/DANet line of work
  (crop 512, batch 16, LR 0.01 poly, OHEM off); iteration counts are the usual
  ones for those benchmarks, not verified against the authors' code.
"""

import dataclasses

from training.config import TrainConfig

_PAPER_MODEL = dict(
    backbone="resnet101",
    ga="aspp",
    ld="v2",
    arrangement="gald",
    output_stride=8,
    multi_grid=(1, 2, 4),
    head_channels=512,
    aspp_filters=256,
    dropout=0.1,
    aux_head=True,
    aux_loss_weight=0.4,
    sync_bn="auto",
    optimizer="sgd",
    momentum=0.9,
    nesterov=False,
    poly_power=0.9,
    eval_scale=1.0,
    photometric=False,
    cache=False,
)

# The small from-scratch recipe of `default` (trains on 2 CPU cores).
_CPU_RECIPE = dict(
    backbone="resnet_small",
    head_channels=64,
    aspp_filters=32,
    steps=300,
    batch_size=8,
    lr=0.05,
    weight_decay=1e-4,
    loss="ce",
    checkpoint_every=50,
)

# Shared by every preset built on the paper's model (besides the model itself).
_PAPER_RECIPE = dict(_PAPER_MODEL, scale_range=(0.5, 2.0), checkpoint_every=1000)

# ADE20K / PASCAL Context / COCO-Stuff: the settings common in the GALD/DANet line of work.
_BENCHMARK_RECIPE = dict(crop_size=(512, 512), batch_size=16, weight_decay=1e-4, loss="ce")


def _paper_preset(name, **overrides):
    """A `TrainConfig` for dataset `name` (also its name) with the paper's model.

    `_PAPER_RECIPE` gives the model and the shared training fields; `overrides`
    (any `TrainConfig` field, `dataset` included) win over both.
    """
    return TrainConfig(**{"name": name, "dataset": name, **_PAPER_RECIPE, **overrides})


PRESETS = {
    "default": TrainConfig(
        name="default",
        dataset="synthetic",
        synthetic_train_images=256,
        synthetic_val_images=32,
        synthetic_size=(96, 128),
        crop_size=(96, 128),
        scale_range=(0.75, 1.25),
        **_CPU_RECIPE,
        notes="synthetic scenes; tuned for ~3 min on 2 CPU cores",
    ),
    "cityscapes": _paper_preset(
        "cityscapes",
        crop_size=(832, 832),
        batch_size=8,
        lr=0.01,
        weight_decay=5e-4,
        steps=50000,
        loss="ohem",
        ohem_thresh=0.7,
        ohem_min_kept=100000,
        eval_every=10000,
        notes="GALD paper recipe; authors' code scales 0.7-2.1 (paper 0.5-2.0)",
    ),
    "camvid": TrainConfig(
        name="camvid",
        dataset="camvid",
        **dict(
            _CPU_RECIPE,
            backbone="resnet_tiny",
            crop_size=(360, 480),
            scale_range=(0.8, 1.2),
            scale_step=None,
            photometric=False,
            cache=True,
            dropout=0.0,
            eval_scale=1.0,
            steps=900,
            loss="ohem",
            ohem_thresh=0.7,
            # 8.5 % of the 8 x 360 x 480 pixels of a batch, as in camvid_lowres.
            ohem_min_kept=117504,
            aux_head=True,
            aux_loss_weight=0.4,
        ),
        notes="from-scratch CamVid recipe at full resolution (1/8 map 46x61) for 2 CPU "
              "cores; camvid_lowres' model and optimiser (not the paper's)",
    ),
    "camvid_lowres": TrainConfig(
        name="camvid_lowres",
        dataset="camvid",
        **dict(
            _CPU_RECIPE,
            backbone="resnet_tiny",
            crop_size=(112, 144),
            scale_range=(0.3, 0.45),
            scale_step=None,
            photometric=False,
            cache=True,
            dropout=0.0,
            eval_scale=0.375,
            steps=1400,
            loss="ohem",
            ohem_thresh=0.7,
            # 8.5 % of the 8 x 112 x 144 pixels of a batch: the authors' 100000 of
            # the 2 x 769^2 pixels on each GPU.
            ohem_min_kept=10967,
            aux_head=True,
            aux_loss_weight=0.4,
        ),
        notes="from-scratch CamVid recipe for 2 CPU cores, chosen by "
              "benchmarks/camvid_recipe_sweep.py (not the paper's)",
    ),
    "folder": TrainConfig(
        name="folder",
        dataset="folder",
        **dict(
            _CPU_RECIPE,
            backbone="resnet_tiny",
            auto_size=True,  # crop / scale / eval scale from the image sizes found
            scale_step=None,
            cache=True,
            dropout=0.0,
            steps=1000,
            loss="ce",
            aux_head=True,
            aux_loss_weight=0.4,
        ),
        notes="your own data (--dataset folder --data-dir D): the small from-scratch CPU "
              "recipe of camvid_lowres (crop / scales from the image sizes)",
    ),
    "ade20k": _paper_preset(
        "ade20k",
        **_BENCHMARK_RECIPE,
        lr=0.01,
        steps=100000,
        notes="common ADE20K settings, not verified against the authors' code",
    ),
    "pascal_context": _paper_preset(
        "pascal_context",
        **_BENCHMARK_RECIPE,
        lr=0.001,
        steps=30000,
        notes="common PASCAL Context settings, not verified against the authors' code",
    ),
    "coco_stuff": _paper_preset(
        "coco_stuff",
        **_BENCHMARK_RECIPE,
        lr=0.001,
        steps=60000,
        notes="common COCO-Stuff settings, not verified against the authors' code",
    ),
}


# Printed by `keras-gald train --dataset folder`: the paper's full-size recipe.
FOLDER_FULL_SIZE_HINT = (
    "hint: these are small CPU settings. The paper's full-size recipe (GPU): --set "
    "backbone=resnet101 --set backbone_weights=resnet101-deep.pth --set head_channels=512 "
    "--set aspp_filters=256 --set auto_size=false --crop 769 --set scale_range=0.5,2.0 "
    "--set scale_step=0.1 --set eval_scale=1 --set lr=0.01 --set loss=ohem --batch-size 8 "
    "--steps 40000 (the cityscapes preset's model and optimiser)"
)


def names():
    return sorted(PRESETS)


def get(name):
    """A fresh copy of preset `name` (unknown names raise KeyError listing the choices)."""
    if name not in PRESETS:
        raise KeyError(f"unknown config {name!r}; choose from {', '.join(names())}")
    return dataclasses.replace(PRESETS[name])
