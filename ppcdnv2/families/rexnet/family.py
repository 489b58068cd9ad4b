"""ReXNet in the registry: models, published weights, FLOPs, torch reference, and the layouts the converter
reads and writes (upstream clovaai/rexnet, timm's, ppim's).

ReXNet has one form (no condensation). Its Paddle keys equal upstream's up to the frameworks' BatchNorm
renames, so the generic key map carries upstream checkpoints; timm's layout is mapped by ``timm_keys``.
The configuration is found from the shapes by matching the channel schedule of candidate widths
(``channel_plan``), since no width is stored in a checkpoint.
"""
from __future__ import annotations

import re
from typing import Dict, List, Mapping, Optional, Tuple

import numpy as np

from ...registry import IMAGENET_EVAL, Family, WeightsInfo, register_family
from .config import ALIASES, PRESETS, ReXNetConfig, channel_plan

_BLOCK_CONV = re.compile(r"^features\.(\d+)\.out\.(\d+)\.weight$")
# candidate widths for a custom checkpoint: the presets' first, then every hundredth from 0.5 to 3.0
_WIDTHS = tuple(dict.fromkeys([0.9, 1.0, 1.3, 1.5, 2.0, 2.2, 3.0] + [round(0.5 + i / 100, 2) for i in range(251)]))


def _published(top1, mflops, mparams, files=()):
    # timm's evaluation (upstream trained and evaluated with it): shorter side 256, center 224, bicubic
    return IMAGENET_EVAL.replace(top1=top1, mflops=mflops, mparams=mparams, files=tuple(files))


# upstream README (clovaai/rexnet): top-1 and rounded FLOPs/params as published; released files
PUBLISHED: Dict[str, WeightsInfo] = {
    "rexnet_100": _published(77.9, 400.0, 4.8, ["rexnetv1_1.0x.pth"]),
    "rexnet_130": _published(79.5, 660.0, 7.6, ["rexnetv1_1.3x.pth"]),
    "rexnet_150": _published(80.3, 880.0, 9.7, ["rexnetv1_1.5x.pth"]),
    "rexnet_200": _published(81.6, 1500.0, 16.0, ["rexnetv1_2.0x.pth"]),
    "rexnet_300": _published(82.8, 3400.0, 34.0, ["rexnetv1_3.0x.pth"]),
    "rexnet_lite_100": _published(76.2, 410.0, 4.7),
    "rexnet_lite_130": _published(77.8, 650.0, 6.8),
    "rexnet_lite_150": _published(78.6, 840.0, 8.3),
    "rexnet_lite_200": _published(80.2, 1500.0, 13.0),
}


def plan_signature(cfg: ReXNetConfig) -> Tuple:
    """What the weight shapes show of a configuration: stem width, each block's (out, expanded) widths,
    penultimate width."""
    plan = channel_plan(cfg)
    return plan.stem_ch, tuple((b.out_ch, b.dw_ch) for b in plan.blocks), plan.pen_ch


def state_signature(state: Mapping[str, np.ndarray]) -> Tuple:
    """:func:`plan_signature` read off an upstream-layout state (torch or Paddle leaves)."""
    last: Dict[int, Tuple[int, Tuple[int, ...]]] = {}
    for key, value in state.items():
        m = _BLOCK_CONV.match(key)
        if m and np.ndim(value) == 4:
            i, j = int(m.group(1)), int(m.group(2))
            if i not in last or j > last[i][0]:
                last[i] = (j, tuple(np.shape(value)))
    blocks = sorted(last)
    if not blocks or blocks != list(range(3, 3 + len(blocks))):
        raise ValueError(f"blocks {blocks} are not numbered features.3..N")
    pen = f"features.{3 + len(blocks)}.weight"
    return (int(np.shape(state["features.0.weight"])[0]),
            tuple((last[i][1][0], last[i][1][1]) for i in blocks), int(np.shape(state[pen])[0]))


class ReXNetFamily(Family):
    name = "rexnet"
    title = "ReXNet"
    config_class = ReXNetConfig
    presets = PRESETS
    aliases = ALIASES
    forms = ("train",)
    hidden_fields = ("dropout",)
    layouts = ("official", "timm")
    paddle_layouts = ("ppim",)
    torch_container = None  # upstream's README: model.load_state_dict(torch.load(path))

    # --- models ------------------------------------------------------------------------------
    def model_class(self):
        from .model import ReXNet

        return ReXNet

    def weights_info(self, cfg) -> WeightsInfo:
        for name, p in self.presets.items():
            if p == cfg and name in PUBLISHED:
                return PUBLISHED[name]
        return IMAGENET_EVAL

    def classifier_of(self, cfg) -> str:
        return "output.4" if cfg.variant == "lite" else "output.1"

    def count_flops(self, cfg, form="train", input_size=None):
        from ...flops import FlopsReport, LayerCount, sum_counts
        from .flops import breakdown

        size = cfg.input_size if input_size is None else int(input_size)
        layers = [LayerCount(part, d["macs"], d["params"], d["params"]) for part, d in breakdown(cfg, size).items()]
        total = sum_counts(layers)
        return FlopsReport(name=self.describe(cfg), form="train", input_size=size, flops=total.flops,
                           params=total.params, official_params=total.params, converted_params=total.params,
                           executed={}, layers=layers, form_pair=False,
                           counting="conv/SE/classifier multiply-adds; trainable params")

    def build_reference(self, cfg, form):
        from .reference import build_reference

        return build_reference(cfg)

    # --- converter ---------------------------------------------------------------------------
    def claims(self, keys) -> bool:
        from .timm_keys import is_timm_layout, is_upstream_layout

        keys = list(keys)
        return is_upstream_layout(keys) or is_timm_layout(keys)

    def _candidates(self, num_classes: int, variant: Optional[str] = None) -> List[ReXNetConfig]:
        cands = [p.replace(num_classes=num_classes) for p in self.presets.values()]
        for v in ("rexnet", "lite"):
            for w in _WIDTHS:
                cands.append(ReXNetConfig(variant=v, width_mult=w, num_classes=num_classes))
                if v == "lite":
                    cands.append(ReXNetConfig(variant=v, width_mult=w, num_classes=num_classes, fix_head_stem=True))
        return [c for c in dict.fromkeys(cands) if variant is None or c.variant == variant]

    def infer_config(self, state, layout, form):
        keys = set(state)
        # lite: a 3-layer head ending in output.4; ReXNetV1: SE blocks (lite has none)
        variant = "lite" if "output.4.weight" in keys else "rexnet" if any(".fc.0." in k for k in keys) else None
        head = "output.4.weight" if variant == "lite" else "output.1.weight"
        num_classes = int(np.shape(state[head])[0]) if head in keys else 0
        found = state_signature(state)
        lite = variant == "lite"
        for cand in self._candidates(num_classes, variant):
            try:
                if plan_signature(cand) == found:
                    return self._with_se(cand, state), list(self.hidden_fields)
            except ValueError:
                continue
        raise ValueError(f"no ReXNet{'-lite' if lite else ''} of width 0.5..3.0 has these channels "
                         f"(stem {found[0]}, penultimate {found[2]}, {len(found[1])} blocks)")

    @staticmethod
    def _with_se(cfg: ReXNetConfig, state) -> ReXNetConfig:
        """SE on/off and its ratio, from the first SE block's squeeze conv ``[dw // ratio, dw, 1, 1]``."""
        if cfg.variant == "lite":
            return cfg
        se = sorted(k for k in state if k.endswith(".fc.0.weight"))
        if not se:
            return cfg.replace(use_se=False)
        squeeze, dw = np.shape(state[se[0]])[:2]
        ratio = next((r for r in range(1, dw + 1) if dw // r == squeeze), cfg.se_ratio)
        return cfg if dw // cfg.se_ratio == squeeze else cfg.replace(se_ratio=ratio)

    def to_official(self, state):
        from .timm_keys import is_timm_layout, timm_to_upstream

        if not is_timm_layout(list(state)):
            return dict(state), "official"
        head = state.get("head.fc.weight")
        num_classes = int(np.shape(head)[0]) if head is not None else 0
        errors = []
        for cand in self._candidates(num_classes, "rexnet"):
            try:
                mapped = timm_to_upstream(state, cand)
                if state_signature(mapped) == plan_signature(cand):
                    return mapped, "timm"
            except (KeyError, ValueError) as e:
                errors.append(e)
        raise ValueError("timm-layout ReXNet of no known width (0.5..3.0) fits these weights"
                         + (f" ({errors[0].args[0]})" if errors else ""))

    def from_official(self, state, layout, cfg=None):
        if layout == "official":
            return dict(state)
        if layout != "timm":
            return super().from_official(state, layout, cfg)
        from .timm_keys import upstream_to_timm

        if cfg is None:
            cfg, _ = self.infer_config(state, "torch", "train")
        return upstream_to_timm(state, cfg)

    def paddle_from_external(self, state):
        return dict(state), "ours"  # ppim's ReXNet keys are ours exactly (checked in the tests)

    def to_paddle_layout(self, model, layout):
        if layout != "ppim":
            return super().to_paddle_layout(model, layout)
        from ...weights import state_dict_numpy
        from .timm_keys import ours_to_ppim

        return ours_to_ppim(state_dict_numpy(model), model.cfg)


REXNET = register_family(ReXNetFamily())
