"""Write torch's zip checkpoint format from numpy, without torch.

So Paddle-trained weights go back to torch tooling on machines without Paddle-side torch. The file is
what ``torch.save`` writes for the same object: ``<archive>/data.pkl`` (protocol 2; tensors as
``torch._utils._rebuild_tensor_v2`` over ``torch.<X>Storage`` persistent ids), one stored (uncompressed)
record per storage with its data 64-byte aligned (``torch.load(..., mmap=True)`` works), plus the
``version``/``byteorder`` records. ``torch.load(weights_only=True)`` accepts it.
Only plain containers, scalars, strings and numeric arrays can be written.
"""
from __future__ import annotations

import io
import pickle
import zipfile
from collections import OrderedDict
from typing import Any, List

import numpy as np

from ..weights import atomic_write

__all__ = ["save_torch_file"]

_ALIGN = 64
_STORAGE_NAMES = {np.dtype(np.float32): "FloatStorage", np.dtype(np.float64): "DoubleStorage",
                  np.dtype(np.float16): "HalfStorage", np.dtype(np.int64): "LongStorage",
                  np.dtype(np.int32): "IntStorage", np.dtype(np.int16): "ShortStorage",
                  np.dtype(np.int8): "CharStorage", np.dtype(np.uint8): "ByteStorage",
                  np.dtype(np.bool_): "BoolStorage", np.dtype(np.complex64): "ComplexFloatStorage",
                  np.dtype(np.complex128): "ComplexDoubleStorage"}
_PLAIN = (dict, OrderedDict, list, tuple, str, bytes, int, float, bool, type(None))


class _Global:
    """A reference to ``module.name`` written as a GLOBAL opcode, never imported here."""

    def __init__(self, module: str, name: str):
        self.module, self.name = module, name

    def __call__(self, *args):  # pickle insists that a reduce function be callable
        raise TypeError(f"{self.module}.{self.name} is only a name to write")


class _StorageRef:
    def __init__(self, key: str, storage: str, numel: int):
        self.key, self.storage, self.numel = key, storage, numel


class _TorchPickler(pickle._Pickler):  # the pure-Python pickler: lets us emit GLOBAL opcodes ourselves
    dispatch = dict(pickle._Pickler.dispatch)

    def __init__(self, file, storages: List[np.ndarray]):
        super().__init__(file, protocol=2)
        self._storages = storages
        self._globals = {}

    def _global(self, module, name):
        key = (module, name)
        if key not in self._globals:
            self._globals[key] = _Global(module, name)
        return self._globals[key]

    def _save_global_ref(self, obj: _Global):
        self.write(pickle.GLOBAL + f"{obj.module}\n{obj.name}\n".encode("ascii"))
        self.memoize(obj)

    dispatch[_Global] = _save_global_ref

    def persistent_id(self, obj):
        if isinstance(obj, _StorageRef):
            return ("storage", self._global("torch", obj.storage), obj.key, "cpu", obj.numel)
        return None

    def reducer_override(self, obj):
        if isinstance(obj, np.ndarray):
            storage = _STORAGE_NAMES.get(obj.dtype.newbyteorder("="))
            if storage is None:
                raise TypeError(f"cannot write a {obj.dtype} array as a torch tensor")
            arr = np.require(obj, obj.dtype.newbyteorder("<"), "C")  # (ascontiguousarray makes 0-d arrays 1-d)
            ref = _StorageRef(str(len(self._storages)), storage, int(arr.size))
            self._storages.append(arr)
            stride = tuple(s // arr.itemsize for s in arr.strides) if arr.size else (0,) * arr.ndim
            args = (ref, 0, tuple(int(n) for n in arr.shape), stride, False, OrderedDict())
            return self._global("torch._utils", "_rebuild_tensor_v2"), args
        if isinstance(obj, (_Global, _StorageRef)) or type(obj) in _PLAIN or obj is OrderedDict:
            return NotImplemented
        raise TypeError(f"cannot write {type(obj).__name__} into a torch checkpoint")


def _plain(obj):
    """numpy scalars → Python values (torch's safe loader rejects numpy globals); containers copied."""
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, dict):
        return type(obj)((k, _plain(v)) for k, v in obj.items())
    if isinstance(obj, (list, tuple)):
        return type(obj)(_plain(v) for v in obj)
    return obj


def _write_record(zf: zipfile.ZipFile, name: str, data: bytes):
    """A stored record whose data starts on a 64-byte boundary (padding in the extra field, as torch does)."""
    info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
    info.compress_type = zipfile.ZIP_STORED
    header_end = zf.fp.tell() + 30 + len(name.encode("utf-8")) + 4
    pad = (-header_end) % _ALIGN
    info.extra = b"FB" + pad.to_bytes(2, "little") + b"Z" * pad
    zf.writestr(info, data)


def save_torch_file(obj: Any, path, archive: str = "archive"):
    """Write ``obj`` (containers of numpy arrays and plain values) as a torch zip checkpoint, atomically."""
    storages: List[np.ndarray] = []
    buf = io.BytesIO()
    _TorchPickler(buf, storages).dump(_plain(obj))

    def write(tmp):
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
            _write_record(zf, f"{archive}/data.pkl", buf.getvalue())
            _write_record(zf, f"{archive}/byteorder", b"little")
            for key, arr in enumerate(storages):
                _write_record(zf, f"{archive}/data/{key}", arr.tobytes())
            _write_record(zf, f"{archive}/version", b"3\n")
            _write_record(zf, f"{archive}/.format_version", b"1")
            _write_record(zf, f"{archive}/.storage_alignment", b"64")

    return atomic_write(path, write)
