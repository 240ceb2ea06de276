"""`keras-gald train` / `python -m training.train`: train a GALD network.

Usage:
    python -m training.train --config default
    python -m training.train --config camvid --data-dir /data/camvid --steps 400
    python -m training.train --config cityscapes --data-dir /data/cityscapes --devices 8
    python -m training.train --config default --set backbone=resnet_tiny --set lr=0.02
    python -m training.train --dataset folder --data-dir my_data [--val-fraction 0.2]
    python -m training.train --config runs/folder/config.json --run-dir runs/again

Everything lives in `training.config.TrainConfig`; `--set key=value` overrides any
field and the common flags below are shortcuts. The run directory holds:

    config.json                resolved config (`--config RUN_DIR/config.json` repeats the run)
    folder_split.json          dataset=folder with one images/ pool: the seeded val split
    dataset_summary.json       dataset=folder: counts, sizes, class pixel counts
    checkpoints/ckpt-STEP.*    tf.train.Checkpoint of model + optimizer (every N steps, end)
    log.csv                    per-interval loss / mIoU / lr / cumulative train_seconds
                               (appended on resume)
    model.keras                final model;  saved_model/  inference SavedModel
    metrics.json               final validation per-class IoU

Resuming under a different configuration is refused (the differing keys are listed) unless
only keys in `training.config.RESUMABLE_KEYS` changed (steps, stop_at, bookkeeping).

Resume: with `resume=True` (default) a rerun of the same command restores the latest
checkpoint (weights, BN statistics, optimizer slots and iteration count), so the poly
schedule -- a function of the optimizer's iteration count -- continues exactly, and the
(deterministic, seeded) training stream skips the batches already consumed. A damaged or
non-finite newest checkpoint is skipped (named on stderr, moved to `checkpoints/unreadable/`)
and the newest one that reads is used. Starting from step 0 in a dir holding a previous run
needs `--overwrite`, which moves the old run to `RUN_DIR.old-<time>` (nothing is deleted).

Failure: a non-finite loss or non-finite weights stop training at once (exit 3) -- no
checkpoint is written from a non-finite state, so the last finite one is never rotated out,
and no final model / export / metrics are written. Every file is written under a temporary
name and renamed (`keras_gald.io`). User errors: one line on stderr, exit 2 (see --help).

Weight decay: decoupled, via `keras_gald.optimizers.SGD(weight_decay=wd)`
(`w -= lr * wd * w` each step) on conv / dense kernels only (BN gamma/beta and biases
excluded). PyTorch's SGD adds `wd * w` to the gradient instead (coupled, through
momentum); the two differ by the momentum amplification of the decay term.
"""

import csv
import math
import os
import pathlib
import shutil
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from training import config as config_lib  # noqa: E402  (pure Python, no TF)
from training import errors  # noqa: E402
from training import rundir  # noqa: E402


def build_parser():
    p = errors.ArgumentParser(
        prog="keras-gald train", description=__doc__.split("\n\n")[0],
        epilog=rundir.RUN_DIR_HELP + " " + errors.EXIT_CODES_HELP)
    p.add_argument("--config", default=None,
                   help=f"preset ({', '.join(config_lib.preset_names())}; default: the "
                        "--dataset's preset if there is one, else default) or a run's saved "
                        "config.json")
    p.add_argument("--dataset", help=f"dataset: {', '.join(config_lib.DATASETS)}")
    p.add_argument("--val-fraction", type=float,
                   help="folder dataset with one images/ pool: validation share (e.g. 0.2)")
    p.add_argument("--classes", help="folder dataset: class names a,b,c (default D/classes.txt)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override any TrainConfig field (repeatable)")
    p.add_argument("--data-dir")
    p.add_argument("--run-dir")
    p.add_argument("--steps", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--crop", help="H,W or a single size")
    p.add_argument("--lr", type=float)
    p.add_argument("--devices", type=int)
    p.add_argument("--xla", nargs="?", const="true", help="auto / true / false")
    p.add_argument("--no-xla", dest="xla", action="store_const", const="false")
    p.add_argument("--mixed-precision", dest="mixed_precision", action="store_const", const="true")
    p.add_argument("--resume", dest="resume", action="store_const", const="true")
    p.add_argument("--no-resume", dest="resume", action="store_const", const="false",
                   help="start from step 0; refused if the run dir holds a previous run "
                        "(add --overwrite)")
    p.add_argument("--overwrite", action="store_true",
                   help="start from step 0 even if the run dir holds a previous run: the old "
                        "run is moved to RUN_DIR.old-<time> (nothing is deleted); "
                        "implies --no-resume")
    p.add_argument("--eval-every", type=int)
    p.add_argument("--checkpoint-every", type=int)
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    errors.add_debug_flag(p)
    return p


def config_from_args(args):
    """The validated `TrainConfig` of parsed `args`; bad presets / keys / values raise
    `errors.UserError` (one line, exit 2) before anything is built."""
    try:
        config = _config_from_args(args)
    except (KeyError, ValueError, TypeError, OSError) as err:
        # KeyError's str() adds quotes; the message itself is what the user needs.
        raise errors.UserError(err.args[0] if err.args else str(err)) from err
    from training import checks

    return checks.validate_train_config(config)


def _config_from_args(args):
    overrides = {}
    for item in args.set:
        if "=" not in item:
            raise ValueError(f"--set expects KEY=VALUE, got {item!r}")
        key, value = item.split("=", 1)
        key = key.strip()
        try:  # parse now so that the message names the --set item
            config_lib.parse_value(key, value)
        except ValueError as err:
            raise ValueError(f"--set {key}={value}: {err}") from err
        overrides[key] = value
    flags = {
        "dataset": args.dataset, "val_fraction": args.val_fraction, "classes": args.classes,
        "data_dir": args.data_dir, "run_dir": args.run_dir, "steps": args.steps,
        "batch_size": args.batch_size, "lr": args.lr, "devices": args.devices,
        "xla": args.xla, "mixed_precision": args.mixed_precision, "resume": args.resume,
        "eval_every": args.eval_every, "checkpoint_every": args.checkpoint_every,
    }
    if getattr(args, "overwrite", False):
        flags["resume"] = "false"
    if args.crop:
        crop = args.crop if "," in args.crop or "x" in args.crop else f"{args.crop},{args.crop}"
        flags["crop_size"] = crop
    overrides.update({k: (str(v) if not isinstance(v, str) else v)
                      for k, v in flags.items() if v is not None})
    preset = args.config
    if preset is None:
        preset = args.dataset if args.dataset in config_lib.preset_names() else "default"
    config = config_lib.resolve_config(preset, overrides)
    if config.run_dir is None:
        config = config_lib.apply_overrides(config, {"run_dir": os.path.join("runs", config.name)})
    return config_lib.validate(config)


# --------------------------------------------------------------------------- TF parts
# Imported lazily: the CPU must be split into logical devices before TF initialises.


def data_sources(config):
    """-> (train_source, val_source) for `make_dataset` / `make_eval_dataset`."""
    from keras_gald import data

    d = config.dataset
    if d == "folder":
        from training import run_setup

        return run_setup.folder_sources(config)
    if d == "synthetic":
        h, w = config.synthetic_size
        return (
            data.synthetic_source(config.synthetic_train_images, h, w, seed=config.seed),
            data.synthetic_source(config.synthetic_val_images, h, w, seed=config.seed + 1000),
        )
    defaults = {
        "camvid": (data.camvid, "train", "val"),
        "cityscapes": (data.cityscapes, "train", "val"),
        "ade20k": (data.ade20k, "training", "validation"),
        "pascal_context": (data.pascal_context, "train", "val"),
        "coco_stuff": (data.coco_stuff, "train2017", "val2017"),
    }
    reader, train_split, val_split = defaults[d]
    return (
        reader(config.data_dir, config.train_split or train_split),
        reader(config.data_dir, config.val_split or val_split),
    )


def source_info(source):
    return source[1]


def build_model(config, num_classes, sync_bn):
    from keras_gald.models import GALD

    model = GALD(
        backbone=config.backbone, ga=config.ga, ld=config.ld, arrangement=config.arrangement,
        num_classes=num_classes, output_stride=config.output_stride,
        aux_head=config.aux_head, multi_grid=tuple(config.multi_grid), stem=config.stem,
        backbone_weights=config.backbone_weights, head_channels=config.head_channels,
        aspp_filters=config.aspp_filters, dropout=config.dropout,
        aspp_dropout=config.aspp_dropout, sync_bn=sync_bn,
        backbone_weights_strict=config.backbone_weights_strict,
        ldv2_kwargs={key: value for key, value in (
            ("kernel_size", config.ldv2_kernel_size),
            ("dilation_rate", config.ldv2_dilation_rate)) if value is not None},
    )
    if model.backbone_weights_report is not None:
        print(model.backbone_weights_report.summary())
    return model


def build_optimizer(config):
    from keras_gald.optimizers import SGD, PolyLR

    opt = SGD(
        learning_rate=PolyLR(config.lr, config.steps, config.poly_power),
        momentum=config.momentum, nesterov=config.nesterov,
        weight_decay=config.weight_decay or None,
    )
    # L2 on conv / dense kernels only, like the authors' recipe intends.
    opt.exclude_from_weight_decay(var_names=["gamma", "beta", "bias"])
    return opt


def build_loss(config):
    from keras_gald.losses import OHEMCrossEntropy, SegmentationCrossEntropy

    if config.loss == "ohem":
        return OHEMCrossEntropy(config.ohem_thresh, config.ohem_min_kept,
                                distributed_mean=config.loss_distributed_mean)
    return SegmentationCrossEntropy(distributed_mean=config.loss_distributed_mean)


def validate(model, val_ds, info, config):
    """The run's validation: `keras_gald.evaluation.evaluate` at `config.eval_scale`."""
    from keras_gald import evaluation

    return evaluation.evaluate(model, val_ds, info.num_classes, info.class_names,
                               eval_scale=config.eval_scale,
                               max_images=config.eval_max_images)


def resumed_stream(make_pipeline, start_step):
    """The training batches from `start_step` on, as one `tf.data` pipeline.

    A freshly built pipeline gives identical batches for the same seed (stateless,
    seeded augmentation and shuffling), so batch `i` is a pure function of (config, i) and
    skipping the `start_step` batches already trained on continues the stream exactly.
    """
    import tensorflow as tf

    from keras_gald.distribute import is_multi_worker

    ds = make_pipeline().skip(start_step)
    if is_multi_worker():
        options = tf.data.Options()
        options.experimental_distribute.auto_shard_policy = (
            tf.data.experimental.AutoShardPolicy.DATA)
        ds = ds.with_options(options)
    return ds


def training_checkpoint(model, optimizer):
    """A `tf.train.Checkpoint` of every model and optimizer variable, keyed by path.

    `tf.train.Checkpoint(model=model)` follows TF's object tracking, which misses Keras 3
    variables held by sub-layers in plain Python containers (BN statistics inside the
    heads, here): those were silently left at their initial values on resume. Listing
    `model.variables` / `optimizer.variables` explicitly saves exactly what Keras owns,
    and `assert_consumed` on restore fails loudly if the model changed shape.
    """
    import tensorflow as tf

    def keyed(variables, what):
        out = {}
        for v in variables:
            key = v.path.replace("/", ".")
            if key in out:
                raise ValueError(f"two {what} variables share the path {v.path!r}")
            out[key] = v
        return out

    return tf.train.Checkpoint(model_variables=keyed(model.variables, "model"),
                               optimizer_variables=keyed(optimizer.variables, "optimizer"))


def weights_fingerprint(model):
    """sha256 over all model variables (float32 bytes): identical weights <=> same digest."""
    import hashlib

    import numpy as np

    digest = hashlib.sha256()
    for value in model.get_weights():
        digest.update(np.ascontiguousarray(np.asarray(value, np.float32)).tobytes())
    return digest.hexdigest()[:16]


class _TrainCallbacks:
    """Keras callbacks built lazily (keras import)."""

    @staticmethod
    def make(model, optimizer, manager, config, is_chief, val_fn, stop_step, seconds_before=0.0,
             guard=None):
        import keras

        t_start = time.time()

        class StepLogger(keras.callbacks.Callback):
            """Adds `lr`, `step` and `train_seconds` to the logs, stops at `stop_step`,
            checkpoints, validates.

            `train_seconds` is cumulative wall time of training (this process plus
            `seconds_before`, what the log held when resumed), validation excluded.
            """

            def _lr(self):
                return float(optimizer.learning_rate.numpy()) if hasattr(
                    optimizer.learning_rate, "numpy") else float(
                    keras.ops.convert_to_numpy(optimizer.learning_rate))

            def on_train_batch_end(self, batch, logs=None):
                if logs is not None:
                    logs["lr"] = self._lr()
                if int(optimizer.iterations.numpy()) >= stop_step:
                    self.model.stop_training = True

            def on_epoch_end(self, epoch, logs=None):
                nonlocal t_start, seconds_before
                step = int(optimizer.iterations.numpy())
                if guard is not None and guard.tripped:
                    # Never checkpoint a non-finite state: saving would also rotate the
                    # last finite checkpoint out of the kept set.
                    return
                manager.save(checkpoint_number=step)
                if logs is not None:
                    logs["lr"] = self._lr()
                    logs["step"] = step
                    logs["train_seconds"] = round(seconds_before + time.time() - t_start, 2)
                    if config.eval_every and step % config.eval_every == 0 and step < config.steps:
                        t_val = time.time()
                        logs["val_mean_iou"] = val_fn()["mean_iou"]
                        seconds_before -= time.time() - t_val

        return StepLogger()



def rundir_restore(ckpt, ckpt_dir, is_chief):
    """Restores the newest usable checkpoint of `ckpt_dir` into `ckpt` (-> its path or None).

    Skipped checkpoints are reported on stderr with the reason and (by the chief) moved to
    `ckpt_dir/unreadable/`, out of the manager's way but kept for inspection. No usable
    checkpoint among several -> `UserError` naming each file and the way out.
    """
    from keras_gald.checkpoints import CheckpointUnreadableError, restore_newest_readable

    try:
        latest, skipped = restore_newest_readable(ckpt, ckpt_dir)
    except (AssertionError, ValueError) as err:  # of another model (assert_consumed, shapes)
        raise errors.UserError(
            f"the checkpoints in {ckpt_dir} do not match this config's model (was the "
            "backbone / ga / ld / num_classes changed? see config.json.old-*): "
            f"{' '.join(str(err).split())[:300]}; resume with the old settings, or pass "
            "--overwrite to move that run aside") from err
    except CheckpointUnreadableError as err:
        for path, why in err.skipped:
            print(f"skipped checkpoint {path}: {why}", file=sys.stderr)
        raise errors.UserError(
            f"{err}; nothing to resume from: pass --overwrite to move this run aside and "
            "start again") from err
    for path, why in skipped:
        print(f"skipped checkpoint {path}: {why}", file=sys.stderr)
        if is_chief:
            _move_checkpoint_aside(path)
    return latest


def _move_checkpoint_aside(prefix):
    prefix = pathlib.Path(prefix)
    target = prefix.parent / "unreadable"
    target.mkdir(exist_ok=True)
    for part in prefix.parent.glob(prefix.name + ".*"):
        os.replace(part, target / part.name)
    print(f"moved {prefix.name}.* to {target}/", file=sys.stderr)


def make_checkpoint_manager(ckpt, directory, keep):
    """`tf.train.CheckpointManager` over `directory`; a damaged `checkpoint` state file
    (which the manager parses on start) is moved aside rather than blocking the run."""
    import tensorflow as tf

    def make():
        return tf.train.CheckpointManager(ckpt, str(directory), max_to_keep=keep,
                                          checkpoint_name="ckpt")

    try:
        return make()
    except Exception as err:  # text-proto parse errors come in several types
        state = pathlib.Path(directory) / "checkpoint"
        if not state.exists():
            raise
        aside = state.with_name("checkpoint.unreadable")
        os.replace(state, aside)
        print(f"checkpoint state file {state} is unreadable ({type(err).__name__}); "
              f"moved to {aside}", file=sys.stderr)
        return make()


def non_finite_message(guard, manager, config):
    kept = manager.latest_checkpoint
    kept = (f"kept the last finite checkpoint {kept}" if kept
            else "no finite checkpoint was written before it")
    return (f"{guard.reason} at step {guard.failed_step}: training stopped; {kept}; no "
            f"model.keras, export or metrics written (try a lower --lr than {config.lr:g})")


def _truncate_csv(path, max_step):
    """Drops rows logged past `max_step` (a run killed after logging, before saving).

    Returns the `train_seconds` of the last row kept (0.0 without one), so a resumed
    run continues the cumulative training time.
    """
    if not path.exists():
        return 0.0
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    if not rows or "step" not in rows[0]:
        return 0.0
    col = rows[0].index("step")

    def keep(index, row):
        try:
            return float(row[col]) <= max_step
        except (IndexError, ValueError):
            # A kill while CSVLogger appends can leave a partial last row: drop only that.
            return index != len(rows) - 1

    kept = [rows[0]] + [r for i, r in enumerate(rows) if i > 0 and r and keep(i, r)]
    if len(kept) != len(rows):
        import io

        from keras_gald.io import atomic_write_text

        buffer = io.StringIO()
        csv.writer(buffer).writerows(kept)
        atomic_write_text(path, buffer.getvalue())
    if len(kept) > 1 and "train_seconds" in rows[0]:
        value = kept[-1][rows[0].index("train_seconds")]
        return float(value) if value else 0.0
    return 0.0


def train(config, strategy, strategy_desc, is_chief, worker_index, on_gpu):
    import keras

    from keras_gald import data
    from keras_gald.metrics import MeanIoU
    from training import checks

    run_dir = pathlib.Path(config.run_dir)
    # Non-chief workers write to scratch dirs (multi-worker saving is collective).
    write_dir = run_dir if is_chief else run_dir / f".worker_{worker_index}"
    write_dir.mkdir(parents=True, exist_ok=True)
    replicas = strategy.num_replicas_in_sync

    xla, sync_bn = checks.xla_and_sync_bn(config.xla, config.sync_bn, replicas, on_gpu)
    if replicas > 1 and xla:
        print(f"note: XLA over {replicas} replicas compiles each replica's forward/backward "
              "step; BatchNorm uses per-replica statistics (SyncBN off), moving averages "
              "are averaged over replicas.")
    elif replicas > 1 and config.xla is None and on_gpu:
        print("note: XLA off so that BatchNorm is synchronized over replicas "
              "(--xla with --set sync_bn=false trades SyncBN for XLA).")
    keras.config.set_floatx(config.dtype)
    keras.mixed_precision.set_global_policy(config.dtype)  # floatx alone may not reach it
    if config.mixed_precision:
        keras.mixed_precision.set_global_policy("mixed_float16" if on_gpu else "mixed_bfloat16")
        from keras_gald.ops import bf16_is_slow

        slow = None if on_gpu else bf16_is_slow()
        if slow and is_chief:
            print(f"keras-gald train: warning: --mixed-precision: {slow}; drop the flag to "
                  "train in float32 (see benchmarks/README.md)", file=sys.stderr, flush=True)
    if config.batch_size % replicas:
        raise ValueError(f"batch_size {config.batch_size} is not divisible by {replicas} replicas")

    keras.utils.set_random_seed(config.seed)
    try:
        train_src, val_src = data_sources(config)
    except (ValueError, OSError) as err:  # the readers' layout / missing-file errors
        raise errors.UserError(
            f"cannot read the {config.dataset} data set in {config.data_dir}: {err}") from err
    info = source_info(train_src)
    def fresh_train_pipeline():
        return data.make_dataset(
            train_src, crop_size=tuple(config.crop_size), batch_size=config.batch_size,
            scale_range=tuple(config.scale_range) if config.scale_range else None,
            scale_step=config.scale_step, flip=config.flip, photometric=config.photometric,
            normalization=config.normalization, seed=config.seed, cache=config.cache,
            repeat=True,
        )

    val_ds = data.make_eval_dataset(val_src, normalization=config.normalization,
                                    cache=config.cache)

    with strategy.scope():
        model = build_model(config, info.num_classes, sync_bn)
        optimizer = build_optimizer(config)
        model.compile(
            optimizer=optimizer, loss=build_loss(config),
            metrics=[MeanIoU(info.num_classes, name="mean_iou")],
            aux_loss="auto" if config.aux_head else None,
            aux_loss_weight=config.aux_loss_weight, jit_compile=xla,
        )
        optimizer.build(model.trainable_variables)
        # Build metric / loss state now, from KerasTensors: Keras' own build under a
        # strategy would consume (and drop) a real batch, and fails under
        # MultiWorkerMirroredStrategy (see `Segmenter._maybe_symbolic_build`).
        spec = fresh_train_pipeline().element_spec
        model._symbolic_build(data_batch=(
            keras.KerasTensor((1,) + tuple(spec[0].shape[1:]), "float32"),
            keras.KerasTensor((1,) + tuple(spec[1].shape[1:]), "int32"),
        ))
        ckpt = training_checkpoint(model, optimizer)
    start_step = 0
    # Every worker restores the chief's newest readable checkpoint (shared file system
    # assumed); damaged or non-finite ones are skipped, named, and moved aside so that
    # the checkpoint manager neither resumes from nor rotates over them.
    latest = None
    if config.resume:
        latest = rundir_restore(ckpt, run_dir / "checkpoints", is_chief)
    manager = make_checkpoint_manager(ckpt, write_dir / "checkpoints", config.keep_checkpoints)
    if latest:
        start_step = int(optimizer.iterations.numpy())
        print(f"resumed from {latest} at step {start_step}")
    else:
        if config.init_weights:
            try:
                model.load_weights(config.init_weights)
            except (ValueError, OSError, KeyError) as err:  # another model / not a weights file
                raise errors.UserError(
                    f"init_weights {config.init_weights} does not fit this model "
                    f"({info.num_classes} classes, backbone {config.backbone}): "
                    f"{' '.join(str(err).split())[:300]}") from err
        if is_chief:
            from keras_gald.io import atomic_path

            with atomic_path(write_dir / "initial.weights.h5") as tmp:  # reproducibility
                model.save_weights(tmp)

    print(f"strategy: {strategy_desc}; replicas {replicas}; sync_bn {sync_bn}; xla {xla}; "
          f"mixed precision {keras.mixed_precision.global_policy().name}")
    print(f"model {model.name}: {model.count_params():,} parameters; "
          f"{info.num_classes} classes ({info.name})")

    stop_step = min(config.steps, config.stop_at) if config.stop_at else config.steps
    spe = config.checkpoint_every
    epochs = math.ceil(config.steps / spe)
    initial_epoch = start_step // spe
    if start_step >= stop_step:
        print(f"already trained to step {start_step}; skipping training")
    else:
        train_ds = resumed_stream(fresh_train_pipeline, start_step)
        csv_path = write_dir / "log.csv"
        seconds_before = _truncate_csv(csv_path, start_step)
        val_fn = lambda: validate(model, val_ds, info, config)  # noqa: E731
        from keras_gald.callbacks import StopOnNonFinite

        # First in the list: the checkpointing callback after it asks `guard.tripped`.
        guard = StopOnNonFinite(verbose=False)
        callbacks = [
            guard,
            _TrainCallbacks.make(model, optimizer, manager, config, is_chief, val_fn, stop_step,
                                 seconds_before, guard=guard),
            keras.callbacks.CSVLogger(str(csv_path), append=True),
        ]
        try:
            import tensorboard  # noqa: F401

            callbacks.append(keras.callbacks.TensorBoard(str(write_dir / "tensorboard")))
        except ImportError:
            pass
        t0 = time.time()
        model.fit(train_ds, epochs=epochs, initial_epoch=initial_epoch, steps_per_epoch=spe,
                  callbacks=callbacks, verbose=1 if is_chief else 0)
        step = int(optimizer.iterations.numpy())
        if guard.tripped:
            raise errors.NonFiniteStop(non_finite_message(guard, manager, config))
        if manager.latest_checkpoint is None or not manager.latest_checkpoint.endswith(f"-{step}"):
            manager.save(checkpoint_number=step)
        print(f"trained steps {start_step} -> {step} in {time.time() - t0:.1f}s")

    step = int(optimizer.iterations.numpy())
    print(f"weights fingerprint: {weights_fingerprint(model)} step {step}")
    if step < config.steps:
        print(f"stopped at step {step} (stop_at={config.stop_at}); rerun to resume")
        return {"step": step}

    from keras_gald.callbacks import first_non_finite
    from keras_gald.io import atomic_directory, atomic_write_json, save_model

    bad = first_non_finite(model.weights)
    if bad is not None:  # e.g. resumed to the end from a checkpoint written before this guard
        raise errors.NonFiniteStop(
            f"weights are non-finite ({bad}) at step {step}; no model.keras, export or "
            "metrics written")
    save_model(model, write_dir / "model.keras")
    if config.export_saved_model:
        with atomic_directory(write_dir / "saved_model") as tmp:
            model.export(str(tmp), verbose=False)
    t0 = time.time()
    from keras_gald.evaluation import iou_table

    results = validate(model, val_ds, info, config)
    miou = results["mean_iou"]
    print(iou_table(results, title=f"{config.name}: validation IoU at step {step}"))
    result = {
        "config": config.name, "step": step, "mean_iou": miou,
        "pixel_accuracy": results["pixel_accuracy"], "per_class_iou": results["per_class_iou"],
        "eval_seconds": round(time.time() - t0, 2), "eval_scale": config.eval_scale,
    }
    atomic_write_json(write_dir / "metrics.json", result)
    print(f"final mIoU: {miou:.4f} ({miou * 100:.2f}%)")
    if not is_chief:
        shutil.rmtree(write_dir, ignore_errors=True)
    return result


@errors.command("keras-gald train")
def main(argv=None):
    args = build_parser().parse_args(argv)
    config = config_from_args(args)
    print("resolved config:\n" + config.to_json())
    if args.print_config:
        return 0
    import keras

    if keras.backend.backend() != "tensorflow":
        # Resuming relies on tf.train.Checkpoint of the variables, devices on tf.distribute.
        raise errors.UserError(
            f"keras-gald train runs on the TensorFlow backend (checkpoints, resume and "
            f"devices use tf.train / tf.distribute); KERAS_BACKEND is "
            f"{keras.backend.backend()!r}: run it with KERAS_BACKEND=tensorflow (the .keras "
            "model it saves loads on JAX), or train on JAX with model.fit directly")
    from keras_gald import distribute

    if distribute.is_chief():
        rundir.prepare_run_dir(config.run_dir, config.resume, args.overwrite)
    # Before any TF op: split the CPU into logical devices / pick the strategy.
    gpus, n_cpu = distribute.configure_devices(config.devices)
    strategy, desc, is_chief, index = distribute.make_strategy(config.devices, gpus, n_cpu)
    from training import run_setup

    # Folder datasets: split, summary, auto sizes; refuses to resume under another config;
    # keeps a previous config.json that differs aside; writes RUN_DIR/config.json.
    try:
        config = run_setup.prepare_run(config, run_setup.explicit_keys(args), is_chief)
    except (ValueError, OSError) as err:
        raise errors.UserError(str(err)) from err
    import tensorflow as tf

    try:
        train(config, strategy, desc, is_chief, index, on_gpu=bool(gpus))
    except tf.errors.InvalidArgumentError as err:
        message = errors.data_assertion(err)
        if message is None:  # not a data check: a bug, keep the traceback
            raise
        raise errors.CommandFailed(
            f"data error: {message}; the last checkpoint is kept, rerun resumes") from err
    return 0


if __name__ == "__main__":
    sys.exit(main())
