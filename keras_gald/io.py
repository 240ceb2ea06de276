"""Crash-safe file writing and checked model loading.

Every artefact the library and the CLI write (models, exports, checkpoints'
side files, JSON / CSV reports) goes through these helpers so that a process
killed mid-write never leaves a half-written file under the final name: the
content is written to a temporary name *in the same directory* (same file
system, so the final `os.replace` is an atomic rename) and only then renamed.
A reader sees either the old complete file or the new complete file.

* `atomic_path(path)`: context manager yielding a temporary path to write to;
  renamed to `path` on success, removed on error.
* `atomic_write_bytes` / `atomic_write_text` / `atomic_write_json`.
* `atomic_directory(path)`: the same for a directory (a SavedModel): the new
  directory is built beside the target and swapped in.
* `save_model(model, path)`: `model.save` through `atomic_path`.
* `load_model(path)`: `keras.saving.load_model` that tells a missing file, a
  file that is not a `.keras` archive and a broken archive apart, each as a
  `ModelFileError` naming the file.

Example:
    >>> from keras_gald import io
    >>> io.atomic_write_json("metrics.json", {"mean_iou": 0.5})
    >>> io.save_model(model, "runs/x/model.keras")
"""

import contextlib
import json
import os
import pathlib
import shutil
import tempfile
import time
import zipfile

__all__ = [
    "ModelFileError",
    "atomic_path",
    "atomic_directory",
    "atomic_write_bytes",
    "atomic_write_text",
    "atomic_write_json",
    "save_model",
    "load_model",
    "aside_name",
]


class ModelFileError(ValueError):
    """A model file is missing, not a Keras archive, or cannot be deserialised."""


def _temp_sibling(path, directory=False):
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Keep the suffix: Keras picks the format from it (".keras", ".weights.h5").
    suffix = "".join(path.suffixes[-2:]) if path.name.endswith(".weights.h5") else path.suffix
    prefix = f".{path.stem}.tmp-"
    if directory:
        return pathlib.Path(tempfile.mkdtemp(prefix=prefix, dir=path.parent))
    fd, name = tempfile.mkstemp(prefix=prefix, suffix=suffix, dir=path.parent)
    os.close(fd)
    return pathlib.Path(name)


@contextlib.contextmanager
def atomic_path(path):
    """Yields a temporary file path beside `path`; on a clean exit it replaces `path`.

    The temporary file exists (empty) when yielded; writers that refuse to
    overwrite should remove it first. On an exception it is deleted and `path`
    is left untouched.
    """
    path = pathlib.Path(path)
    tmp = _temp_sibling(path)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def atomic_directory(path):
    """Yields a fresh temporary directory beside `path`; on success it becomes `path`.

    An existing `path` is renamed aside first and removed only once the new
    directory is in place, so at every instant `path` is absent or complete.
    """
    path = pathlib.Path(path)
    tmp = _temp_sibling(path, directory=True)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if path.exists():
        old = _temp_sibling(path.with_name(path.name + ".old"), directory=True)
        old.rmdir()
        os.replace(path, old)
    os.replace(tmp, path)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def atomic_write_bytes(path, data):
    """Writes `data` to `path` atomically (fsync'ed before the rename)."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    return str(path)


def atomic_write_text(path, text):
    """Writes `text` (UTF-8) to `path` atomically."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path, obj, indent=2):
    """Writes `obj` as JSON to `path` atomically."""
    return atomic_write_text(path, json.dumps(obj, indent=indent) + "\n")


def save_model(model, path):
    """`model.save(path)` through a temporary `.keras` file renamed into place."""
    with atomic_path(path) as tmp:
        tmp.unlink()  # Keras writes a new zip; an empty placeholder would only confuse it
        model.save(tmp)
    return str(path)


def aside_name(path):
    """A free sibling name `NAME.old-YYYYmmdd-HHMMSS[-k]` to move `path` to."""
    path = pathlib.Path(path)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    candidate = path.with_name(f"{path.name}.old-{stamp}")
    k = 1
    while candidate.exists():
        candidate = path.with_name(f"{path.name}.old-{stamp}-{k}")
        k += 1
    return candidate


def load_model(path, compile=False):
    """Loads a `.keras` model; every failure is a `ModelFileError` naming `path`.

    `keras.saving.load_model` reports a present-but-broken archive as
    "File not found", which sends users looking in the wrong place.
    """
    import keras

    import keras_gald.models  # noqa: F401  (registers the serializable layers)

    path = pathlib.Path(path)
    if not path.exists():
        raise ModelFileError(f"model file {path} does not exist")
    if path.is_dir():
        raise ModelFileError(f"model file {path} is a directory, expected a .keras file")
    if path.suffix != ".keras":
        raise ModelFileError(f"model file {path} does not end in .keras")
    if not zipfile.is_zipfile(path):
        raise ModelFileError(
            f"model file {path} is not a .keras archive (not a zip file; truncated or corrupt?)")
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
            names = set(archive.namelist())
    except (zipfile.BadZipFile, OSError) as err:
        raise ModelFileError(f"model file {path} is corrupt: {err}") from err
    if bad is not None:
        raise ModelFileError(f"model file {path} is corrupt: member {bad} fails its CRC check")
    if "config.json" not in names:
        raise ModelFileError(f"model file {path} is not a Keras model archive (no config.json)")
    try:
        return keras.saving.load_model(path, compile=compile)
    except Exception as err:  # Keras raises many types for a bad archive; name the file
        raise ModelFileError(f"cannot load model file {path}: {type(err).__name__}: "
                             f"{str(err).splitlines()[0] if str(err) else ''}") from err
