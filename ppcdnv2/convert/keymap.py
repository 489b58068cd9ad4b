"""Torch ↔ Paddle state-dict layouts, derived from the Paddle model's own layers.

The renames are the frameworks' (BatchNorm ``running_mean/var`` ↔ ``_mean/_variance``, torch's
``num_batches_tracked`` dropped; Linear weights transposed, SE's square ones included) and are
found by walking the target model, so a new family needs no key table of its own.
"""
from __future__ import annotations

from typing import Dict, Mapping

import numpy as np
import paddle.nn as nn

from ..layers import CondenseSFR, targets_to_dense_index

_BN_TO_PADDLE = {"running_mean": "_mean", "running_var": "_variance"}
_BN_TO_TORCH = {v: k for k, v in _BN_TO_PADDLE.items()}


def strip_prefix(state: Mapping[str, np.ndarray], prefix: str = "module.") -> Dict[str, np.ndarray]:
    """Drop a DataParallel-style prefix when every key has it."""
    if state and all(k.startswith(prefix) for k in state):
        return {k[len(prefix):]: v for k, v in state.items()}
    return dict(state)


def _layer_kinds(model):
    bns, linears, sfrs = set(), set(), {}
    for name, layer in model.named_sublayers():
        if isinstance(layer, (nn.BatchNorm2D, nn.BatchNorm1D, nn.BatchNorm)):
            bns.add(name)
        elif isinstance(layer, nn.Linear):
            linears.add(name)
        elif isinstance(layer, CondenseSFR):
            sfrs[name] = layer
    return bns, linears, sfrs


def torch_to_paddle_state(state: Mapping[str, np.ndarray], model) -> Dict[str, np.ndarray]:
    """An official (torch-layout) state dict → ``model``'s Paddle layout (the SFR index stays as given)."""
    bns, linears, _ = _layer_kinds(model)
    out = {}
    for key, value in strip_prefix(state).items():
        owner, _, leaf = key.rpartition(".")
        if owner in bns:
            if leaf == "num_batches_tracked":
                continue
            leaf = _BN_TO_PADDLE.get(leaf, leaf)
        value = np.asarray(value)
        if owner in linears and leaf == "weight":
            value = np.ascontiguousarray(value.T)
        out[f"{owner}.{leaf}" if owner else leaf] = value
    return out


def paddle_to_torch_state(state: Mapping[str, np.ndarray], model, dense_sfr_index: bool = True) -> Dict[str, np.ndarray]:
    """``model``'s Paddle state → official torch layout (dense 0/1 SFR index unless asked otherwise)."""
    bns, linears, sfrs = _layer_kinds(model)
    out = {}
    for key, value in state.items():
        owner, _, leaf = key.rpartition(".")
        value = np.asarray(value)
        if owner in bns:
            leaf = _BN_TO_TORCH.get(leaf, leaf)
        elif owner in linears and leaf == "weight":
            value = np.ascontiguousarray(value.T)
        elif owner in sfrs and leaf == "index" and dense_sfr_index and value.ndim == 1:
            value = targets_to_dense_index(value, sfrs[owner].out_channels)
        out[f"{owner}.{leaf}" if owner else leaf] = value
        if owner in bns and leaf == "running_var":
            out[f"{owner}.num_batches_tracked"] = np.zeros((), np.int64)
    return out
