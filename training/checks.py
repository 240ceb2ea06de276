"""Up-front checks shared by the `keras-gald` commands.

Everything here runs before a model or dataset is built, so a typo costs a second,
not a TensorFlow start-up, and fails with one line naming the setting or the file
(`training.errors.UserError`). Imports `keras_gald` only for its name tables.
"""

import os
import pathlib

from training.errors import UserError


def model_min_size(output_stride):
    """Smallest input height / width the network accepts (the stage-4 map is >= 2x2)."""
    from keras_gald.models.input_check import InputCheck

    return InputCheck.min_size_for(output_stride)


def validate_train_config(config):
    """Checks a resolved `TrainConfig` beyond `training.config.validate`; raises `UserError`."""
    from keras_gald.backbones import available_backbones
    from keras_gald.models.gald import ARRANGEMENTS, ASPP_RATES, GA_CHOICES, LD_CHOICES

    def choice(what, value, choices):
        if value not in choices:
            shown = ", ".join("none" if c is None else str(c) for c in choices)
            raise UserError(f"unknown {what} {value!r}; choose from {shown}")

    choice("backbone", config.backbone, available_backbones())
    choice("ga", config.ga, GA_CHOICES)
    choice("ld", config.ld, LD_CHOICES)
    choice("arrangement", config.arrangement, ARRANGEMENTS)
    choice("output_stride", config.output_stride, tuple(ASPP_RATES))
    window = {"ldv2_kernel_size": config.ldv2_kernel_size,
              "ldv2_dilation_rate": config.ldv2_dilation_rate}
    window = {key: value for key, value in window.items() if value is not None}
    if window.get("ldv2_kernel_size", 1) < 1 or window.get("ldv2_kernel_size", 1) % 2 == 0:
        raise UserError(f"ldv2_kernel_size must be an odd int >= 1, got "
                        f"{window['ldv2_kernel_size']}")
    if window.get("ldv2_dilation_rate", 1) < 1:
        raise UserError(f"ldv2_dilation_rate must be >= 1, got {window['ldv2_dilation_rate']}")
    if window and config.ld != "v2":
        shown = ", ".join(f"{key}={value}" for key, value in window.items())
        raise UserError(f"{shown} set, but ld is {config.ld or 'none'}: they shape LDv2's "
                        "window only (--set ld=v2)")
    minimum = model_min_size(config.output_stride)
    h, w = config.crop_size
    if min(h, w) < minimum:
        raise UserError(
            f"crop size {h}x{w} is below the network's minimum of {minimum}x{minimum} pixels "
            f"(output_stride {config.output_stride}); pass e.g. --crop {minimum},{minimum}")
    if config.dataset == "synthetic":
        sh, sw = config.synthetic_size
        if min(sh, sw) < 1:
            raise UserError(f"synthetic_size must be positive, got {sh}x{sw}")
    for key in ("lr",):
        value = getattr(config, key)
        if not (value > 0) or value != value or value == float("inf"):
            raise UserError(f"{key} must be a positive finite number, got {value}")
    if config.weight_decay < 0:
        raise UserError(f"weight_decay must be >= 0, got {config.weight_decay}")
    if not 0 <= config.momentum < 1:
        raise UserError(f"momentum must be in [0, 1), got {config.momentum}")
    if config.keep_checkpoints < 1:
        raise UserError(
            f"keep_checkpoints must be >= 1 (the last finite checkpoint is always kept), "
            f"got {config.keep_checkpoints}")
    if config.stop_at < 0:
        raise UserError(f"stop_at must be >= 0, got {config.stop_at}")
    if config.devices > 1:
        # The replica count is known before start-up when given; with `devices` 0 (all
        # visible) the same check runs once the strategy has counted its replicas.
        xla_and_sync_bn(config.xla, config.sync_bn, config.devices, on_gpu=False)
    if config.dataset != "synthetic":
        require_dir(config.data_dir, "--data-dir")
    if config.init_weights:
        require_file(config.init_weights, "init_weights")
    if config.run_dir and pathlib.Path(config.run_dir).exists() and not pathlib.Path(
            config.run_dir).is_dir():
        raise UserError(f"run dir {config.run_dir} exists and is not a directory")
    return config


def xla_and_sync_bn(xla, sync_bn, replicas, on_gpu):
    """`keras_gald.distribute.resolve_xla_and_sync_bn` -> `(xla, sync_bn)`; the combination
    it refuses raises `UserError` naming the flags that fix it."""
    from keras_gald.distribute import resolve_xla_and_sync_bn

    try:
        return resolve_xla_and_sync_bn(xla, sync_bn, replicas, on_gpu)
    except ValueError as err:
        raise UserError(f"{err}: --no-xla, or --set sync_bn=false") from err


def _require(path, what, kind, is_kind):
    p = pathlib.Path(path)
    if not p.exists():
        raise UserError(f"{what} {path} does not exist")
    if not is_kind(p):
        raise UserError(f"{what} {path} is not a {kind}")
    if not os.access(p, os.R_OK):
        raise UserError(f"{what} {path} is not readable")
    return p


def require_file(path, what):
    """`path` as a `Path` if it is a readable file, else `UserError` naming `what`."""
    return _require(path, what, "file", pathlib.Path.is_file)


def require_dir(path, what):
    """`path` as a `Path` if it is a readable directory, else `UserError` naming `what`."""
    return _require(path, what, "directory", pathlib.Path.is_dir)


def output_dir(path, what):
    """An output folder: may exist (as a folder), must not be a file."""
    p = pathlib.Path(path)
    if p.exists() and not p.is_dir():
        raise UserError(f"{what} {path} exists and is not a directory")
    return p


def output_file(path, what, overwrite=False, suffix=None):
    """An output file: not a directory; an existing file only with `overwrite`."""
    p = pathlib.Path(path)
    if suffix and not p.name.endswith(suffix):
        raise UserError(f"{what} {path} must end with {suffix}")
    if p.is_dir():
        raise UserError(f"{what} {path} is a directory")
    if p.exists() and not overwrite:
        raise UserError(f"{what} {path} already exists; pass --overwrite to replace it")
    if p.parent.exists() and not p.parent.is_dir():
        raise UserError(f"{what} {path}: {p.parent} is not a directory")
    return p


def model_num_classes(model):
    """Number of output classes of a loaded model."""
    getter = getattr(model, "num_classes", None)
    if getter is not None:
        return int(getter)
    out = model.output
    out = out["logits"] if isinstance(out, dict) else out
    return int(out.shape[-1])


def model_channels(model):
    shape = model.inputs[0].shape if getattr(model, "inputs", None) else None
    return None if shape is None else shape[-1]


def check_model_matches_data(model, info, model_path):
    """The model's classes / input channels agree with the dataset's `info`."""
    classes = model_num_classes(model)
    if classes != info.num_classes:
        raise UserError(
            f"model {model_path} predicts {classes} classes but the dataset {info.name!r} "
            f"has {info.num_classes}")
    channels = model_channels(model)
    if channels is not None and channels != 3:
        raise UserError(f"model {model_path} expects {channels}-channel input; images are RGB (3)")
