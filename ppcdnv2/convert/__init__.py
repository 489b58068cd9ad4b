"""Torch checkpoints (official and other layouts) ↔ Paddle: safe reading, key mapping, condensation, checks."""
from __future__ import annotations

from typing import Any, Dict, Mapping, Tuple

import numpy as np

from .keymap import paddle_to_torch_state, strip_prefix, torch_to_paddle_state

# where trainers keep the weights (model_state: pycls' .pyth files)
STATE_KEYS = {"ema": ("state_dict_ema", "model_ema", "state_dict", "model", "model_state"),
              "model": ("state_dict", "model", "model_state")}


def extract_state_dict(obj: Any, weights: str = "ema", where: str = "checkpoint") -> Tuple[Dict[str, np.ndarray], str]:
    """The weights inside a checkpoint object: a bare state dict or one under a trainer's key."""
    if weights not in STATE_KEYS:
        raise ValueError(f"weights must be 'ema' or 'model', got {weights!r}")
    if not isinstance(obj, Mapping):
        raise ValueError(f"{where}: expected a dict, got {type(obj).__name__}")
    if obj and all(isinstance(v, np.ndarray) for v in obj.values()):
        return strip_prefix(obj), "(bare state dict)"
    for key in STATE_KEYS[weights]:
        if isinstance(obj.get(key), Mapping):
            return strip_prefix(obj[key]), key
    raise ValueError(f"{where}: no state dict found (looked for {', '.join(STATE_KEYS[weights])}; "
                     f"top-level keys: {sorted(map(str, obj))[:10]})")


def checkpoint_state(obj: Any, weights: str = "ema", where: str = "checkpoint"):
    """``(state, what, args)`` of any torch checkpoint object: a family's own format (a released GFNet file:
    several state dicts and fields) or one state dict, bare or under a trainer's key (``args``: the
    trainer's recorded arguments, or None)."""
    from ..registry import families

    for family in families().values():
        unpacked = family.unpack_checkpoint(obj, where)
        if unpacked is not None:
            return unpacked
    state, key = extract_state_dict(obj, weights, where)
    return state, key, obj.get("args") if isinstance(obj, Mapping) else None


def official_state_to_model(state: Mapping[str, np.ndarray], model) -> Dict[str, np.ndarray]:
    """An official (torch-layout) state of either form → the Paddle state of ``model`` (condensing if needed).

    Works for every registered family (``ppcdnv2.registry``), recognised from the keys, in any torch layout it reads.
    """
    from ..registry import find_family

    family = find_family(strip_prefix(state))
    state, _ = family.to_official(strip_prefix(state))
    if family.form_of(state) == "converted" and model.form == "train":
        raise ValueError("a converted (condensed) checkpoint cannot be loaded into a training-form model; "
                         "use the converted_* model")
    return family.official_to_paddle(state, model)


def load_torch_weights_into(model, path, skip=(), weights: str = "ema"):
    from ..weights import load_state_dict
    from .torch_file import load_torch_file

    state, _, _ = checkpoint_state(load_torch_file(path), weights, where=str(path))
    return load_state_dict(model, official_state_to_model(state, model), skip=skip, where=str(path))


# Whole-file conversion, the torch file reader/writer and the family registry, imported on first use.
_LAZY = {
    "convert_torch_checkpoint": "api", "export_torch_checkpoint": "api", "ConversionResult": "api",
    "VerificationError": "api", "load_torch_file": "torch_file", "TorchFileError": "torch_file",
    "UnsafeCheckpointError": "torch_file", "save_torch_file": "torch_writer", "ArchMismatchError": "checks",
}


def __getattr__(name):
    if name in _LAZY:
        from importlib import import_module

        return getattr(import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["extract_state_dict", "checkpoint_state", "official_state_to_model", "load_torch_weights_into",
           "torch_to_paddle_state", "paddle_to_torch_state", "strip_prefix", *_LAZY]
