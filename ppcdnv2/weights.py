"""Reading, checking and writing model weights.

``paddle.load`` unpickles with no restriction, so weights files are read here with an unpickler that
only rebuilds numpy arrays; loading is strict by default, because ``set_state_dict`` only warns
about missing or unexpected keys and would leave a silently half-initialised model.
"""
from __future__ import annotations

import contextlib
import mmap
import os
import pickle
import pickletools
import tempfile
from collections import OrderedDict
from pathlib import Path
from typing import Dict, Iterable, Mapping, Optional

import numpy as np

from .layers import CondenseSFR, dense_index_to_targets


class WeightsError(ValueError):
    """A weights file or state dict that cannot be used; the message names the file or key."""


class StateDictMismatchError(WeightsError):
    def __init__(self, missing=(), unexpected=(), shapes=(), where="state dict"):
        self.missing, self.unexpected, self.shapes = list(missing), list(unexpected), list(shapes)
        parts = []
        if self.missing:
            parts.append(f"missing keys {_few(self.missing)}")
        if self.unexpected:
            parts.append(f"unexpected keys {_few(self.unexpected)}")
        if self.shapes:
            parts.append("wrong shapes " + _few([f"{k}: got {g}, model has {m}" for k, g, m in self.shapes]))
        super().__init__(f"{where} does not fit the model: " + "; ".join(parts))


def _few(items, n=5):
    items = list(items)
    more = f" (+{len(items) - n} more)" if len(items) > n else ""
    return "[" + ", ".join(repr(i) if not isinstance(i, str) or ":" not in i else i for i in items[:n]) + "]" + more


def state_dict_numpy(model) -> Dict[str, np.ndarray]:
    return {k: v.numpy() for k, v in model.state_dict().items()}


def adapt_state_dict(model, state: Mapping[str, np.ndarray]) -> Dict[str, np.ndarray]:
    """Accept layouts other than ours where they are unambiguous: the official dense SFR index matrix."""
    state = dict(state)
    for name, layer in model.named_sublayers():
        key = f"{name}.index"
        if isinstance(layer, CondenseSFR) and key in state and np.ndim(state[key]) == 2:
            state[key] = dense_index_to_targets(state[key], key)
    return state


def load_state_dict(model, state: Mapping[str, np.ndarray], strict: bool = True,
                    skip: Iterable[str] = (), where: str = "state dict"):
    """Load numpy/tensor ``state`` into ``model``; with ``strict`` any missing, unexpected or misshapen key raises.

    ``skip``: key prefixes left as initialised (e.g. ``classifier`` when fine-tuning on new classes).
    """
    skip = tuple(skip)
    state = {k: np.asarray(v) for k, v in adapt_state_dict(model, state).items() if not k.startswith(skip)}
    own = {k: v for k, v in model.state_dict().items() if not k.startswith(skip)}
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [(k, tuple(state[k].shape), tuple(own[k].shape)) for k in own
              if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    if shapes or (strict and (missing or unexpected)):
        raise StateDictMismatchError(missing if strict else (), unexpected if strict else (), shapes, where)
    for k, v in own.items():
        if k in state:
            if v.dtype.name.lower().startswith("int") and not np.issubdtype(state[k].dtype, np.integer):
                raise WeightsError(f"{where}: {k!r} must hold integers, got {state[k].dtype}")
            v.set_value(state[k].astype(_np_dtype(v)))
    return model


def _np_dtype(tensor):
    return np.dtype(str(tensor.dtype).replace("paddle.", ""))


# --- files ----------------------------------------------------------------------------------
# The numpy globals a weights pickle uses. They are never handed to numpy's own unpickling: ``numpy.dtype``
# plus a BUILD can make a structured dtype with object fields whose array reads raw file bytes as object
# pointers (a crash, or worse). Arrays and dtypes are rebuilt here from checked values instead.
_NUMPY_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    ("numpy", "ndarray"), ("numpy", "dtype"), ("collections", "OrderedDict"),
}
_PLAIN_KINDS = "biufcSUmMO"  # numbers, bools, strings, datetimes; objects only as a plain 'O' (no fields)


class _NumpyDtype:
    """``numpy.dtype(...)`` in a pickle: its arguments and BUILD state, turned into a dtype by :func:`_dtype`."""

    __slots__ = ("args", "state")

    def __init__(self, *args):
        self.args, self.state = args, None

    def __setstate__(self, state):
        self.state = state


def _dtype(spec) -> np.dtype:
    """A plain dtype (no fields, no sub-arrays) from a pickled ``numpy.dtype`` record, or UnpicklingError."""
    if not isinstance(spec, _NumpyDtype) or not spec.args or not isinstance(spec.args[0], str):
        raise pickle.UnpicklingError(f"malformed numpy dtype record {getattr(spec, 'args', spec)!r:.80}")
    try:
        dt = np.dtype(spec.args[0])
    except (TypeError, ValueError) as e:
        raise pickle.UnpicklingError(f"unknown numpy dtype {spec.args[0]!r:.40}") from e
    if dt.kind not in _PLAIN_KINDS or dt.fields is not None or dt.subdtype is not None:
        raise pickle.UnpicklingError(f"numpy dtype {spec.args[0]!r:.40} is not a plain type; a weights file "
                                     f"holds only plain arrays")
    state = spec.state
    if state is not None:
        order = state[1] if isinstance(state, tuple) and len(state) > 1 else None
        if order not in ("<", ">", "|", "="):
            raise pickle.UnpicklingError(f"malformed numpy dtype state {state!r:.80}")
        if order in ("<", ">") and dt.itemsize > 1:
            dt = dt.newbyteorder(order)
    return dt


_NDARRAY = object()  # ``numpy.ndarray``: only ever the class argument of ``_reconstruct``


class _NumpyArray:
    """``numpy.core.multiarray._reconstruct(ndarray, ...)`` + BUILD: the array is built in ``__setstate__``
    from checked sizes (the data must be exactly shape x itemsize bytes, or a list of as many objects)."""

    __slots__ = ("array",)

    def __init__(self):
        self.array = None

    def __setstate__(self, state):
        if not isinstance(state, tuple) or len(state) not in (4, 5):
            raise pickle.UnpicklingError("malformed numpy array record")
        shape, spec, fortran, raw = state[-4:]
        if (not isinstance(shape, tuple) or not all(type(n) is int and n >= 0 for n in shape)
                or not isinstance(fortran, bool)):
            raise pickle.UnpicklingError(f"malformed numpy array shape {shape!r:.80}")
        dt = _dtype(spec)
        count = 1
        for n in shape:
            count *= n
        order = "F" if fortran else "C"
        if dt.kind == "O":
            if not isinstance(raw, list) or len(raw) != count:
                raise pickle.UnpicklingError(f"numpy object array of shape {shape} does not hold {count} items")
            arr = np.empty(count, dtype=object)
            for i, v in enumerate(raw):
                arr[i] = v
        else:
            if not isinstance(raw, (bytes, bytearray)) or len(raw) != count * dt.itemsize:
                raise pickle.UnpicklingError(f"numpy array of shape {shape} and dtype {dt} needs "
                                             f"{count * dt.itemsize} bytes, the file holds "
                                             f"{len(raw) if isinstance(raw, (bytes, bytearray)) else 'no'} bytes")
            arr = np.frombuffer(raw, dtype=dt, count=count).astype(dt.newbyteorder("="))  # a copy, as numpy's
        self.array = arr.reshape(shape, order=order)


def _reconstruct(cls, shape=None, dtype=None):
    if cls is not _NDARRAY:
        raise pickle.UnpicklingError("numpy _reconstruct of something other than an ndarray")
    return _NumpyArray()


def _scalar(spec, data=None):
    dt = _dtype(spec)
    if dt.kind == "O":
        return data
    if not isinstance(data, (bytes, bytearray)) or len(data) != dt.itemsize:
        raise pickle.UnpicklingError(f"numpy {dt} scalar needs {dt.itemsize} bytes")
    return np.frombuffer(data, dtype=dt, count=1)[0]


SAFE_NUMPY_GLOBALS = {
    **{(m, "_reconstruct"): _reconstruct for m in ("numpy.core.multiarray", "numpy._core.multiarray")},
    **{(m, "scalar"): _scalar for m in ("numpy.core.multiarray", "numpy._core.multiarray")},
    ("numpy", "ndarray"): _NDARRAY, ("numpy", "dtype"): _NumpyDtype,
}
assert set(SAFE_NUMPY_GLOBALS) | {("collections", "OrderedDict")} == _NUMPY_GLOBALS


def numpy_value(obj):
    """A rebuilt numpy placeholder as its array or dtype (anything else unchanged)."""
    if isinstance(obj, _NumpyArray):
        if obj.array is None:
            raise pickle.UnpicklingError("a numpy array record without its data")
        return obj.array
    if isinstance(obj, _NumpyDtype):
        return _dtype(obj)
    return obj


def _opcode_table():
    table = {}
    for op in pickletools.opcodes:
        n = None if op.arg is None else op.arg.n
        if op.arg is not None and op.arg.name == "stringnl_noescape_pair":
            n = "pair"  # GLOBAL and INST: two lines
        table[op.code.encode("latin-1")[0]] = (op.name, n)
    return table


_OPCODES = _opcode_table()
_COUNTED = {pickletools.TAKEN_FROM_ARGUMENT1: (1, False), pickletools.TAKEN_FROM_ARGUMENT4: (4, True),
            pickletools.TAKEN_FROM_ARGUMENT4U: (4, False), pickletools.TAKEN_FROM_ARGUMENT8U: (8, False)}
_PUTS = ("PUT", "BINPUT", "LONG_BINPUT")


@contextlib.contextmanager
def mapped(f):
    """The file's bytes, memory-mapped read-only (no copy); ``b""`` for an empty file."""
    if os.fstat(f.fileno()).st_size == 0:
        yield b""
        return
    with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
        yield data


def scan_pickle(data, pos: int = 0) -> int:
    """Walk the pickle starting at ``data[pos]`` (bytes in memory, nothing is built) and return where it ends;
    refuse any length past the end of ``data`` and any memo index beyond the opcodes read so far.

    ``pickle`` allocates a counted string, bytes or frame before reading it, and grows its memo table to twice
    any index it is given (zero-filled), so a few flipped bits in a length or an index would otherwise cost
    gigabytes (and CPython may print a stray SystemError). A pickler numbers its memo entries 0, 1, 2, ... one
    opcode at a time, so an honest index never exceeds the opcodes before it."""
    end, count = len(data), 0
    while True:
        if pos >= end:
            raise pickle.UnpicklingError("pickle data was truncated")
        at = pos
        entry = _OPCODES.get(data[pos])
        if entry is None:
            raise pickle.UnpicklingError(f"unknown pickle opcode {data[pos]:#04x} at byte {pos}")
        name, n = entry
        pos += 1
        value = None
        if n is None:
            pass
        elif n == "pair" or n == pickletools.UP_TO_NEWLINE:
            for _ in range(2 if n == "pair" else 1):
                newline = data.find(b"\n", pos)
                if newline < 0:
                    raise pickle.UnpicklingError(f"pickle opcode {name} at byte {at} runs past the end")
                line, pos = data[pos:newline], newline + 1
            if name == "PUT":
                try:
                    value = int(line)
                except ValueError:
                    raise pickle.UnpicklingError(f"malformed PUT at byte {at}") from None
        elif n >= 0:
            if pos + n > end:
                raise pickle.UnpicklingError(f"pickle opcode {name} at byte {at} runs past the end")
            value = int.from_bytes(data[pos:pos + n], "little")
            pos += n
        else:
            width, signed = _COUNTED[n]
            if pos + width > end:
                raise pickle.UnpicklingError(f"pickle opcode {name} at byte {at} runs past the end")
            length = int.from_bytes(data[pos:pos + width], "little", signed=signed)
            pos += width
            if not 0 <= length <= end - pos:
                raise pickle.UnpicklingError(f"a pickle record ({name} at byte {at}) declares {length} bytes "
                                             f"where {end - pos} remain")
            pos += length
        if name == "FRAME" and value > end - pos:
            raise pickle.UnpicklingError(f"a pickle frame at byte {at} declares {value} bytes where {end - pos} remain")
        if name in _PUTS and not 0 <= value <= count:
            raise pickle.UnpicklingError(f"pickle memo index {value} at byte {at}, after {count} opcodes")
        count += 1
        if name == "STOP":
            return pos


class _NumpyOnlyUnpickler(pickle.Unpickler):
    def __init__(self, file, path):
        super().__init__(file)
        self._path = path

    def find_class(self, module, name):
        if (module, name) in SAFE_NUMPY_GLOBALS:
            return SAFE_NUMPY_GLOBALS[(module, name)]
        if (module, name) == ("collections", "OrderedDict"):
            return OrderedDict
        raise WeightsError(f"{self._path}: refusing to load {module}.{name}: a weights file holds only arrays")


# ``paddle.save`` of a Layer's state dict adds this table of structured -> parameter names; not a weight.
PADDLE_NAME_TABLE = "StructuredToParameterName@@"


def read_paddle_weights(path) -> Dict[str, np.ndarray]:
    """A ``.pdparams`` file (``paddle.save`` of a state dict) as numpy arrays, without running pickle code."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            with mapped(f) as data:
                scan_pickle(data)
            obj = _NumpyOnlyUnpickler(f, path).load()
    except WeightsError:
        raise
    except FileNotFoundError:
        raise WeightsError(f"{path}: no such file") from None
    except Exception as e:  # truncated or not a pickle at all
        first = (str(e).strip().splitlines() or [""])[0][:200]
        raise WeightsError(f"{path}: not a readable .pdparams file ({type(e).__name__}: {first})") from None
    if not isinstance(obj, dict) or not all(isinstance(k, str) for k in obj):
        raise WeightsError(f"{path}: expected a dict of name -> array, got {type(obj).__name__}")
    out = {}
    for k, v in obj.items():
        if k == PADDLE_NAME_TABLE:
            continue
        try:
            arr = np.asarray(numpy_value(v))
        except pickle.UnpicklingError as e:
            raise WeightsError(f"{path}: {k!r}: {e}") from None
        if arr.dtype == object:
            raise WeightsError(f"{path}: {k!r} is not a numeric array")
        out[k] = arr
    return out


def read_safetensors(path) -> Dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    try:
        return dict(load_file(str(path)))
    except Exception as e:  # truncated, or not safetensors at all
        raise WeightsError(f"{path}: not a readable .safetensors file ({type(e).__name__}: {e})") from None


def atomic_write(path, write_fn):
    """Run ``write_fn(tmp_path)`` then move the result into place: no partial ``path`` on any failure."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write_fn(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the file the user's usual permissions
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _c_contiguous(value):
    a = np.asarray(value)
    return a if a.flags.c_contiguous else a.copy(order="C")  # np.ascontiguousarray would make 0-d arrays 1-d


def save_weights(state: Mapping[str, np.ndarray], path, fmt: Optional[str] = None):
    """Write ``state`` as ``.pdparams`` (loadable by ``paddle.load``) or ``.safetensors``, atomically."""
    state = {k: _c_contiguous(v) for k, v in state.items()}
    fmt = fmt or ("safetensors" if str(path).endswith(".safetensors") else "pdparams")
    if fmt == "safetensors":
        from safetensors.numpy import save_file

        def write_safetensors(tmp):
            try:
                save_file(state, tmp)
            except OSError:
                raise
            except Exception as e:  # safetensors reports a full disk as its own SafetensorError
                raise OSError(28, f"cannot write safetensors ({e})", str(path)) from None

        return atomic_write(path, write_safetensors)
    if fmt != "pdparams":
        raise ValueError(f"unknown weights format {fmt!r}; expected 'pdparams' or 'safetensors'")

    def write(tmp):
        with open(tmp, "wb") as f:
            pickle.dump(state, f, protocol=4)

    return atomic_write(path, write)


TORCH_SUFFIXES = (".pth", ".pt", ".tar", ".pkl", ".ckpt", ".bin", ".pyth")  # torch checkpoints (".pth.tar" included; .pyth: pycls)
PADDLE_SUFFIXES = (".pdparams", ".safetensors")
WEIGHT_SUFFIXES = PADDLE_SUFFIXES + TORCH_SUFFIXES


def is_torch_file(path) -> bool:
    return Path(path).suffix.lower() in TORCH_SUFFIXES


def is_weights_file(path) -> bool:
    return Path(path).suffix.lower() in WEIGHT_SUFFIXES


def has_gpu() -> bool:
    """Whether this Paddle build can use a GPU here."""
    import paddle

    return paddle.device.is_compiled_with_cuda() and paddle.device.cuda.device_count() > 0


def framework_of(state: Mapping[str, np.ndarray]) -> str:
    """"torch" or "paddle": BatchNorm statistics are ``running_mean``/``running_var`` in torch's state
    dicts and ``_mean``/``_variance`` in Paddle's (every model here has BatchNorm)."""
    for key in state:
        if key.endswith((".running_mean", ".running_var", ".num_batches_tracked")):
            return "torch"
        if key.endswith(("._mean", "._variance")):
            return "paddle"
    return "paddle"


def local_path(path) -> Path:
    """``path`` as an existing local file, or a WeightsError saying what is wrong (nothing is ever downloaded)."""
    if isinstance(path, bool) or not isinstance(path, (str, os.PathLike)):
        raise WeightsError(f"pretrained={path!r}: give the path of a local weights file (nothing is downloaded)")
    text = os.fspath(path)
    if "://" in text:
        raise WeightsError(f"{text}: nothing is downloaded here; download the file yourself and pass its local path")
    path = Path(text)
    if not path.is_file():
        raise WeightsError(f"{path}: no such file" + ("; it is a directory" if path.is_dir() else ""))
    return path


def read_weights(path) -> Dict[str, np.ndarray]:
    """A Paddle-side weights file: .pdparams (ours, ppim's, ``paddle.save``'s) or .safetensors; read safely."""
    path = local_path(path)
    if path.suffix == ".safetensors":
        return read_safetensors(path)
    return read_paddle_weights(path)


def read_state(path, which: str = "ema") -> Dict[str, np.ndarray]:
    """The weights in any file we read, in the file's own layout (torch or Paddle: see :func:`framework_of`).

    Torch checkpoints (official, timm's, a user's trainer file; the restricted reader runs no pickle
    code), our training checkpoints (``which``: their EMA or raw model weights), .pdparams (ours or
    ppim's) and .safetensors (ours, or torch-layout ones such as timm's hub files).
    """
    path = local_path(path)
    if is_torch_file(path):
        from .convert import checkpoint_state
        from .convert.torch_file import load_torch_file

        try:
            state, _, _ = checkpoint_state(load_torch_file(path), "ema" if which == "ema" else "model", where=str(path))
        except ValueError as e:
            raise WeightsError(str(e)) from None
        return state
    if path.suffix == ".safetensors":
        from .engine.checkpoint import is_training_checkpoint, checkpoint_weights

        if is_training_checkpoint(path):
            return checkpoint_weights(path, which)[0]
    return read_weights(path)


def _paddle_state_for(model, state: Mapping[str, np.ndarray], where: str) -> Dict[str, np.ndarray]:
    """``state`` (any layout of ``model``'s family, either form) as ``model``'s own Paddle state."""
    from .registry import family_of

    family = family_of(model)
    if framework_of(state) == "torch":
        from .convert import official_state_to_model

        try:
            return official_state_to_model(state, model)
        except (KeyError, ValueError) as e:
            raise WeightsError(f"{where}: {e.args[0] if e.args else e}") from None
    state, _ = family.paddle_from_external(state)
    if family.form_of(state) == "train" and model.form == "converted":
        from .condense import condense_state_dict

        return condense_state_dict(dict(state), model)
    return dict(state)


def load_pretrained(model, path, skip_classifier: bool = False):
    """Load any weights file we read (:func:`read_state`) into ``model``, strictly; training-form weights
    are condensed for a converted-form model. ``skip_classifier`` leaves the classifier as initialised."""
    from .registry import family_of

    skip = (family_of(model).classifier_of(model.cfg) + ".",) if skip_classifier else ()
    state = read_state(path)
    return load_state_dict(model, _paddle_state_for(model, state, str(path)), skip=skip, where=str(path))


def load_model(path, cfg, form: str = "auto", which: str = "ema", classes_from_weights: bool = False):
    """A model of ``cfg`` holding the weights at ``path`` (any file :func:`read_state` reads), in ``form``
    (``auto``: the weights' own; ``converted``: training-form weights are condensed). With
    ``classes_from_weights`` the class count is the weights' classifier's (the file is read once). Returns
    ``(model, form of the weights)``."""
    from .registry import family_of

    family = family_of(cfg)
    if form not in ("auto",) + family.forms_of(cfg):
        raise ValueError(f"form must be auto or one of {', '.join(family.forms_of(cfg))}, got {form!r}")
    state = read_state(path, which)
    if classes_from_weights:
        n = _classes_in(state, family, cfg)
        cfg = cfg if n == cfg.num_classes else cfg.replace(num_classes=n)
    source = family.form_of(state)
    if source == "converted" and form == "train":
        raise WeightsError(f"{path}: converted (condensed) weights cannot be evaluated in training form")
    model = family.build(cfg, source if form == "auto" else form)
    load_state_dict(model, _paddle_state_for(model, state, str(path)), where=str(path))
    return model, source


def _classes_in(state: Mapping[str, np.ndarray], family, cfg) -> int:
    """The class count ``state`` shows for a model of ``family`` (``cfg``'s own if unclear)."""
    framework = framework_of(state)
    try:
        if framework == "torch":
            state, _ = family.to_official(state)
        else:
            state, _ = family.paddle_from_external(state)
        found, _ = family.infer_config(state, framework, family.form_of(state))
        return int(found.num_classes)
    except (KeyError, IndexError, ValueError, TypeError, ZeroDivisionError):
        return int(cfg.num_classes)
