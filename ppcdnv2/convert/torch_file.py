"""Read PyTorch checkpoint files into numpy without torch and without running their pickle code.

``torch.load`` unpickles whatever the file asks for, so a checkpoint downloaded from the internet can
run arbitrary code. This reader understands the two formats ``torch.save`` writes — the zip format
(torch >= 1.6: ``<archive>/data.pkl`` plus one ``<archive>/data/<key>`` record per storage) and the
legacy format (magic number, protocol and system-info pickles, the object pickle, the storage keys,
then each storage's raw bytes) — and rebuilds the object with only the globals a checkpoint needs:
tensor rebuilders (tensors become numpy arrays, views/strides/offsets honoured), storage types,
``OrderedDict``, ``argparse.Namespace`` (rebuilt as a plain ``SimpleNamespace``) and a few inert
builtins. Any other global is refused with :class:`UnsafeCheckpointError` before anything runs.

Files saved from GPU tensors (``torch.cuda.FloatStorage`` & co. at location ``'cuda:0'``, e.g. every
checkpoint a torch 1.x GPU process wrote) read as their CPU equivalents; the location is ignored. Every
tensor is read through its storage offset, size and stride (several tensors may be views of one shared
storage, e.g. the flattened cuDNN weights of a GPU GRU/LSTM) and must lie inside its storage; a view that
reaches past the end is a :class:`TorchFileError` naming the file and the tensor's key.
``OrderedDict`` attributes such as ``_metadata`` of ``state_dict()`` survive.

Memory is bounded by what the file can honestly hold, checked before anything is allocated: a storage
may not declare more bytes than its zip record (or, in the legacy format, than the rest of the file)
holds; zip records are read in bounded chunks, only stored or deflated, and the deflated ones may not
inflate to more than ``MAX_INFLATE_RATIO`` times the file's size (plus ``INFLATE_ALLOWANCE``); a
tensor may not hold more elements than its storage (stride-0 views beyond ``VIEW_ALLOWANCE`` bytes are
refused), and all tensors together at most ``MAX_VIEW_COPIES`` times the bytes of all storages (plus
``VIEW_ALLOWANCE``), so a small file declaring a huge view or a zip bomb is a :class:`TorchFileError`,
not gigabytes of memory.
"""
from __future__ import annotations

import _compat_pickle
import io
import os
import pickle
import struct
import tarfile
import types
import zipfile
import zlib
from collections import OrderedDict
from pathlib import Path
from typing import Any, Dict, Optional

import numpy as np

from ..weights import SAFE_NUMPY_GLOBALS, WeightsError, mapped, numpy_value, scan_pickle

__all__ = ["load_torch_file", "TorchFileError", "UnsafeCheckpointError", "STORAGE_DTYPES"]

_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_LEGACY_PROTOCOL = 1001
_BFLOAT16 = "bfloat16"  # numpy has no bfloat16: widened to float32 (exactly) when rebuilt

# memory bounds (see the module docstring); torch writes stored records, so any inflation is unusual
MAX_INFLATE_RATIO = 100  # deflate gets ~1.1x on float weights; a zip bomb gets ~1000x
INFLATE_ALLOWANCE = 16 << 20  # small, very compressible records (a zero buffer) inflate freely
MAX_VIEW_COPIES = 8  # tied weights: several tensors may each copy the same storage
VIEW_ALLOWANCE = 1 << 20  # small expanded (stride-0) buffers, copied element by element
_CHUNK = 1 << 20

# torch storage type name -> numpy dtype (little endian; byte order fixed up per file)
STORAGE_DTYPES: Dict[str, Any] = {
    "FloatStorage": np.dtype("<f4"), "DoubleStorage": np.dtype("<f8"), "HalfStorage": np.dtype("<f2"),
    "BFloat16Storage": _BFLOAT16, "LongStorage": np.dtype("<i8"), "IntStorage": np.dtype("<i4"),
    "ShortStorage": np.dtype("<i2"), "CharStorage": np.dtype("i1"), "ByteStorage": np.dtype("u1"),
    "BoolStorage": np.dtype("?"), "ComplexFloatStorage": np.dtype("<c8"),
    "ComplexDoubleStorage": np.dtype("<c16"), "UntypedStorage": np.dtype("u1"),
}
_TORCH_DTYPES = {"float32": "FloatStorage", "float": "FloatStorage", "float64": "DoubleStorage",
                 "double": "DoubleStorage", "float16": "HalfStorage", "half": "HalfStorage",
                 "bfloat16": "BFloat16Storage", "int64": "LongStorage", "long": "LongStorage",
                 "int32": "IntStorage", "int": "IntStorage", "int16": "ShortStorage", "int8": "CharStorage",
                 "uint8": "ByteStorage", "bool": "BoolStorage", "complex64": "ComplexFloatStorage",
                 "complex128": "ComplexDoubleStorage"}


class TorchFileError(WeightsError):
    """A file that is not a readable torch checkpoint (truncated, corrupt, another format)."""


class UnsafeCheckpointError(TorchFileError):
    """The checkpoint asks for a Python global that a weights file never needs; nothing was run."""


# --- placeholders built while unpickling, resolved to arrays once the storage bytes are known ----
class _StorageType:
    """Stands for ``torch.<X>Storage``: only carries the element type."""

    __slots__ = ("name", "dtype")

    def __init__(self, name):
        self.name, self.dtype = name, STORAGE_DTYPES[name]

    def __setstate__(self, state):  # shared by every load: a pickle must not rewrite its dtype
        raise pickle.UnpicklingError("BUILD on a storage type")


class _TorchDtype:
    """Stands for ``torch.float32`` & co. (appear in some checkpoints and in ``_rebuild_tensor_v3``)."""

    __slots__ = ("name", "storage")

    def __init__(self, name, storage_name):
        self.name, self.storage = name, storage_name

    def __setstate__(self, state):
        raise pickle.UnpicklingError("BUILD on a torch dtype")


class _Storage:
    __slots__ = ("key", "dtype", "numel", "data")

    def __init__(self, key, dtype, numel):
        self.key, self.dtype, self.numel, self.data = key, dtype, numel, None

    def __setstate__(self, state):
        raise pickle.UnpicklingError("BUILD on a storage")


class _TensorRef:
    __slots__ = ("storage", "offset", "size", "stride", "dtype")

    def __init__(self, storage, offset, size, stride, dtype=None):
        self.storage, self.offset, self.size, self.stride, self.dtype = storage, offset, size, stride, dtype

    def __setstate__(self, state):
        raise pickle.UnpicklingError("BUILD on a tensor")


class _TypeMarker:
    """Stands for ``torch.Tensor`` / ``torch.nn.Parameter`` in ``_rebuild_from_type_v2``."""

    __slots__ = ("name",)

    def __init__(self, name):
        self.name = name

    def __setstate__(self, state):
        raise pickle.UnpicklingError("BUILD on a torch type")


def _ints(value, what):
    if not isinstance(value, (tuple, list)) or not all(type(v) is int for v in value):
        raise pickle.UnpicklingError(f"tensor {what} must be a tuple of ints, got {value!r:.80}")
    return tuple(value)


def _rebuild_tensor(storage, storage_offset, size, stride, *_ignored):
    if not isinstance(storage, _Storage) or type(storage_offset) is not int:
        raise pickle.UnpicklingError("malformed tensor record")
    size, stride = _ints(size, "size"), _ints(stride, "stride")
    if len(size) != len(stride) or storage_offset < 0 or any(s < 0 for s in size + stride):
        raise pickle.UnpicklingError(f"malformed tensor record: size {size}, stride {stride}, offset {storage_offset}")
    return _TensorRef(storage, storage_offset, size, stride)


def _rebuild_tensor_v3(storage, storage_offset, size, stride, requires_grad, backward_hooks, dtype, *_ignored):
    ref = _rebuild_tensor(storage, storage_offset, size, stride)
    if isinstance(dtype, _TorchDtype):
        ref.dtype = STORAGE_DTYPES[dtype.storage]
    return ref


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None, *_state):
    if not isinstance(data, _TensorRef):
        raise pickle.UnpicklingError("a parameter must wrap a tensor")
    return data


def _rebuild_from_type_v2(func, new_type, args, state):
    if not isinstance(new_type, _TypeMarker) or func not in (_rebuild_tensor, _rebuild_tensor_v3, _rebuild_parameter):
        raise pickle.UnpicklingError("unsupported tensor subclass record")
    return func(*args)


def _torch_device(*args):
    return str(args[0]) if args else "cpu"


def _codecs_encode(text, encoding="latin1"):
    """Protocol-2 pickles store ``bytes`` as ``_codecs.encode(str, 'latin1')``; nothing else is allowed."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError("unexpected _codecs.encode call")
    return text.encode("latin1")


def _allowed_globals() -> Dict[tuple, Any]:
    g: Dict[tuple, Any] = {
        ("collections", "OrderedDict"): OrderedDict,
        ("argparse", "Namespace"): types.SimpleNamespace,
        ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
        ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
        ("torch._utils", "_rebuild_tensor_v3"): _rebuild_tensor_v3,
        ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
        ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
        ("torch._tensor", "_rebuild_from_type_v2"): _rebuild_from_type_v2,
        ("torch", "Tensor"): _TypeMarker("Tensor"),
        ("torch.nn.parameter", "Parameter"): _TypeMarker("Parameter"),
        ("torch", "device"): _torch_device,
        ("torch", "Size"): tuple,
        ("_codecs", "encode"): _codecs_encode,
        ("builtins", "set"): set, ("builtins", "frozenset"): frozenset, ("builtins", "slice"): slice,
        ("builtins", "complex"): complex,
    }
    for name in STORAGE_DTYPES:
        g[("torch", name)] = g[("torch.cuda", name)] = _StorageType(name)
    g[("torch.storage", "UntypedStorage")] = g[("torch", "UntypedStorage")]
    for name, storage in _TORCH_DTYPES.items():
        g[("torch", name)] = _TorchDtype(name, storage)
    # numpy scalars/arrays (metrics saved as numpy values), rebuilt from checked values (never by numpy's
    # own unpickling, see ppcdnv2.weights); object arrays only hold already-vetted objects
    g.update(SAFE_NUMPY_GLOBALS)
    return g


_ALLOWED = _allowed_globals()


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, file, path, storages: Optional[Dict[str, _Storage]] = None, legacy=False):
        super().__init__(file)
        self._path, self._storages, self._legacy = path, storages, legacy

    def find_class(self, module, name):
        # protocol-2 pickles written by Python 3 use Python 2 names (builtins -> __builtin__, ...)
        if (module, name) in _compat_pickle.NAME_MAPPING:
            module, name = _compat_pickle.NAME_MAPPING[(module, name)]
        elif module in _compat_pickle.IMPORT_MAPPING:
            module = _compat_pickle.IMPORT_MAPPING[module]
        key = (module, name)
        if key not in _ALLOWED:
            hint = ""
            if module.startswith(("torch.nn", "__main__", "__torch__")):
                hint = " (a pickled model or custom object: save model.state_dict() instead)"
            raise UnsafeCheckpointError(
                f"{self._path}: refusing to load: the file asks for the Python global {module}.{name}, which a "
                f"checkpoint of weights never needs{hint}; nothing from the file was run")
        return _ALLOWED[key]

    def persistent_load(self, pid):
        if self._storages is None:
            raise pickle.UnpicklingError("unexpected storage reference")
        if not isinstance(pid, tuple) or not pid or pid[0] not in ("storage", b"storage"):
            raise pickle.UnpicklingError(f"unsupported persistent id {str(pid)[:60]}")
        if len(pid) == 5 and not self._legacy:
            _, stype, key, _location, numel = pid
            view = None
        elif len(pid) == 6 and self._legacy:
            _, stype, key, _location, numel, view = pid
        else:
            raise pickle.UnpicklingError(f"malformed storage reference {str(pid)[:80]}")
        # the location ('cpu', 'cuda:0', ...) is ignored: torch.cuda.<X>Storage reads as torch.<X>Storage
        if (not isinstance(stype, _StorageType) or not isinstance(key, str) or not isinstance(_location, str)
                or type(numel) is not int or numel < 0):
            raise pickle.UnpicklingError(f"malformed storage reference {str(pid)[:80]}")
        if view is not None and not (isinstance(view, tuple) and len(view) == 3 and isinstance(view[0], str)
                                     and all(type(v) is int and v >= 0 for v in view[1:])):
            raise pickle.UnpicklingError(f"malformed storage view {str(view)[:80]}")
        storage = self._storages.get(key)
        if storage is None:
            storage = self._storages[key] = _Storage(key, stype.dtype, numel)
        elif storage.numel != numel or storage.dtype != stype.dtype:
            raise pickle.UnpicklingError(f"storage {key!r} is referenced with two different types or sizes")
        if view is not None:  # legacy storage views: (view_key, element offset, size)
            view_key, offset, size = view
            root = storage
            storage = self._storages.get(view_key)
            if storage is None:
                storage = self._storages[view_key] = _Storage(view_key, stype.dtype, size)
                storage.data = (root, offset)
        return storage


# --- resolving placeholders ----------------------------------------------------------------
def _element_dtype(dtype):
    return np.dtype("<u2") if dtype == _BFLOAT16 else dtype


class _CopyBudget:
    """Bytes the tensors of one file may still copy out of its storages (see ``MAX_VIEW_COPIES``)."""

    def __init__(self, storage_bytes: int):
        self.storage_bytes = storage_bytes
        self.left = MAX_VIEW_COPIES * storage_bytes + VIEW_ALLOWANCE


def _tensor_array(ref: _TensorRef, path, where="", budget: Optional[_CopyBudget] = None) -> np.ndarray:
    """The tensor's elements read through its storage offset, size and stride, as an independent array.

    Refused before any allocation: a view past the end of its storage, a view holding more elements than
    its storage (beyond ``VIEW_ALLOWANCE`` bytes: a stride-0 view of 5e8 floats over one float), and copies
    beyond ``budget``."""
    what = f"tensor {where}" if where else "a tensor"
    flat = ref.storage.data
    if not isinstance(flat, np.ndarray):
        raise TorchFileError(f"{path}: {what}: storage {ref.storage.key!r} has no data (corrupt file)")
    if ref.dtype is not None and _element_dtype(ref.dtype) != flat.dtype:
        if flat.nbytes % _element_dtype(ref.dtype).itemsize:
            raise TorchFileError(f"{path}: {what}: storage {ref.storage.key!r} does not hold whole "
                                 f"{_element_dtype(ref.dtype)} elements (corrupt file)")
        flat = flat.view(_element_dtype(ref.dtype))
    count = 1
    for n in ref.size:
        count *= n
    shape = f"(shape {list(ref.size)}, storage offset {ref.offset}, stride {list(ref.stride)})"
    out_bytes = count * (4 if (ref.dtype or ref.storage.dtype) == _BFLOAT16 else flat.dtype.itemsize)
    if count > flat.size and out_bytes > VIEW_ALLOWANCE:
        raise TorchFileError(
            f"{path}: {what} {shape} would hold {count} elements ({_mb(out_bytes)}) but its storage "
            f"{ref.storage.key!r} holds only {flat.size}: a view larger than its storage is refused (corrupt or "
            f"crafted file)")
    if budget is not None:
        if out_bytes > budget.left:
            raise TorchFileError(
                f"{path}: {what} {shape} would bring the tensors' copies past {MAX_VIEW_COPIES} times the "
                f"{_mb(budget.storage_bytes)} of storage data in the file: too many views of the same data "
                f"(corrupt or crafted file)")
        budget.left -= out_bytes
    if count == 0:
        arr = np.zeros(ref.size, flat.dtype)
    else:
        end = ref.offset + sum((n - 1) * s for n, s in zip(ref.size, ref.stride)) + 1  # one past the last element
        if end > flat.size:
            raise TorchFileError(
                f"{path}: {what} {shape} "
                f"reaches element {end - 1} of its storage {ref.storage.key!r}, which holds {flat.size} elements: "
                f"a view past the end of its storage (corrupt file)")
        item = flat.dtype.itemsize
        arr = np.lib.stride_tricks.as_strided(flat[ref.offset:], ref.size, [s * item for s in ref.stride])
    arr = np.array(arr, dtype=flat.dtype.newbyteorder("="), copy=True)
    if (ref.dtype or ref.storage.dtype) == _BFLOAT16:
        arr = (arr.astype(np.uint32) << 16).view(np.float32)
    return arr


def _mb(nbytes: int) -> str:
    return f"{nbytes} bytes" if nbytes < 1 << 20 else f"{nbytes / (1 << 20):.1f} MiB"


def _child(where, key):
    return str(key) if not where else f"{where}[{key!r}]"


def _resolve(obj, path, seen=None, where="", budget: Optional[_CopyBudget] = None):
    """Replace every tensor placeholder by its array, in place where containers are mutable; ``where`` is
    the key path of ``obj`` (``fc['rnn.weight_ih_l0']``) for error messages."""
    if isinstance(obj, _TensorRef):
        return _tensor_array(obj, path, where, budget)
    if isinstance(obj, _TorchDtype):
        return f"torch.{obj.name}"
    obj = numpy_value(obj)
    if isinstance(obj, (_Storage, _StorageType, _TypeMarker)):
        raise TorchFileError(f"{path}: holds a bare torch storage or type object{' at ' + where if where else ''}; "
                             f"expected tensors in a checkpoint")
    seen = set() if seen is None else seen
    if id(obj) in seen:
        return obj
    if isinstance(obj, dict):
        seen.add(id(obj))
        for k in list(obj):
            obj[k] = _resolve(obj[k], path, seen, _child(where, k), budget)
    elif isinstance(obj, list):
        seen.add(id(obj))
        obj[:] = [_resolve(v, path, seen, _child(where, i), budget) for i, v in enumerate(obj)]
    elif isinstance(obj, tuple):
        return tuple(_resolve(v, path, seen, _child(where, i), budget) for i, v in enumerate(obj))
    elif isinstance(obj, types.SimpleNamespace):
        seen.add(id(obj))
        for k, v in vars(obj).items():
            setattr(obj, k, _resolve(v, path, seen, f"{where}.{k}" if where else k, budget))
    elif isinstance(obj, np.ndarray) and obj.dtype == object:
        seen.add(id(obj))
        for i, v in np.ndenumerate(obj):
            obj[i] = _resolve(v, path, seen, _child(where, i), budget)
    return obj


def _storage_bytes(storage: _Storage) -> int:
    return storage.numel * _element_dtype(storage.dtype).itemsize


def _too_big(path, storage: _Storage, holds: int, where: str) -> TorchFileError:
    return TorchFileError(
        f"{path}: storage {storage.key!r} declares {storage.numel} elements ({_mb(_storage_bytes(storage))}) "
        f"but {where} holds only {_mb(holds)}: truncated, corrupt or crafted file; nothing was allocated")


def _fill(storage: _Storage, raw, byteorder: str, path):
    dtype = _element_dtype(storage.dtype)
    if byteorder == "big":
        dtype = dtype.newbyteorder(">")
    need = storage.numel * dtype.itemsize
    if len(raw) < need:
        raise TorchFileError(f"{path}: storage {storage.key!r} holds {len(raw)} bytes, needs {need}: "
                             f"truncated or corrupt file")
    storage.data = np.frombuffer(raw, dtype=dtype, count=storage.numel)


# --- the two formats ----------------------------------------------------------------------
class _Records:
    """Reads zip records with their sizes checked against the file before anything is allocated or inflated."""

    def __init__(self, path, zf: zipfile.ZipFile, file_size: int):
        self.path, self.zf, self.file_size = path, zf, file_size
        self.inflated = 0  # declared sizes of the deflated records read so far

    def check(self, info: zipfile.ZipInfo) -> None:
        path, name = self.path, info.filename
        if info.flag_bits & 0x1:
            raise TorchFileError(f"{path}: record {name!r} is encrypted; torch never writes that (corrupt file?)")
        if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
            raise TorchFileError(f"{path}: record {name!r} uses zip compression method {info.compress_type}, "
                                 f"which torch never writes (corrupt file?)")
        if info.header_offset + info.compress_size > self.file_size:
            raise TorchFileError(f"{path}: record {name!r} declares {info.compress_size} bytes past the end of "
                                 f"the {self.file_size}-byte file: truncated or corrupt file")
        if info.compress_type == zipfile.ZIP_STORED and info.file_size != info.compress_size:
            raise TorchFileError(f"{path}: stored record {name!r} declares {info.file_size} bytes but holds "
                                 f"{info.compress_size}: corrupt file")
        if info.compress_type == zipfile.ZIP_DEFLATED:
            limit = MAX_INFLATE_RATIO * self.file_size + INFLATE_ALLOWANCE
            if self.inflated + info.file_size > limit:
                raise TorchFileError(
                    f"{path}: record {name!r} would inflate to {_mb(info.file_size)} from "
                    f"{_mb(info.compress_size)}; the file's records may inflate to at most {MAX_INFLATE_RATIO} "
                    f"times its {_mb(self.file_size)} (+{_mb(INFLATE_ALLOWANCE)}): refusing a zip bomb before "
                    f"inflating it")
            self.inflated += info.file_size

    def read(self, info: zipfile.ZipInfo) -> bytearray:
        """The record's bytes, read in bounded chunks into a buffer of its (checked) declared size."""
        self.check(info)
        out = bytearray(info.file_size)
        view, pos = memoryview(out), 0
        with self.zf.open(info) as record:
            while pos < len(out):
                chunk = record.read(min(_CHUNK, len(out) - pos))
                if not chunk:
                    raise TorchFileError(f"{self.path}: record {info.filename!r} ends after {pos} of its "
                                         f"{len(out)} bytes: truncated or corrupt file")
                view[pos:pos + len(chunk)] = chunk
                pos += len(chunk)
        return out


def _load_zip(path, zf: zipfile.ZipFile, file_size: int):
    names = zf.namelist()
    pkl = [n for n in names if n == "data.pkl" or n.endswith("/data.pkl")]
    if not pkl:
        raise TorchFileError(f"{path}: a zip file but not a torch checkpoint (no data.pkl record)")
    prefix = pkl[0][: -len("data.pkl")]
    if any(n.startswith(prefix + "code/") for n in names) or prefix + "constants.pkl" in names:
        raise TorchFileError(f"{path}: a TorchScript archive (torch.jit.save), not a checkpoint; "
                             f"save the model's state_dict() with torch.save instead")
    records = _Records(path, zf, file_size)
    byteorder = "little"
    if prefix + "byteorder" in names:
        info = zf.getinfo(prefix + "byteorder")
        if info.file_size > 16:
            raise TorchFileError(f"{path}: malformed byteorder record ({info.file_size} bytes)")
        byteorder = bytes(records.read(info)).decode("ascii", "replace").strip()
        if byteorder not in ("little", "big"):
            raise TorchFileError(f"{path}: unknown byte order {byteorder[:16]!r}: corrupt file")
    storages: Dict[str, _Storage] = {}
    raw_pkl = records.read(zf.getinfo(pkl[0]))
    scan_pickle(raw_pkl)
    obj = _RestrictedUnpickler(io.BytesIO(raw_pkl), path, storages).load()
    infos, present, read_so_far = {}, set(names), records.inflated
    for storage in storages.values():  # every size is checked before any storage is read
        name = f"{prefix}data/{storage.key}"
        if name not in present:
            raise TorchFileError(f"{path}: storage record {name!r} is missing: truncated or corrupt file")
        info = infos[storage.key] = zf.getinfo(name)
        if _storage_bytes(storage) > info.file_size:
            raise _too_big(path, storage, info.file_size, f"its record {name!r}")
        records.check(info)
    records.inflated = read_so_far  # counted again as each record is read
    for storage in _progress(storages.values(), path):
        _fill(storage, records.read(infos[storage.key]), byteorder, path)
    return obj, sum(_storage_bytes(st) for st in storages.values())


def _load_legacy(path, f, file_size: int):
    with mapped(f) as whole:  # each pickle is checked (scan_pickle) before it is read
        obj, keys, storages = _legacy_pickles(path, f, whole)
    left = file_size - f.tell()  # every storage's bytes follow: together they cannot exceed the rest
    declared = 0
    for key in keys:
        storage = storages.get(key)
        if storage is None:
            raise TorchFileError(f"{path}: storage {key!r} is not used by any tensor: corrupt file")
        declared += 8 + _storage_bytes(storage)
        if declared > left:
            raise _too_big(path, storage, max(0, left - (declared - _storage_bytes(storage))),
                           "the rest of the file")
    total = 0
    for key in _progress(keys, path):
        storage = storages[key]
        header = f.read(8)
        if len(header) != 8:
            raise TorchFileError(f"{path}: ends before storage {key!r}: truncated file")
        (numel,) = struct.unpack("<q", header)
        if numel != storage.numel:
            raise TorchFileError(f"{path}: storage {key!r} has {numel} elements, expected {storage.numel}")
        _fill(storage, f.read(_storage_bytes(storage)), "little", path)
        total += _storage_bytes(storage)
    for storage in storages.values():  # legacy views share their root's bytes
        if isinstance(storage.data, tuple):
            root, offset = storage.data
            if not isinstance(root.data, np.ndarray) or offset + storage.numel > root.data.size:
                raise TorchFileError(f"{path}: storage view {storage.key!r} is out of range: corrupt file")
            storage.data = root.data[offset: offset + storage.numel]
    return obj, total


def _legacy_pickles(path, f, whole):
    """The object and storage keys of a legacy file, after its magic number, protocol and sys info."""
    def small():  # the header pickles hold plain data only: no global is allowed at all
        scan_pickle(whole, f.tell())
        return _RestrictedUnpickler(f, path).load()

    if small() != _LEGACY_MAGIC:
        raise TorchFileError(f"{path}: not a torch checkpoint (a pickle without torch's magic number; "
                             f"a Paddle .pdparams or another pickle?)")
    protocol = small()
    if protocol != _LEGACY_PROTOCOL:
        raise TorchFileError(f"{path}: unsupported legacy torch protocol {protocol!r}")
    small()  # sys_info: irrelevant, legacy sizes and data are always written little-endian
    storages: Dict[str, _Storage] = {}
    scan_pickle(whole, f.tell())
    obj = _RestrictedUnpickler(f, path, storages, legacy=True).load()
    keys = small()
    if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
        raise TorchFileError(f"{path}: malformed storage key list")
    return obj, keys, storages


def _progress(items, path):
    items = list(items)
    if len(items) < 200:
        return items
    from tqdm import tqdm

    return tqdm(items, desc=f"reading {Path(path).name}", unit="tensor", leave=False, disable=None)


def load_torch_file(path) -> Any:
    """A ``torch.save`` file as Python objects with numpy arrays in place of tensors, torch not needed.

    Raises :class:`UnsafeCheckpointError` when the file asks for any global outside the checkpoint
    allow-list, :class:`TorchFileError` for truncated, corrupt or non-checkpoint files.
    """
    path = Path(path)
    if not path.is_file():
        raise TorchFileError(f"{path}: no such file")
    try:
        with open(path, "rb") as f:
            file_size = os.fstat(f.fileno()).st_size
            head = f.read(4)
            f.seek(0)
            if not head:
                raise TorchFileError(f"{path}: empty file")
            if head.startswith(b"PK"):
                try:
                    zf = zipfile.ZipFile(f)
                except zipfile.BadZipFile as e:
                    raise TorchFileError(f"{path}: a damaged zip archive ({e}): truncated or corrupt file") from None
                with zf:
                    obj, storage_bytes = _load_zip(path, zf, file_size)
            elif head[:1] == b"\x80":
                obj, storage_bytes = _load_legacy(path, f, file_size)
            elif tarfile.is_tarfile(path):
                raise TorchFileError(f"{path}: the tar format of torch < 0.4 is not supported; "
                                     f"load and re-save it with a recent torch")
            else:
                raise TorchFileError(f"{path}: not a torch checkpoint (starts with {head!r})")
        return _resolve(obj, path, budget=_CopyBudget(storage_bytes))
    except TorchFileError:
        raise
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, LookupError, AttributeError,
            struct.error, zipfile.BadZipFile, zlib.error, OverflowError, MemoryError, RecursionError,
            NotImplementedError, RuntimeError) as e:  # (zipfile: RuntimeError on encryption, NotImplemented on methods)
        first = str(e).strip().splitlines()[0][:200] if str(e).strip() else ""
        raise TorchFileError(f"{path}: not a readable torch checkpoint ({type(e).__name__}: {first}); "
                             f"truncated or corrupt?") from None
