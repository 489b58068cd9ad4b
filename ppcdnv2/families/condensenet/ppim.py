"""Interop with ``ppim`` (PaddlePaddle Image Models), whose ``cdnv2_a/b/c`` predate this package.

ppim's CondenseNetV2 has the official converted layout under Paddle names: BatchNorm ``_mean``/
``_variance``, Paddle-layout Linear weights and the official dense C'×C 0/1 SFR index applied by matmul.
Ours differs only in that index (int64 scatter targets), so weights move both ways by re-encoding it.
ppim's model hard-wires ``condense_factor == group_1x1`` and ``trans_factor == group_trans`` and the
ImageNet stem; other configurations have no ppim equivalent.
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, Mapping, Union

import numpy as np

from ...layers import CondenseSFR, targets_to_dense_index
from ...weights import (PADDLE_NAME_TABLE, WeightsError, load_state_dict, read_paddle_weights, save_weights,
                       state_dict_numpy)


def check_ppim_compatible(cfg) -> None:
    problems = []
    if cfg.condense_factor != cfg.group_1x1:
        problems.append(f"condense_factor {cfg.condense_factor} != group_1x1 {cfg.group_1x1}")
    if cfg.trans_factor != cfg.group_trans:
        problems.append(f"trans_factor {cfg.trans_factor} != group_trans {cfg.group_trans}")
    if cfg.stem != "imagenet":
        problems.append(f"stem {cfg.stem!r} (ppim has the ImageNet stem only)")
    if problems:
        raise WeightsError("this configuration has no ppim equivalent: " + "; ".join(problems))


def ppim_kwargs(cfg) -> Dict:
    """Arguments of ``ppim.models.cdnv2.CondenseNetV2`` for ``cfg``."""
    check_ppim_compatible(cfg)
    return dict(stages=list(cfg.stages), growth=list(cfg.growth), HS_start_block=cfg.hs_start_block,
                SE_start_block=cfg.se_start_block, fc_channel=cfg.fc_channel, group_1x1=cfg.group_1x1,
                group_3x3=cfg.group_3x3, group_trans=cfg.group_trans, bottleneck=cfg.bottleneck,
                last_se_reduction=cfg.last_se_reduction, class_dim=cfg.num_classes)


def build_ppim_model(cfg):
    """ppim's own model for ``cfg`` (randomly initialised; never downloads anything)."""
    from ppim.models.cdnv2 import CondenseNetV2 as PpimCondenseNetV2

    return PpimCondenseNetV2(**ppim_kwargs(cfg))


def to_ppim_state(model) -> Dict[str, np.ndarray]:
    """Our converted-form model's weights in ppim's layout (dense float32 SFR index)."""
    if getattr(model, "form", None) != "converted":
        raise WeightsError("ppim has the converted (condensed) form only; condense the model first")
    check_ppim_compatible(model.cfg)
    state = state_dict_numpy(model)
    for name, layer in model.named_sublayers():
        if isinstance(layer, CondenseSFR):
            state[f"{name}.index"] = targets_to_dense_index(state[f"{name}.index"], layer.out_channels)
    return state


def load_ppim_weights(model, src: Union[str, Path, Mapping[str, np.ndarray]]):
    """Load ppim weights (a .pdparams path or a state dict) into our converted-form model, strictly."""
    is_path = isinstance(src, (str, Path))
    state = read_paddle_weights(src) if is_path else dict(src)
    state.pop(PADDLE_NAME_TABLE, None)
    where = str(src) if is_path else "ppim state dict"
    return load_state_dict(model, {k: np.asarray(v) for k, v in state.items()}, where=where)


def save_ppim_weights(model, path):
    """Write our converted-form model as a .pdparams that ``ppim.models.cdnv2_x().set_state_dict`` takes."""
    return save_weights(to_ppim_state(model), path, "pdparams")


__all__ = ["check_ppim_compatible", "ppim_kwargs", "build_ppim_model", "to_ppim_state", 
           "load_ppim_weights", "save_ppim_weights"]
