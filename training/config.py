"""`TrainConfig`: every knob of `keras-gald train`, the named presets and overrides.

A config is resolved as: preset (`get_preset(name)`) -> `--set key=value` overrides and
the common flags -> validation. The resolved config is printed and written to
`RUN_DIR/config.json`; `TrainConfig.from_json` reads it back.

Presets, each derived from `TrainConfig()` (which is `default`) by the fields it changes:

* `default`: the built-in synthetic street scenes (`keras_gald.data.synthetic_source`),
  sized to train on a 2-core CPU in about 3 minutes and reach a clearly above-chance
  validation mIoU.
* `cityscapes`: the GALD paper's recipe (ResNet-101, ASPP + LDv2, OS 8, crop 832, batch 8,
  SGD momentum 0.9, wd 5e-4, LR 0.01 poly 0.9 per iteration, 50k iterations, OHEM thresh
  0.7 / min_kept 100000, aux 0.4, SyncBN). Scale augmentation 0.5-2.0 (the paper's text);
  the authors' released code uses 0.7-2.1 -- set `--set scale_range=0.7,2.1` to match it.
* `camvid`: the from-scratch CPU recipe at full CamVid resolution, where local distribution
  is local: training crops and inference at 360x480, so the output-stride-8 feature map is
  46x61, about 3.5x LDv2's 13x13 window (k 5, dilation 3) per side. `camvid_lowres`' model,
  loss and optimiser (nothing tuned on the validation split), random scale 0.8-1.2, OHEM
  min_kept 8.5 % of a batch's pixels, 900 steps (sized for a 2-core CPU: step times in
  benchmarks/README.md). The GA/LD ablation with it: `benchmarks/camvid_ablation.py`.
* `camvid_lowres`: the earlier from-scratch CPU recipe, chosen by
  `benchmarks/camvid_recipe_sweep.py` (best validation mIoU for 4 minutes of training on 2
  CPU cores among 9 backbone depth/width x resolution x augmentation candidates):
  `resnet_tiny` + ASPP, images at 0.375x (random scale 0.3-0.45, crop 112x144), OHEM (0.7,
  min_kept 8.5 % of a batch's pixels) + aux loss 0.4, SGD LR 0.05 poly 0.9, batch 8, 1400
  steps. Its 1/8 feature map (17x23) is about LDv2's window, so LD is nearly global there.
  Both read `--data-dir` laid out as train|val/images|labels.
* `folder`: your own images and masks (`--dataset folder --data-dir D`, see
  `keras_gald.data.folder_dataset`): the `camvid_lowres` CPU model (`resnet_tiny`, batch 8, CE + aux
  loss, 1000 steps) with `auto_size`: crop, random-scale range and evaluation scale chosen
  from the median image size (`suggest_training_sizes`: short side scaled to <= 128, crops
  <= 128x160), so a run takes minutes on 2 CPU cores.
* `ade20k`, `pascal_context`, `coco_stuff`: the paper's backbone / head with the settings
  commonly used for these datasets in the GALD / DANet line of work (crop 512, batch 16,
  LR 0.01 poly, OHEM off); iteration counts are the usual ones for those benchmarks, not
  verified against the authors' code.

Example:
    >>> cfg = resolve_config("default", {"steps": "20", "crop_size": "64,96", "xla": "auto"})
    >>> cfg.steps, cfg.crop_size, cfg.xla
    (20, (64, 96), None)
    >>> TrainConfig.from_json(cfg.to_json()) == cfg
    True
"""

import dataclasses
import json
import typing

DATASETS = ("synthetic", "camvid", "cityscapes", "ade20k", "pascal_context", "coco_stuff",
            "folder")


@dataclasses.dataclass
class TrainConfig:
    """All training settings; the defaults are the `default` preset."""

    name: str = "default"
    # --- data
    dataset: str = "synthetic"  # one of DATASETS
    data_dir: typing.Optional[str] = None
    train_split: typing.Optional[str] = None  # None: the dataset's usual train split name
    val_split: typing.Optional[str] = None
    # folder (your own data; keras_gald.data.folder_dataset): D/train|val/{images,labels} or
    # D/{images,labels} + val_fraction; classes from D/classes.txt or `classes` ("a,b,c")
    classes: typing.Optional[str] = None
    val_fraction: typing.Optional[float] = None
    ignore_ids: typing.Tuple[int, ...] = (255,)
    reduce_zero_label: bool = False
    auto_size: bool = False  # crop_size / scale_range / eval_scale from the image sizes found
    synthetic_train_images: int = 256
    synthetic_val_images: int = 32
    synthetic_size: typing.Tuple[int, int] = (96, 128)
    crop_size: typing.Tuple[int, int] = (96, 128)
    scale_range: typing.Optional[typing.Tuple[float, float]] = (0.75, 1.25)
    scale_step: typing.Optional[float] = 0.1
    flip: bool = True
    photometric: bool = False
    normalization: str = "imagenet"
    cache: bool = True
    # --- model
    backbone: str = "resnet_small"
    ga: typing.Optional[str] = "aspp"
    ld: typing.Optional[str] = "v2"
    arrangement: str = "gald"
    # LDv2's window: k x k neighbours spaced r apart, spanning (k-1)*r+1 positions per side
    # (the paper's Table II(b) varies k); ld=v2 only. None: the layer's own (k 5, r 3).
    ldv2_kernel_size: typing.Optional[int] = None
    ldv2_dilation_rate: typing.Optional[int] = None
    output_stride: int = 8
    multi_grid: typing.Tuple[int, ...] = (1, 2, 4)
    stem: str = "deep"
    head_channels: int = 64
    aspp_filters: int = 32
    dropout: float = 0.1  # before the classifiers
    aspp_dropout: float = 0.1  # inside ASPP (the authors' Dropout2d)
    aux_head: bool = True
    aux_loss_weight: float = 0.4
    sync_bn: typing.Optional[bool] = None  # None (auto): on over > 1 replica unless xla=True
    # ImageNet weights, format detected (keras_gald.backbones.pretrained): resnet*-deep.pth,
    # torchvision / timm .pth / .npz (stem=classic), keras.applications .h5 (stem=classic)
    backbone_weights: typing.Optional[str] = None
    backbone_weights_strict: bool = True
    init_weights: typing.Optional[str] = None  # a .weights.h5 loaded before step 0
    # --- optimisation
    steps: int = 300
    batch_size: int = 8  # global batch (split over replicas)
    optimizer: str = "sgd"
    lr: float = 0.05
    poly_power: float = 0.9
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 1e-4
    loss: str = "ce"  # "ce" or "ohem"
    ohem_thresh: float = 0.7
    ohem_min_kept: int = 100000
    loss_distributed_mean: str = "replica"  # keras_gald.losses `distributed_mean`: replica|global
    seed: int = 0
    # --- loop / bookkeeping
    checkpoint_every: int = 50
    eval_every: int = 0  # 0: only at the end; else a multiple of checkpoint_every
    keep_checkpoints: int = 3
    eval_scale: float = 1.0  # images resized by this for inference; IoU at full label size
    eval_max_images: int = 0  # 0: the whole validation split
    run_dir: typing.Optional[str] = None  # default runs/<name>
    resume: bool = True
    stop_at: int = 0  # >0: stop (with a checkpoint) after this step, schedule unchanged
    # --- execution
    devices: int = 0  # 0: all visible GPUs (or the CPU); N: N GPUs or N logical CPU devices
    xla: typing.Optional[bool] = None  # None (auto): on for one GPU; off on CPU, with SyncBN
    mixed_precision: bool = False
    dtype: str = "float32"  # variables/compute dtype; "float64" for numerical checks
    export_saved_model: bool = True
    notes: str = ""

    def to_dict(self):
        return dataclasses.asdict(self)

    def to_json(self):
        return json.dumps(self.to_dict(), indent=2, sort_keys=False)

    @classmethod
    def from_dict(cls, values, source="config"):
        """Inverse of `to_dict`: JSON lists become the tuples the fields hold.

        Unknown keys raise `ValueError` naming them and `source`; missing keys keep their
        defaults (configs written by older versions still load).
        """
        unknown = sorted(set(values) - set(FIELDS))
        if unknown:
            raise ValueError(f"{source}: unknown config keys {', '.join(unknown)}")
        return cls(**{key: _from_json_value(key, value) for key, value in values.items()})

    @classmethod
    def from_json(cls, text, source="config"):
        """`TrainConfig.from_json(cfg.to_json()) == cfg` (tuples and all)."""
        try:
            values = json.loads(text)
        except json.JSONDecodeError as err:
            raise ValueError(f"{source} is not valid JSON: {err}") from None
        if not isinstance(values, dict):
            raise ValueError(f"{source}: expected a JSON object of config keys")
        return cls.from_dict(values, source)

    @classmethod
    def from_file(cls, path):
        """Reads a `config.json` (as written to every run directory)."""
        import pathlib

        path = pathlib.Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"config file not found: {path}")
        return cls.from_json(path.read_text(), source=str(path))


FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}
_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


def _from_json_value(key, value):
    """A JSON value -> the field's Python type (lists -> tuples, ints -> floats)."""
    annotation = FIELDS[key].type
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) is typing.Union and type(None) in args:
        if value is None:
            return None
        annotation = [a for a in args if a is not type(None)][0]
        args = typing.get_args(annotation)
    if annotation is bool and isinstance(value, str):
        # Configs written when xla / sync_bn were "auto" / "true" / "false" strings.
        return parse_value(key, value)
    if typing.get_origin(annotation) is tuple:
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"config key {key!r} needs a list, got {value!r}")
        return tuple(args[0](v) for v in value)
    if annotation is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


# Keys a resumed run may change: the schedule length, bookkeeping and execution settings.
# Anything else (data, model, optimiser, seed) would silently mix two experiments.
RESUMABLE_KEYS = (
    "steps", "stop_at", "eval_every", "checkpoint_every", "keep_checkpoints", "eval_max_images",
    "eval_scale", "export_saved_model", "notes", "resume", "run_dir", "devices", "xla", "cache",
    "data_dir",
)


def resume_conflicts(saved, current):
    """Keys whose values differ between `saved` and `current` and that resuming may not
    change (everything outside `RESUMABLE_KEYS`), sorted."""
    a, b = saved.to_dict(), current.to_dict()
    return sorted(k for k in FIELDS if k not in RESUMABLE_KEYS and a.get(k) != b.get(k))


def _parse_bool(text):
    value = str(text).strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ValueError(f"expected a boolean (true/false), got {text!r}")


def parse_value(key, text):
    """Converts the string `text` to the type of `TrainConfig.<key>`."""
    if key not in FIELDS:
        raise KeyError(
            f"unknown config key {key!r}; valid keys: {', '.join(sorted(FIELDS))}"
        )
    if not isinstance(text, str):
        return text
    annotation = FIELDS[key].type
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    optional = origin is typing.Union and type(None) in args
    if optional:
        annotation = [a for a in args if a is not type(None)][0]
        # Optional booleans are tri-states: None is "auto".
        if text.strip().lower() in ("none", "null", "") + (("auto",) if annotation is bool else ()):
            return None
        origin = typing.get_origin(annotation)
        args = typing.get_args(annotation)
    if origin is tuple:
        item_type = args[0]
        parts = [p for p in text.replace("x", ",").split(",") if p.strip()]
        values = tuple(item_type(p.strip()) for p in parts)
        if args[-1] is not Ellipsis and len(values) != len(args):
            raise ValueError(f"{key} needs {len(args)} comma-separated values, got {text!r}")
        return values
    if annotation is bool:
        try:
            return _parse_bool(text)
        except ValueError:
            if optional:
                raise ValueError(f"expected auto, true or false, got {text!r}") from None
            raise
    if annotation is int:
        return int(text)
    if annotation is float:
        return float(text)
    return text


def apply_overrides(config, overrides):
    """Returns a copy of `config` with `{key: value_or_string}` applied (unknown keys raise)."""
    changes = {key: parse_value(key, value) for key, value in overrides.items()}
    return dataclasses.replace(config, **changes)


def validate(config):
    """Raises ValueError on inconsistent settings; returns the config."""
    if config.dataset not in DATASETS:
        raise ValueError(f"unknown dataset {config.dataset!r}; choose from {DATASETS}")
    if config.dataset != "synthetic" and not config.data_dir:
        raise ValueError(f"config {config.name!r} reads {config.dataset}: pass --data-dir")
    if config.val_fraction is not None and not 0.0 < config.val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {config.val_fraction}")
    if config.dataset != "folder" and (config.classes or config.val_fraction or config.auto_size):
        raise ValueError("classes / val_fraction / auto_size are for dataset=folder only")
    if config.loss not in ("ce", "ohem"):
        raise ValueError(f"loss must be 'ce' or 'ohem', got {config.loss!r}")
    if config.optimizer != "sgd":
        raise ValueError(f"only the authors' optimizer 'sgd' is implemented, got {config.optimizer!r}")
    if config.steps < 1 or config.batch_size < 1 or config.checkpoint_every < 1:
        raise ValueError("steps, batch_size and checkpoint_every must be >= 1")
    if config.eval_every and config.eval_every % config.checkpoint_every:
        raise ValueError("eval_every must be 0 or a multiple of checkpoint_every")
    for key in ("xla", "sync_bn"):
        if getattr(config, key) not in (None, True, False):
            raise ValueError(f"{key} must be None (auto), True or False, got "
                             f"{getattr(config, key)!r}")
    if config.dtype not in ("float32", "float64"):
        raise ValueError(f"dtype must be float32 or float64, got {config.dtype!r}")
    if config.dtype == "float64" and config.mixed_precision:
        raise ValueError("dtype=float64 and mixed_precision are exclusive")
    if not 0.0 < config.eval_scale <= 4.0:
        raise ValueError(f"eval_scale must be in (0, 4], got {config.eval_scale}")
    return config


# --------------------------------------------------------------------------- presets

_DEFAULT = TrainConfig()

# The small from-scratch CPU model of `camvid` and `folder`.
_TINY_CPU = dataclasses.replace(_DEFAULT, backbone="resnet_tiny", scale_step=None, dropout=0.0)

# The paper's network and the training fields its presets share.
_PAPER = dataclasses.replace(
    _DEFAULT, backbone="resnet101", head_channels=512, aspp_filters=256,
    scale_range=(0.5, 2.0), cache=False, checkpoint_every=1000)

# ADE20K / PASCAL Context / COCO-Stuff: the settings common in the GALD / DANet line of work.
_BENCHMARK = dataclasses.replace(_PAPER, crop_size=(512, 512), batch_size=16)


def _preset(base, name, dataset=None, **changes):
    return dataclasses.replace(base, name=name, dataset=dataset or name, **changes)


PRESETS = {
    "default": _DEFAULT,
    "cityscapes": _preset(
        _PAPER, "cityscapes", crop_size=(832, 832), batch_size=8, lr=0.01, weight_decay=5e-4,
        steps=50000, loss="ohem", eval_every=10000,
        notes="GALD paper recipe; authors' code scales 0.7-2.1 (paper 0.5-2.0)"),
    "camvid": _preset(
        _TINY_CPU, "camvid", crop_size=(360, 480), scale_range=(0.8, 1.2), eval_scale=1.0,
        steps=900, loss="ohem",
        # 8.5 % of the 8 x 360 x 480 pixels of a batch, as in camvid_lowres.
        ohem_min_kept=117504,
        notes="from-scratch CamVid recipe at full resolution (1/8 map 46x61) for 2 CPU "
              "cores; camvid_lowres' model and optimiser (not the paper's)"),
    "camvid_lowres": _preset(
        _TINY_CPU, "camvid_lowres", dataset="camvid", crop_size=(112, 144),
        scale_range=(0.3, 0.45), eval_scale=0.375, steps=1400, loss="ohem",
        # 8.5 % of the 8 x 112 x 144 pixels of a batch: the authors' 100000 of the
        # 2 x 769^2 pixels on each GPU.
        ohem_min_kept=10967,
        notes="from-scratch CamVid recipe for 2 CPU cores, chosen by "
              "benchmarks/camvid_recipe_sweep.py (not the paper's)"),
    "folder": _preset(
        _TINY_CPU, "folder", auto_size=True, steps=1000,
        notes="your own data (--dataset folder --data-dir D): the small from-scratch CPU "
              "recipe of camvid_lowres (crop / scales from the image sizes)"),
    "ade20k": _preset(
        _BENCHMARK, "ade20k", lr=0.01, steps=100000,
        notes="common ADE20K settings, not verified against the authors' code"),
    "pascal_context": _preset(
        _BENCHMARK, "pascal_context", lr=0.001, steps=30000,
        notes="common PASCAL Context settings, not verified against the authors' code"),
    "coco_stuff": _preset(
        _BENCHMARK, "coco_stuff", lr=0.001, steps=60000,
        notes="common COCO-Stuff settings, not verified against the authors' code"),
}

# Printed by `keras-gald train --dataset folder`: the paper's full-size recipe.
FOLDER_FULL_SIZE_HINT = (
    "hint: these are small CPU settings. The paper's full-size recipe (GPU): --set "
    "backbone=resnet101 --set backbone_weights=resnet101-deep.pth --set head_channels=512 "
    "--set aspp_filters=256 --set auto_size=false --crop 769 --set scale_range=0.5,2.0 "
    "--set scale_step=0.1 --set eval_scale=1 --set lr=0.01 --set loss=ohem --batch-size 8 "
    "--steps 40000 (the cityscapes preset's model and optimiser)"
)


def preset_names():
    return sorted(PRESETS)


def get_preset(name):
    """A fresh copy of preset `name` (unknown names raise KeyError listing the choices)."""
    if name not in PRESETS:
        raise KeyError(f"unknown config {name!r}; choose from {', '.join(preset_names())}")
    return dataclasses.replace(PRESETS[name])


def resolve_config(name="default", overrides=None):
    """Preset `name` (or a saved `config.json`) + overrides (validated later by `validate`).

    `name` is a preset name, or the path of a `config.json` written to a run directory
    (any name ending in `.json`): that run's exact configuration.
    """
    if str(name).endswith(".json"):
        config = TrainConfig.from_file(name)
    else:
        config = get_preset(name)
    if overrides:
        config = apply_overrides(config, overrides)
    return config
