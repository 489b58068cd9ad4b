"""Training checkpoints: one safetensors file, arrays plus a JSON header, written atomically.

Why safetensors + JSON and not ``paddle.save``: reading a checkpoint must not run code from the
file (a pickle can), and everything resuming needs is arrays (model, EMA, optimizer velocities) or
plain numbers (epoch, step, RNG states, loss scaler, metric history, the run's config). The file is
written to a temporary name beside the target and renamed over it, so a process killed while
writing leaves the previous checkpoint intact (a stale ``.checkpoint_last.safetensors.*.tmp`` may be
left behind; it is removed at the next start).

Optimizer accumulators are stored under the parameters' structured names
(``opt/features.init_conv.weight/velocity_0``), not Paddle's generated ones (``conv2d_0.w_0``), which
change with the order in which layers were created.
"""
from __future__ import annotations

import json
import os
import random
import signal
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Tuple

import numpy as np
import paddle

from ..weights import WeightsError, atomic_write, load_state_dict, state_dict_numpy

FORMAT = "ppcdnv2-train-checkpoint"
VERSION = 1
GROUPS = ("model", "ema", "opt")


class CheckpointError(WeightsError):
    """A checkpoint that cannot be read or does not fit this run; the message names the file."""


# --- RNG ------------------------------------------------------------------------------------
def capture_rng() -> Dict[str, Any]:
    """Python, numpy and Paddle generator states as JSON-able values."""
    py = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "python": [py[0], list(py[1]), py[2]],
        "numpy": {"name": name, "keys": np.asarray(keys).tolist(), "pos": int(pos), "has_gauss": int(has_gauss),
                  "cached_gaussian": float(cached)},
        "paddle": [list(s.__getstate__()) for s in paddle.get_rng_state()],
    }


def restore_rng(state: Mapping[str, Any]) -> None:
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = state["numpy"]
    np.random.set_state((n["name"], np.asarray(n["keys"], np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"]))
    current = paddle.get_rng_state()
    if len(current) != len(state["paddle"]):
        return  # saved on another device kind (e.g. GPU run resumed on CPU): keep the fresh generators
    restored = []
    for t in state["paddle"]:
        s = paddle.base.core.GeneratorState.__new__(paddle.base.core.GeneratorState)
        s.__setstate__(tuple(t))
        restored.append(s)
    paddle.set_rng_state(restored)


# --- optimizer state under structured names -------------------------------------------------------
def _param_names(model) -> Dict[str, str]:
    return {p.name: n for n, p in model.named_parameters()}


def optimizer_arrays(optimizer, model) -> Dict[str, np.ndarray]:
    """``{"<param path>/<accumulator>": array}`` for every accumulator the optimizer holds."""
    names = _param_names(model)
    by_len = sorted(names, key=len, reverse=True)
    out = {}
    for key, value in optimizer.state_dict().items():
        if not isinstance(value, paddle.Tensor):
            continue  # e.g. LR scheduler state (we drive the learning rate ourselves)
        owner = next((p for p in by_len if key.startswith(p + "_")), None)
        if owner is None:
            raise CheckpointError(f"optimizer accumulator {key!r} belongs to no model parameter")
        out[f"{names[owner]}/{key[len(owner) + 1:]}"] = value.numpy()
    return out


def load_optimizer_arrays(optimizer, model, arrays: Mapping[str, np.ndarray], where: str = "checkpoint") -> None:
    params = dict(model.named_parameters())
    state = {}
    for key, value in arrays.items():
        path, acc = key.rsplit("/", 1)
        if path not in params:
            raise CheckpointError(f"{where}: optimizer state for unknown parameter {path!r}")
        p = params[path]
        if acc.startswith("velocity") and tuple(value.shape) != tuple(p.shape):
            raise CheckpointError(f"{where}: optimizer state {key!r} has shape {tuple(value.shape)}, "
                                  f"parameter has {tuple(p.shape)}")
        state[f"{p.name}_{acc}"] = paddle.to_tensor(value)
    optimizer.set_state_dict(state)


# --- files ----------------------------------------------------------------------------------
def save_checkpoint(path, model, optimizer, meta: Mapping[str, Any], ema=None, kill_midway: bool = False):
    """Write model, EMA, optimizer state and ``meta`` (JSON: step, RNG, history, config, ...) atomically."""
    from safetensors.numpy import save_file

    arrays = {f"model/{k}": v for k, v in state_dict_numpy(model).items()}
    if ema is not None:
        arrays.update({f"ema/{k}": v for k, v in state_dict_numpy(ema).items()})
    arrays.update({f"opt/{k}": v for k, v in optimizer_arrays(optimizer, model).items()})
    arrays = {k: np.ascontiguousarray(v) for k, v in arrays.items()}
    header = {"format": FORMAT, "version": VERSION, **meta}
    metadata = {"ppcdnv2": json.dumps(header)}

    def write(tmp):
        save_file(arrays, tmp, metadata=metadata)
        if kill_midway:  # debug: die like a killed process with a half-written file on disk
            size = os.path.getsize(tmp)
            with open(tmp, "r+b") as f:
                f.truncate(size // 2)
            os.kill(os.getpid(), signal.SIGKILL)

    return atomic_write(path, write)


class Checkpoint:
    def __init__(self, path, meta: Dict[str, Any], arrays: Dict[str, Dict[str, np.ndarray]]):
        self.path, self.meta, self.arrays = Path(path), meta, arrays

    @property
    def model(self):
        return self.arrays["model"]

    @property
    def ema(self):
        return self.arrays["ema"] or None

    @property
    def opt(self):
        return self.arrays["opt"]


def read_checkpoint(path) -> Checkpoint:
    """Read a checkpoint without executing anything from it; errors name the file."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint")
    try:
        with safe_open(str(path), framework="np") as f:
            raw = (f.metadata() or {}).get("ppcdnv2")
            arrays = {g: {} for g in GROUPS}
            for key in f.keys():
                group, _, name = key.partition("/")
                if group not in arrays:
                    raise CheckpointError(f"{path}: unexpected entry {key!r}")
                arrays[group][name] = f.get_tensor(key)
    except CheckpointError:
        raise
    except Exception as e:  # truncated file, not safetensors
        raise CheckpointError(f"{path}: not a readable checkpoint ({type(e).__name__}: {e})") from None
    try:
        meta = json.loads(raw) if raw else None
    except ValueError:
        meta = None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a ppcdnv2 training checkpoint (no '{FORMAT}' header)")
    if meta.get("version", 0) > VERSION:
        raise CheckpointError(f"{path}: checkpoint version {meta['version']} is newer than this code ({VERSION})")
    return Checkpoint(path, meta, arrays)


def restore_training_state(ckpt: Checkpoint, model, optimizer, ema=None) -> None:
    """Load model (and EMA) weights and the optimizer state; the caller restores the rest from ``meta``."""
    load_state_dict(model, ckpt.model, where=f"{ckpt.path} (model)")
    if ema is not None:
        if ckpt.ema is None:
            raise CheckpointError(f"{ckpt.path}: has no EMA weights but this run keeps an EMA (train.ema)")
        load_state_dict(ema, ckpt.ema, where=f"{ckpt.path} (ema)")
    load_optimizer_arrays(optimizer, model, ckpt.opt, where=str(ckpt.path))


def remove_stale_temporaries(folder, name: str) -> int:
    """Delete ``.<name>.*.tmp`` files a killed writer left behind; returns how many."""
    n = 0
    for p in Path(folder).glob(f".{name}.*.tmp"):
        try:
            p.unlink()
            n += 1
        except OSError:
            pass
    return n


def checkpoint_header(path) -> Optional[dict]:
    """The metadata of our training checkpoint at ``path`` (epoch, step, config, ...) read from the file's
    header alone, or None when it is not one of ours."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="np") as f:
            raw = (f.metadata() or {}).get("ppcdnv2")
        meta = json.loads(raw) if raw else None
    except Exception:  # not safetensors, truncated, bad JSON: not one of ours
        return None
    return meta if isinstance(meta, dict) and meta.get("format") == FORMAT else None


def is_training_checkpoint(path) -> bool:
    """Whether ``path`` is a .safetensors file carrying our training-checkpoint header (read from the header only)."""
    return checkpoint_header(path) is not None


def checkpoint_weights(path, which: str = "ema") -> Tuple[Dict[str, np.ndarray], str]:
    """The model or EMA weights of a training checkpoint (for evaluation or export)."""
    ckpt = read_checkpoint(path)
    if which == "ema" and ckpt.ema is not None:
        return ckpt.ema, "ema"
    return ckpt.model, "model"
