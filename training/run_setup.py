"""Run-directory setup of `keras-gald train`: your own folder dataset, the saved config.

`prepare_run(config, explicit_keys, is_chief)` runs before any TensorFlow work:

1. `dataset=folder`: lists `data_dir` (`keras_gald.data.load_folder`), splits a single
   `images/` pool by `val_fraction` (the split is written to `RUN_DIR/folder_split.json` and
   reused by every later run and by `keras-gald evaluate --model RUN_DIR/model.keras`),
   prints the dataset summary (`keras_gald.data.summarize`) and, with `auto_size`, fills
   `crop_size` / `scale_range` / `eval_scale` from the image sizes (keys given on the
   command line win) and sets `auto_size=false`, so `RUN_DIR/config.json` holds the values
   actually used and `keras-gald train --config RUN_DIR/config.json` repeats the run exactly.
2. Resuming (checkpoints in `RUN_DIR`, `resume=true`): the saved `config.json` is compared
   with this one; a difference outside `config.RESUMABLE_KEYS` is refused (`ValueError`
   listing the keys).
3. Writes `RUN_DIR/config.json` (chief only, atomically); a previous one that differs in
   a setting that matters is kept as `config.json.old-<time>`.
"""

import dataclasses
import json
import os
import pathlib

from training import config as config_lib

SPLIT_FILE = "folder_split.json"
SUMMARY_FILE = "dataset_summary.json"
AUTO_KEYS = ("crop_size", "scale_range", "eval_scale")


def load_folder_dataset(config, run_dir=None):
    """The `FolderDataset` of a `dataset=folder` config (with the run's saved split, if any)."""
    from keras_gald import data

    split_file = None
    if run_dir is not None and (pathlib.Path(run_dir) / SPLIT_FILE).is_file():
        split_file = pathlib.Path(run_dir) / SPLIT_FILE
    return data.load_folder(
        config.data_dir, class_names=config.classes, val_fraction=config.val_fraction,
        seed=config.seed, split_file=split_file, ignore_ids=tuple(config.ignore_ids),
        reduce_zero_label=config.reduce_zero_label,
    )


def folder_sources(config):
    """-> (train_source, val_source) for `training.train.data_sources`."""
    dataset = load_folder_dataset(config, config.run_dir)
    return (dataset.splits[config.train_split or "train"],
            dataset.splits[config.val_split or "val"])


def prepare_folder(config, run_dir, explicit_keys=(), is_chief=True, out=print):
    """Lists, splits and summarises the folder; -> the config with auto sizes resolved."""
    from keras_gald import data
    dataset = load_folder_dataset(config, run_dir)
    if dataset.layout == "single" and is_chief and not (run_dir / SPLIT_FILE).is_file():
        data.write_split_file(run_dir / SPLIT_FILE, dataset.split_record)
        out(f"validation split ({len(dataset.split_record['val'])} of "
            f"{len(dataset.split_record['val']) + len(dataset.split_record['train'])} images, "
            f"seed {config.seed}) written to {run_dir / SPLIT_FILE}")
    for split in (config.train_split or "train", config.val_split or "val"):
        if split not in dataset.splits:
            raise ValueError(f"{config.data_dir} has no {split!r} split "
                             f"(found {', '.join(dataset.splits)})")
    summary = data.summarize(dataset)
    out(summary.text())
    if is_chief:
        (run_dir / SUMMARY_FILE).write_text(json.dumps(summary.to_dict(), indent=1))
    if config.auto_size:
        sizes = data.suggest_training_sizes(summary.image_sizes)
        changes = {k: v for k, v in sizes.items() if k not in explicit_keys}
        config = dataclasses.replace(config, auto_size=False, **changes)
        out("auto_size: " + ", ".join(f"{k}={v}" for k, v in changes.items())
            + " (from the median image size)")
        out(config_lib.FOLDER_FULL_SIZE_HINT)
    return config


def has_checkpoints(run_dir):
    ckpt = pathlib.Path(run_dir) / "checkpoints"
    return ckpt.is_dir() and any(ckpt.iterdir())


def check_resume(config, run_dir):
    """Refuses to resume a run under a different configuration (`ValueError` naming keys)."""
    saved_path = pathlib.Path(run_dir) / "config.json"
    if not (config.resume and has_checkpoints(run_dir) and saved_path.is_file()):
        return
    saved = config_lib.TrainConfig.from_file(saved_path)
    differing = config_lib.resume_conflicts(saved, config)
    if differing:
        a, b = saved.to_dict(), config.to_dict()
        details = "; ".join(f"{k}: {a[k]!r} -> {b[k]!r}" for k in differing)
        raise ValueError(
            f"{saved_path}: resuming this run with a different configuration ({details}); "
            f"use a new --run-dir, or --overwrite to start over (resuming may change only "
            f"{', '.join(config_lib.RESUMABLE_KEYS)})")


def prepare_run(config, explicit_keys=(), is_chief=True, out=print):
    """Steps 1-3 of the module docstring; returns the config to train with."""
    run_dir = pathlib.Path(config.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    if config.dataset == "folder":
        config = prepare_folder(config, run_dir, explicit_keys, is_chief, out)
    check_resume(config, run_dir)
    if is_chief:
        from keras_gald.io import aside_name, atomic_write_text

        previous = run_dir / "config.json"
        if previous.exists() and config_changed(previous, config):
            # A resume with changed settings (steps, ...): keep the config the
            # checkpoints came from.
            kept = aside_name(previous)
            os.replace(previous, kept)
            out(f"config changed since the last run; previous config kept as {kept}")
        atomic_write_text(previous, config.to_json())
    return config


# Settings that do not change what a run computes: a moved run dir, --stop-at, notes.
_BOOKKEEPING_KEYS = ("run_dir", "resume", "stop_at", "notes")


def config_changed(path, config):
    """True when `path` (a previous config.json) differs from `config` in a setting that
    matters (a moved run dir or --stop-at does not count); unreadable counts as changed."""
    try:  # parsed, so that a config.json of an older version compares by value
        old = config_lib.TrainConfig.from_file(path).to_dict()
    except (OSError, ValueError, TypeError):
        return True
    new = config.to_dict()
    for key in _BOOKKEEPING_KEYS:
        old.pop(key, None)
        new.pop(key, None)
    return old != new


def explicit_keys(args):
    """Config keys the command line set explicitly (`--set k=v`, `--crop`)."""
    keys = {item.split("=", 1)[0].strip() for item in (args.set or []) if "=" in item}
    if getattr(args, "crop", None):
        keys.add("crop_size")
    return keys
