"""Reading weight files without PyTorch: `.pth` (both torch.save formats), `.npz`,
`.safetensors` and Keras 2 / `keras.applications` `.h5`.

`read_tensors(path) -> (kind, {name: np.ndarray})`, `kind` one of `"torch"` (a PyTorch-style
state dict, from `.pth/.pt/.pth.tar/.bin/.npz/.safetensors`) or `"keras_h5"` (`{layer_name +
"/" + weight_name: array}` from a Keras 2 HDF5 weights / model file, e.g.
`resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5` as `keras.applications` downloads it).

PyTorch files are read without importing torch:

- the zip format of `torch.save` (PyTorch >= 1.6): `<archive>/data.pkl` is a pickle whose
  tensors are `torch._utils._rebuild_tensor_v2(storage, offset, size, stride, ...)` with the
  storages as persistent ids `("storage", torch.FloatStorage, key, location, numel)`, their
  bytes in `<archive>/data/<key>` (little endian);
- the legacy format (PyTorch < 1.6): pickles of a magic number, protocol version and system
  info, the object (storages as `("storage", type, key, location, numel, view)`), the list of
  storage keys, then per key an int64 element count and the raw bytes.

The unpickler resolves only tensor rebuilding, storages and `collections.OrderedDict`; any
other class (e.g. an `argparse.Namespace` of training arguments in a checkpoint) becomes an
inert placeholder, so no code from the file is ever run. A `{"state_dict": ...}`,
`{"model": ...}` or `{"model_state": ...}` wrapper is unwrapped.
"""

import collections
import io
import json
import os
import pickle
import zipfile

import numpy as np

TORCH_SUFFIXES = (".pth", ".pt", ".pth.tar", ".bin", ".ckpt")
_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_STORAGE_DTYPES = {
    "FloatStorage": np.float32, "DoubleStorage": np.float64, "HalfStorage": np.float16,
    "BFloat16Storage": None, "LongStorage": np.int64, "IntStorage": np.int32,
    "ShortStorage": np.int16, "CharStorage": np.int8, "ByteStorage": np.uint8,
    "BoolStorage": np.bool_, "UntypedStorage": np.uint8,
}
_SAFETENSORS_DTYPES = {"F32": np.float32, "F64": np.float64, "F16": np.float16,
                       "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8,
                       "U8": np.uint8, "BOOL": np.bool_, "BF16": None}


class CheckpointReadError(ValueError):
    """A weights file could not be read (the message names it)."""


class _StorageType:
    def __init__(self, name, path):
        if name not in _STORAGE_DTYPES:
            raise CheckpointReadError(f"{path}: unsupported tensor storage torch.{name}")
        self.name = name
        self.bfloat16 = _STORAGE_DTYPES[name] is None
        self.dtype = np.dtype(np.uint16 if self.bfloat16 else _STORAGE_DTYPES[name])


class _Storage:
    """Storage bytes (filled later for the legacy format)."""

    def __init__(self, storage_type, numel):
        self.type = storage_type
        self.numel = int(numel)
        self.array = None
        self.base, self.base_offset = None, 0

    def values(self):
        if self.base is not None:
            return self.base.values()[self.base_offset: self.base_offset + self.numel]
        return self.array


class _LazyTensor:
    def __init__(self, storage, offset, size, stride):
        self.storage, self.offset = storage, int(offset)
        self.size, self.stride = tuple(int(s) for s in size), tuple(int(s) for s in stride)

    def materialize(self):
        flat = self.storage.values()
        item = flat.dtype.itemsize
        if not self.size:
            array = np.array(flat[self.offset])
        else:
            array = np.lib.stride_tricks.as_strided(
                flat[self.offset:], shape=self.size,
                strides=tuple(s * item for s in self.stride)).copy()
        if self.storage.type.bfloat16:  # bfloat16 = the top 16 bits of a float32
            array = (array.astype(np.uint32) << 16).view(np.float32)
        return array


def _rebuild_tensor(storage, offset, size, stride, *unused):
    return _LazyTensor(storage, offset, size, stride)


def _rebuild_parameter(data, *unused):
    return data


class _Opaque:
    """Stands in for any class the file names besides tensors (never runs its code)."""

    def __new__(cls, *args, **kwargs):
        return object.__new__(cls)

    def __init__(self, *args, **kwargs):
        pass

    def __setstate__(self, state):
        self.__dict__["_state"] = state

    def __call__(self, *args, **kwargs):
        return _Opaque()


def _opaque_class(module, name):
    return type(name, (_Opaque,), {"__module__": module})


class _Unpickler(pickle.Unpickler):
    def __init__(self, file, path, storages):
        super().__init__(file)
        self.path, self.storages = path, storages

    def find_class(self, module, name):
        if module == "torch._utils" and name in ("_rebuild_tensor_v2", "_rebuild_tensor"):
            return _rebuild_tensor
        if module == "torch._utils" and name == "_rebuild_parameter":
            return _rebuild_parameter
        if module == "torch" and name.endswith("Storage"):
            return _StorageType(name, self.path)
        if module == "collections" and name == "OrderedDict":
            return collections.OrderedDict
        return _opaque_class(module, name)

    def persistent_load(self, pid):
        if not isinstance(pid, tuple) or not pid or pid[0] != "storage":
            raise CheckpointReadError(f"{self.path}: unexpected persistent id {pid!r}")
        storage_type, key, numel = pid[1], str(pid[2]), pid[4]
        if key not in self.storages:
            self.storages[key] = _Storage(storage_type, numel)
        storage = self.storages[key]
        view = pid[5] if len(pid) > 5 else None
        if view is not None:  # legacy: (view_key, offset, view_size)
            view_key, offset, view_size = view
            if view_key not in self.storages:
                sub = _Storage(storage_type, view_size)
                sub.base, sub.base_offset = storage, int(offset)
                self.storages[view_key] = sub
            return self.storages[view_key]
        return storage


def _materialize(obj):
    if isinstance(obj, _LazyTensor):
        return obj.materialize()
    if isinstance(obj, dict):
        return type(obj)((k, _materialize(v)) for k, v in obj.items()) if isinstance(
            obj, collections.OrderedDict) else {k: _materialize(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_materialize(v) for v in obj)
    return obj


def _read_torch_zip(path):
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
        pickles = [n for n in names if n.endswith("data.pkl")]
        if len(pickles) != 1:
            raise CheckpointReadError(f"{path}: not a torch.save zip (no single data.pkl)")
        prefix = pickles[0][: -len("data.pkl")]
        byteorder = "little"
        if prefix + "byteorder" in names:
            byteorder = archive.read(prefix + "byteorder").decode().strip()
        storages = {}
        obj = _Unpickler(io.BytesIO(archive.read(pickles[0])), path, storages).load()
        for key, storage in storages.items():
            if storage.base is not None:
                continue
            raw = archive.read(f"{prefix}data/{key}")
            dtype = storage.type.dtype.newbyteorder("<" if byteorder == "little" else ">")
            storage.array = np.frombuffer(raw, dtype).astype(storage.type.dtype)
    return _materialize(obj)


def _read_torch_legacy(path):
    with open(path, "rb") as f:
        try:
            magic = pickle.load(f)
        except Exception:  # noqa: BLE001 - any unpickling failure means "not this format"
            magic = None
        if magic != _LEGACY_MAGIC:
            raise CheckpointReadError(
                f"{path}: neither a torch.save zip nor a legacy torch.save file")
        pickle.load(f)  # protocol version
        pickle.load(f)  # sys info
        storages = {}
        obj = _Unpickler(f, path, storages).load()
        keys = pickle.load(f)
        for key in keys:
            storage = storages[str(key)]
            count = int(np.frombuffer(f.read(8), "<i8")[0])
            raw = f.read(count * storage.type.dtype.itemsize)
            storage.array = np.frombuffer(raw, storage.type.dtype.newbyteorder("<")).astype(
                storage.type.dtype)
    return _materialize(obj)


def _read_safetensors(path):
    with open(path, "rb") as f:
        length = int(np.frombuffer(f.read(8), "<u8")[0])
        header = json.loads(f.read(length))
        body = f.read()
    out = {}
    for name, spec in header.items():
        if name == "__metadata__":
            continue
        start, end = spec["data_offsets"]
        kind = spec["dtype"]
        if kind not in _SAFETENSORS_DTYPES:
            raise CheckpointReadError(f"{path}: unsupported safetensors dtype {kind} ({name})")
        if kind == "BF16":
            bits = np.frombuffer(body[start:end], "<u2").astype(np.uint32) << 16
            array = bits.view(np.float32)
        else:
            array = np.frombuffer(body[start:end], np.dtype(_SAFETENSORS_DTYPES[kind]).newbyteorder("<"))
        out[name] = array.reshape(spec["shape"]).copy()
    return out


def _unwrap(obj, path):
    for _ in range(2):
        if isinstance(obj, dict):
            for wrapper in ("state_dict", "model", "model_state", "module"):
                if isinstance(obj.get(wrapper), dict):
                    obj = obj[wrapper]
                    break
    if not isinstance(obj, dict):
        raise CheckpointReadError(f"{path}: expected a state dict (name -> tensor), got {type(obj).__name__}")
    tensors = {str(k): v for k, v in obj.items() if isinstance(v, np.ndarray)}
    if not tensors:
        raise CheckpointReadError(f"{path}: holds no tensors")
    return tensors


def read_torch_file(path):
    """A PyTorch `.pth` / `.pt` state dict -> `{key: np.ndarray}` (no torch needed)."""
    path = os.fspath(path)
    if zipfile.is_zipfile(path):
        return _unwrap(_read_torch_zip(path), path)
    return _unwrap(_read_torch_legacy(path), path)


def _read_keras_h5(path):
    import h5py

    out = {}
    with h5py.File(path, "r") as f:
        group = f["model_weights"] if "model_weights" in f else f
        if "layer_names" not in group.attrs:
            raise CheckpointReadError(
                f"{path}: not a Keras 2 / keras.applications HDF5 weights file (no "
                "'layer_names'); a Keras 3 '.weights.h5' loads only into the architecture "
                "that saved it")
        for layer in group.attrs["layer_names"]:
            layer = layer.decode() if isinstance(layer, bytes) else str(layer)
            g = group[layer]
            for weight in g.attrs.get("weight_names", []):
                weight = weight.decode() if isinstance(weight, bytes) else str(weight)
                short = weight.split("/")[-1].split(":")[0]
                out[f"{layer}/{short}"] = np.asarray(g[weight])
    return out


def read_tensors(path):
    """-> `(kind, tensors)`: `"torch"` state dicts or `"keras_h5"` weights (module docstring).

    Raises `FileNotFoundError` / `CheckpointReadError` (a `ValueError`) naming the file.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"weights file not found: {path}")
    low = path.lower()
    try:
        if low.endswith(".npz"):
            with np.load(path, allow_pickle=False) as npz:
                return "torch", {k: npz[k] for k in npz.files}
        if low.endswith(".safetensors"):
            return "torch", _read_safetensors(path)
        if low.endswith((".h5", ".hdf5")):
            return "keras_h5", _read_keras_h5(path)
        if low.endswith(TORCH_SUFFIXES):
            return "torch", read_torch_file(path)
    except CheckpointReadError:
        raise
    except (OSError, ValueError, KeyError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile) as err:
        raise CheckpointReadError(f"cannot read weights file {path}: {err}") from err
    raise CheckpointReadError(
        f"unsupported weights file {path}: expected .pth/.pt/.bin (PyTorch), .npz, "
        ".safetensors or .h5 (Keras / keras.applications)")
