"""What `keras-gald train` may do with an existing run directory.

A run directory is only ever *added to* (resume) or *moved aside* (`--overwrite`);
nothing in it is deleted. Starting from step 0 in a directory that already holds a
run (checkpoints, a log, a final model or metrics) is refused unless `--overwrite`
is given, which renames the whole directory to `RUN_DIR.old-<YYYYmmdd-HHMMSS>`.
"""

import os
import pathlib

from training.errors import UserError

RUN_DIR_HELP = (
    "Run dir: a rerun resumes from the newest readable checkpoint (an unreadable one is "
    "skipped and named). --no-resume in a dir holding a previous run is refused; "
    "--overwrite moves the old run to RUN_DIR.old-<time> first (nothing is deleted)."
)

# Files whose presence means "a previous run lives here" (config.json alone does not:
# it is written before the first step, so a run killed during start-up holds only it).
RUN_ARTEFACTS = ("checkpoints", "log.csv", "model.keras", "saved_model", "metrics.json",
                 "initial.weights.h5")


def previous_run_artefacts(run_dir):
    """Names of the run artefacts present in `run_dir` (empty `checkpoints/` ignored)."""
    run_dir = pathlib.Path(run_dir)
    found = []
    for name in RUN_ARTEFACTS:
        path = run_dir / name
        if name == "checkpoints":
            if path.is_dir() and any(path.iterdir()):
                found.append(name)
        elif path.exists():
            found.append(name)
    return found


def _log_has_rows(path):
    # Keras' CSVLogger creates log.csv at train begin; only logged steps mean progress.
    try:
        with open(path) as f:
            return sum(1 for line in f if line.strip()) > 1
    except OSError:
        return False


def has_checkpoint_files(run_dir):
    ckpt_dir = pathlib.Path(run_dir) / "checkpoints"
    return ckpt_dir.is_dir() and any(p.name.endswith(".index") for p in ckpt_dir.iterdir())


def prepare_run_dir(run_dir, resume, overwrite):
    """Applies the policy above before anything is built.

    Returns the path the old run was moved to (or `None`). Raises `UserError` when a
    fresh start would overwrite a previous run without `--overwrite`.
    """
    from keras_gald.io import aside_name

    run_dir = pathlib.Path(run_dir)
    if not run_dir.exists():
        return None
    found = previous_run_artefacts(run_dir)
    if not found:
        return None
    if overwrite:
        target = aside_name(run_dir)
        os.replace(run_dir, target)
        print(f"moved the previous run {run_dir} to {target}")
        return target
    if not resume:
        raise UserError(
            f"run dir {run_dir} holds a previous run ({', '.join(found)}); --no-resume would "
            "overwrite it: pass --overwrite to move it aside to "
            f"{run_dir.name}.old-<time>, or choose another --run-dir")
    finished = {"model.keras", "metrics.json"} & set(found)
    if not has_checkpoint_files(run_dir) and (finished or _log_has_rows(run_dir / "log.csv")):
        raise UserError(
            f"run dir {run_dir} holds a previous run ({', '.join(found)}) but no checkpoint to "
            "resume from; pass --overwrite to move it aside and start again, or choose "
            "another --run-dir")
    return None
