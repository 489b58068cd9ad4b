"""Check a Paddle Inference parameters file (``.pdiparams``) before Paddle reads it.

Paddle's loader trusts the sizes in the file: one flipped bit in a tensor's LoD level count made it allocate
22 GB (and get killed) on a 1 MB file. The file is a sequence of tensors, each ``uint32 version (0)``,
``uint64 LoD levels`` (each ``uint64 byte size`` + offsets), ``uint32 tensor version (0)``, ``int32 size`` of
a ``TensorDesc`` protobuf (``data_type``, ``dims``) and then the raw data. Every declared size is checked
against the bytes left in the file here, reading only the headers; anything impossible is an
:class:`~ppcdnv2.deploy.export.ExportError` naming the file, the tensor and the byte where it starts.
"""
from __future__ import annotations

import os
import struct
from pathlib import Path

from .export import ExportError

# VarType.Type (paddle/fluid/framework/framework.proto) -> bytes per element
DTYPE_SIZES = {0: 1, 1: 2, 2: 4, 3: 8, 4: 2, 5: 4, 6: 8, 19: 8, 20: 1, 21: 1, 22: 2, 23: 8, 24: 16, 32: 1, 33: 1}
MAX_LOD_LEVELS = 64


class _Bad(ValueError):
    pass


def _varint(b: bytes, i: int):
    out = shift = 0
    for _ in range(10):
        if i >= len(b):
            raise _Bad("a TensorDesc field runs past its end")
        c = b[i]
        i += 1
        out |= (c & 0x7F) << shift
        shift += 7
        if not c & 0x80:
            return out, i
    raise _Bad("an over-long varint in the TensorDesc")


def _signed(v: int) -> int:
    return v - (1 << 64) if v >= 1 << 63 else v


def tensor_desc(b: bytes):
    """``(data_type, dims)`` of a serialized ``VarType.TensorDesc`` (unknown fields skipped)."""
    i, dtype, dims = 0, None, []
    while i < len(b):
        key, i = _varint(b, i)
        field, wire = key >> 3, key & 7
        if wire == 0:
            value, i = _varint(b, i)
            if field == 1:
                dtype = value
            elif field == 2:
                dims.append(_signed(value))
        elif wire == 2:
            n, i = _varint(b, i)
            if i + n > len(b):
                raise _Bad("a TensorDesc field runs past its end")
            if field == 2:  # packed dims
                j = i
                while j < i + n:
                    value, j = _varint(b[: i + n], j)
                    dims.append(_signed(value))
            i += n
        elif wire in (1, 5):
            i += 8 if wire == 1 else 4
        else:
            raise _Bad(f"TensorDesc wire type {wire}")
        if i > len(b):
            raise _Bad("a TensorDesc field runs past its end")
    if dtype is None:
        raise _Bad("a TensorDesc without a data type")
    if any(d < 0 for d in dims):
        raise _Bad(f"negative dimensions {dims}")
    return dtype, dims


def tensor_headers(f, size: int):
    """Walk a parameters stream ``f`` of ``size`` bytes: ``(start, header end, data bytes)`` of each tensor,
    the data skipped after each yield. Raises ``_Bad`` / ``struct.error`` on a size past the end or a header
    Paddle would not read; a data type this table does not know ends the walk (Paddle refuses what it
    cannot size)."""
    def take(n: int, what: str) -> bytes:
        if n < 0 or n > size - f.tell():
            raise _Bad(f"{what} of {n} bytes where {size - f.tell()} remain")
        return f.read(n)

    while f.tell() < size:
        start = f.tell()
        (version,) = struct.unpack("<I", take(4, "a tensor header"))
        if version != 0:
            raise _Bad(f"tensor format version {version}")
        (levels,) = struct.unpack("<Q", take(8, "a LoD level count"))
        if levels > MAX_LOD_LEVELS:
            raise _Bad(f"{levels} LoD levels")
        for _ in range(levels):
            (n,) = struct.unpack("<Q", take(8, "a LoD size"))
            take(n, "a LoD level")
        (version,) = struct.unpack("<I", take(4, "a tensor header"))
        if version != 0:
            raise _Bad(f"tensor version {version}")
        (desc_size,) = struct.unpack("<i", take(4, "a tensor header"))
        dtype, dims = tensor_desc(take(desc_size, "a TensorDesc"))
        if dtype not in DTYPE_SIZES:
            return
        numel = 1
        for d in dims:
            numel *= d
        need = numel * DTYPE_SIZES[dtype]
        if need > size - f.tell():
            raise _Bad(f"shape {dims} needs {need} bytes of data where {size - f.tell()} remain")
        end = f.tell()
        yield start, end, need
        f.seek(end + need)  # past the data, wherever the consumer left the stream


def check_params_file(path) -> int:
    """Walk ``path``'s tensor headers (:func:`tensor_headers`) and refuse any size past the end of the file;
    the number of tensors."""
    path = Path(path)
    size = os.path.getsize(path)
    count = start = 0
    with open(path, "rb") as f:
        try:
            for _, end, need in tensor_headers(f, size):
                count, start = count + 1, end + need
        except (_Bad, struct.error) as e:
            raise ExportError(f"{path}: not a loadable Paddle Inference parameters file (tensor {count} at "
                              f"byte {start}: {e}); export it again") from None
    return count
