"""Writes PyTorch `torch.save` files without PyTorch, for the reader tests.

`save_zip(path, state)` writes the zip format of PyTorch >= 1.6, `save_legacy(path, state)`
the pre-1.6 format; `state` maps names to NumPy arrays. Pickling the tensor-rebuild calls
by reference needs importable `torch` / `torch._utils` modules: two empty stand-in modules
are put in `sys.modules` only while pickling (and removed again).
"""

import collections
import contextlib
import io
import pickle
import sys
import types
import zipfile

import numpy as np

_STORAGE = {np.dtype(np.float32): "FloatStorage", np.dtype(np.float64): "DoubleStorage",
            np.dtype(np.float16): "HalfStorage", np.dtype(np.int64): "LongStorage",
            np.dtype(np.int32): "IntStorage", np.dtype(np.uint8): "ByteStorage"}


@contextlib.contextmanager
def _fake_torch():
    assert "torch" not in sys.modules, "these writers are for environments without torch"
    torch, utils = types.ModuleType("torch"), types.ModuleType("torch._utils")

    def _rebuild_tensor_v2(*args):  # never called: only pickled by reference
        raise AssertionError

    _rebuild_tensor_v2.__module__ = "torch._utils"
    _rebuild_tensor_v2.__qualname__ = "_rebuild_tensor_v2"
    utils._rebuild_tensor_v2 = _rebuild_tensor_v2
    for name in set(_STORAGE.values()):
        setattr(torch, name, type(name, (), {"__module__": "torch", "__qualname__": name}))
    torch._utils = utils
    sys.modules["torch"], sys.modules["torch._utils"] = torch, utils
    try:
        yield torch, utils
    finally:
        del sys.modules["torch"], sys.modules["torch._utils"]


class _Tensor:
    def __init__(self, array, key, rebuild, view=False):
        self.array, self.key, self.rebuild, self.view = array, key, rebuild, view

    def __reduce__(self):
        a = self.array
        stride = tuple(s // a.itemsize for s in a.strides)
        return (self.rebuild, (("storage", self.key), 0, a.shape, stride, False,
                               collections.OrderedDict()))


def _pickle(state, legacy):
    storages = []
    with _fake_torch() as (torch, utils):
        class P(pickle.Pickler):
            def persistent_id(self, obj):
                if isinstance(obj, tuple) and len(obj) == 2 and obj[0] == "storage":
                    array = storages[int(obj[1])]
                    storage_type = getattr(torch, _STORAGE[array.dtype])
                    pid = ("storage", storage_type, str(obj[1]), "cpu", array.size)
                    return pid + (None,) if legacy else pid
                return None

        tensors = collections.OrderedDict()
        for name, value in state.items():
            array = np.asarray(value).copy(order="C")
            if name.endswith("running_var") and array.ndim == 1 and array.size > 2:
                # a non-contiguous view into a bigger storage: exercise offset / stride
                big = np.zeros(array.size * 2, array.dtype)
                big[::2] = array
                storages.append(big)
                tensors[name] = _StridedTensor(big, len(storages) - 1, utils._rebuild_tensor_v2,
                                               array.shape)
                continue
            storages.append(array.reshape(-1))
            tensors[name] = _Tensor(array, len(storages) - 1, utils._rebuild_tensor_v2)
        buf = io.BytesIO()
        P(buf, protocol=2).dump({"state_dict": tensors, "epoch": 3})
    return buf.getvalue(), storages


class _StridedTensor(_Tensor):
    def __init__(self, storage, key, rebuild, shape):
        super().__init__(storage, key, rebuild)
        self.shape = shape

    def __reduce__(self):
        return (self.rebuild, (("storage", self.key), 0, self.shape, (2,), False,
                               collections.OrderedDict()))


def save_zip(path, state):
    data, storages = _pickle(state, legacy=False)
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("archive/data.pkl", data)
        z.writestr("archive/byteorder", "little")
        z.writestr("archive/version", "3\n")
        for key, array in enumerate(storages):
            z.writestr(f"archive/data/{key}", array.astype(array.dtype.newbyteorder("<")).tobytes())


def save_legacy(path, state):
    data, storages = _pickle(state, legacy=True)
    with open(path, "wb") as f:
        pickle.dump(0x1950A86A20F9469CFC6C, f, protocol=2)
        pickle.dump(1001, f, protocol=2)
        pickle.dump({"protocol_version": 1001, "little_endian": True}, f, protocol=2)
        f.write(data)
        pickle.dump([str(k) for k in range(len(storages))], f, protocol=2)
        for array in storages:
            f.write(np.int64(array.size).tobytes())
            f.write(array.astype(array.dtype.newbyteorder("<")).tobytes())
