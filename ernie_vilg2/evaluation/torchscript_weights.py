"""Read the tensors of a TorchScript archive (a ``.pt`` zip) with zipfile + NumPy: no torch,
and no arbitrary unpickling.

A TorchScript archive is a zip holding ``<name>/data.pkl`` (the module tree as a pickle),
``<name>/data/<key>`` (the raw bytes of each tensor storage) and ``<name>/code/`` (the
TorchScript source). The pickle names its module classes (``__torch__.…``) and rebuilds
each tensor with ``torch._utils._rebuild_tensor_v2`` from a persistent id
``("storage", torch.FloatStorage, key, location, numel)``. The unpickler below resolves
exactly those names to inert stand-ins: module classes become records that only keep
their attribute dict, tensors become NumPy arrays read from the zip after their bounds are
checked; any other global (``os.system``, ``builtins.eval``, ...) is refused with
:class:`UnsafeArchiveError` before anything is called.
"""
from __future__ import annotations

import io
import math
import pickle
import zipfile
from collections import OrderedDict
from typing import Any, Dict, Tuple

import numpy as np

from ..errors import ErnieViLG2Error

# torch storage class -> dtype of its bytes (little-endian, as torch writes them).
STORAGE_DTYPES = {
    "FloatStorage": np.dtype("<f4"),
    "DoubleStorage": np.dtype("<f8"),
    "HalfStorage": np.dtype("<f2"),
    "LongStorage": np.dtype("<i8"),
    "IntStorage": np.dtype("<i4"),
    "ShortStorage": np.dtype("<i2"),
    "CharStorage": np.dtype("i1"),
    "ByteStorage": np.dtype("u1"),
    "BoolStorage": np.dtype("?"),
}


class UnsafeArchiveError(ErnieViLG2Error, ValueError):
    """The archive holds something other than module records and tensors, or is malformed.
    ``str()`` is one line naming the file."""

    def __init__(self, path: str, reason: str):
        self.path = str(path)
        super().__init__(f"{self.path}: {reason}")


class ModuleRecord:
    """Stand-in for a TorchScript module object: its attribute dict and nothing else."""

    type_name = "?"

    def __init__(self, *args):
        raise pickle.UnpicklingError(f"module record {self.type_name} called like a function")

    def __setstate__(self, state):
        if not isinstance(state, dict) or not all(isinstance(k, str) for k in state):
            raise pickle.UnpicklingError(f"module record {self.type_name}: state is not a dict of attributes")
        self.attributes = state


class _Tensor:
    """A rebuilt tensor (kept wrapped until the whole pickle has loaded)."""

    __slots__ = ("array",)

    def __init__(self, array: np.ndarray):
        self.array = array

    def __setstate__(self, state):
        raise pickle.UnpicklingError("BUILD on a tensor")


class _Storage:
    __slots__ = ("array",)

    def __init__(self, array: np.ndarray):
        self.array = array


class _StorageType:
    __slots__ = ("name", "dtype")

    def __init__(self, name: str, dtype: np.dtype):
        self.name, self.dtype = name, dtype


def _int_tuple(value, what: str) -> Tuple[int, ...]:
    if not isinstance(value, tuple) or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0
                                               for v in value):
        raise pickle.UnpicklingError(f"tensor {what} must be a tuple of non-negative integers, got {value!r}")
    return value


def _rebuild_tensor(storage, offset, size, stride, requires_grad=False, backward_hooks=None, *metadata):
    """``torch._utils._rebuild_tensor_v2`` over a NumPy storage, with every index checked."""
    if not isinstance(storage, _Storage):
        raise pickle.UnpicklingError("tensor without a storage")
    if not isinstance(offset, int) or isinstance(offset, bool) or offset < 0:
        raise pickle.UnpicklingError(f"tensor offset must be a non-negative integer, got {offset!r}")
    size, stride = _int_tuple(size, "size"), _int_tuple(stride, "stride")
    if len(size) != len(stride):
        raise pickle.UnpicklingError(f"tensor size {size} and stride {stride} differ in length")
    data = storage.array
    if math.prod(size) > data.size:  # weights are never broadcast views
        raise pickle.UnpicklingError(f"tensor of size {size} is larger than its storage of {data.size}")
    if math.prod(size) == 0:
        return _Tensor(np.zeros(size, data.dtype))
    last = offset + sum((n - 1) * s for n, s in zip(size, stride))
    if last >= data.size:
        raise pickle.UnpicklingError(
            f"tensor of size {size}, stride {stride}, offset {offset} reaches element {last} "
            f"of a storage of {data.size}")
    view = np.lib.stride_tricks.as_strided(data[offset:], shape=size, strides=[s * data.itemsize for s in stride])
    return _Tensor(np.ascontiguousarray(view))


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, data: bytes, archive: zipfile.ZipFile, prefix: str):
        super().__init__(io.BytesIO(data))
        self._archive, self._prefix = archive, prefix
        self._storages: Dict[str, _Storage] = {}

    def find_class(self, module: str, name: str):
        if module == "__torch__" or module.startswith("__torch__."):
            return type(name, (ModuleRecord,), {"type_name": f"{module}.{name}"})
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return _rebuild_tensor
        if module == "torch" and name in STORAGE_DTYPES:
            return _StorageType(name, STORAGE_DTYPES[name])
        if (module, name) == ("collections", "OrderedDict"):
            return OrderedDict  # a tensor's (empty) backward hooks
        if module == "torch.jit._pickle" and name in ("build_intlist", "build_floatlist", "build_boollist"):
            return list
        raise pickle.UnpicklingError(f"refused pickle global {module}.{name} "
                                     "(only TorchScript module records and tensors are read)")

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"
                and isinstance(pid[1], _StorageType) and isinstance(pid[2], str)
                and isinstance(pid[4], int) and pid[4] >= 0):
            raise pickle.UnpicklingError(f"refused persistent id {pid!r} (only tensor storages are read)")
        _, storage_type, key, _location, numel = pid
        if key not in self._storages:
            entry = f"{self._prefix}data/{key}"
            try:
                info = self._archive.getinfo(entry)
            except KeyError:
                raise pickle.UnpicklingError(f"storage {key!r}: no {entry} in the archive") from None
            expected = numel * storage_type.dtype.itemsize
            if info.file_size != expected:
                raise pickle.UnpicklingError(f"storage {key!r}: {entry} has {info.file_size} bytes, "
                                             f"expected {expected} ({numel} x {storage_type.name})")
            raw = self._archive.read(entry)
            self._storages[key] = _Storage(np.frombuffer(raw, dtype=storage_type.dtype))
        return self._storages[key]


def _archive_prefix(archive: zipfile.ZipFile) -> str:
    pickles = [n for n in archive.namelist() if n.endswith("/data.pkl") and n.count("/") == 1]
    if len(pickles) != 1:
        raise ValueError(f"expected one <name>/data.pkl in the archive, found {len(pickles)}")
    return pickles[0][: -len("data.pkl")]


def _flatten(obj: Any, prefix: str, tensors: Dict[str, np.ndarray], attributes: Dict[str, Any]) -> None:
    for name, value in getattr(obj, "attributes", {}).items():
        key = f"{prefix}{name}"
        if isinstance(value, ModuleRecord):
            _flatten(value, key + ".", tensors, attributes)
        elif isinstance(value, _Tensor):
            tensors[key] = value.array
        elif value is None or isinstance(value, (bool, int, float, str, list, tuple)):
            attributes[key] = value
        else:
            raise pickle.UnpicklingError(f"unexpected attribute {key} of type {type(value).__name__}")


def read_torchscript(path: str) -> Tuple[Dict[str, np.ndarray], Dict[str, Any]]:
    """``(tensors, attributes)`` of the TorchScript archive at ``path``, keyed by dotted
    module path (``net.layers.conv.weight``); attributes are the modules' plain values
    (``net.layers.conv.stride``). Raises :class:`UnsafeArchiveError` naming the file for
    anything that is not a module record, a tensor or a plain value."""
    try:
        with zipfile.ZipFile(path) as archive:
            prefix = _archive_prefix(archive)
            root = _RestrictedUnpickler(archive.read(prefix + "data.pkl"), archive, prefix).load()
    except FileNotFoundError:
        raise
    except (zipfile.BadZipFile, ValueError, pickle.UnpicklingError, EOFError, KeyError, TypeError,
            AttributeError, IndexError, OverflowError, MemoryError, RecursionError) as exc:
        raise UnsafeArchiveError(path, f"not a TorchScript weights archive we accept: {exc}") from None
    if not isinstance(root, ModuleRecord):
        raise UnsafeArchiveError(path, f"the pickle's root is a {type(root).__name__}, not a module")
    tensors: Dict[str, np.ndarray] = {}
    attributes: Dict[str, Any] = {}
    try:
        _flatten(root, "", tensors, attributes)
    except (pickle.UnpicklingError, RecursionError) as exc:
        raise UnsafeArchiveError(path, str(exc)) from None
    return tensors, attributes
