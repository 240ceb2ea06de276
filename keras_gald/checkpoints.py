"""Restoring the newest *usable* `tf.train.Checkpoint` of a directory.

`tf.train.latest_checkpoint` + `restore` fails outright when the newest
checkpoint is damaged (a truncated index: "Read less bytes than requested",
"not an sstable (bad magic number)"; a flipped byte in the data file:
"Checksum does not match"), often without naming the file, even when an
intact older checkpoint sits beside it. `restore_newest_readable` tries the
checkpoints newest first, skips (and reports) those that fail to read or hold
non-finite values, and restores the first good one.

Checkpoints are found by listing `PREFIX-<step>.index` files, not through the
`checkpoint` state file, so a damaged state file does not hide them.

Example:
    >>> ckpt = tf.train.Checkpoint(model_variables=...)
    >>> path, skipped = restore_newest_readable(ckpt, "runs/x/checkpoints")
    >>> for bad, why in skipped:
    ...     print(f"skipped {bad}: {why}")
"""

import pathlib
import re

import numpy as np
import tensorflow as tf

__all__ = ["list_checkpoints", "restore_newest_readable", "checkpoint_is_finite",
           "CheckpointUnreadableError"]


class CheckpointUnreadableError(RuntimeError):
    """No checkpoint in the directory could be restored (each one's reason attached)."""

    def __init__(self, directory, skipped):
        self.directory = str(directory)
        self.skipped = list(skipped)
        detail = "; ".join(f"{pathlib.Path(p).name}: {why}" for p, why in self.skipped)
        super().__init__(f"no readable checkpoint in {directory} ({detail})")


def list_checkpoints(directory, prefix="ckpt"):
    """Checkpoint prefixes `DIR/PREFIX-N` with an index file, newest (largest N) first."""
    directory = pathlib.Path(directory)
    if not directory.is_dir():
        return []
    pattern = re.compile(rf"^{re.escape(prefix)}-(\d+)\.index$")
    found = []
    for entry in directory.iterdir():
        match = pattern.match(entry.name)
        if match:
            found.append((int(match.group(1)), str(directory / f"{prefix}-{match.group(1)}")))
    return [path for _, path in sorted(found, reverse=True)]


def _short(err):
    text = str(err).strip().splitlines()
    text = text[0] if text else type(err).__name__
    return f"{type(err).__name__}: {text[:300]}"


def checkpoint_is_finite(path):
    """`None` when every floating-point tensor in checkpoint `path` is finite, else the
    key of the first non-finite one. Reads every tensor (so it also detects corrupt data
    files: their checksum errors propagate)."""
    reader = tf.train.load_checkpoint(path)
    for key, dtype in reader.get_variable_to_dtype_map().items():
        if not dtype.is_floating:
            continue
        value = reader.get_tensor(key)
        if not np.all(np.isfinite(value)):
            return key
    return None


def restore_newest_readable(checkpoint, directory, prefix="ckpt", require_finite=True,
                            assert_consumed=True):
    """Restores the newest checkpoint in `directory` that reads (and is finite).

    Args:
        checkpoint: the `tf.train.Checkpoint` to restore into.
        directory: the checkpoint directory.
        prefix: checkpoint name prefix (`CheckpointManager(checkpoint_name=...)`).
        require_finite: also skip checkpoints holding NaN / Inf values.
        assert_consumed: require the checkpoint to match the object graph exactly;
            a mismatch (another model) is *not* skipped but raised, since an
            older checkpoint of the same run would not match either.

    Returns:
        `(path, skipped)`: the restored prefix (`None` when the directory has no
        checkpoint at all) and `[(path, reason), ...]` for the newer ones skipped.

    Raises:
        CheckpointUnreadableError: checkpoints exist but none could be restored.
    """
    candidates = list_checkpoints(directory, prefix)
    skipped = []
    for path in candidates:
        try:
            # Read every tensor first: restore() reads lazily and a damaged data file
            # would otherwise fail half-way, leaving some variables overwritten.
            bad = checkpoint_is_finite(path)
        except (tf.errors.OpError, ValueError, OSError, IndexError, RuntimeError) as err:
            skipped.append((path, _short(err)))
            continue
        if require_finite and bad is not None:
            skipped.append((path, f"holds non-finite values ({bad})"))
            continue
        status = checkpoint.restore(path)
        if assert_consumed:
            status.assert_consumed()
        return path, skipped
    if skipped:
        raise CheckpointUnreadableError(directory, skipped)
    return None, skipped
