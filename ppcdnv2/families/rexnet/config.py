"""ReXNet configuration and channel schedule, framework-free.

The channel widths of ReXNet come from a small float recurrence followed by Python's ``round`` (half to
even) and, for the lite variant, a make-divisible step. A one-channel difference changes every later
tensor shape and breaks weight loading, so the recurrence lives here once (:func:`channel_plan`) and the
Paddle model, the torch reference, the FLOPs counter and the key mappers all read it.

Two upstream networks (clovaai/rexnet) are described by :class:`ReXNetConfig`:

* ``variant="rexnet"`` -- ``ReXNetV1`` of ``rexnetv1.py`` (SE blocks, SiLU, ReLU6 after the depthwise
  conv/SE, a single 1x1-conv classifier);
* ``variant="lite"`` -- ``ReXNetV1_lite`` of ``rexnetv1_lite.py`` (no SE, ReLU6 everywhere, channels
  made divisible by ``divisible_value``, a 1024-wide hidden layer in the classifier head).

Fields that only one variant reads: ``depth_mult``, ``use_se`` and ``se_ratio`` (rexnet only; lite has
no depth multiplier upstream, so a lite config with ``depth_mult != 1`` is rejected, and it never uses
SE); ``fix_head_stem``, ``divisible_value`` and ``kernel_conf`` (lite only).
"""
from __future__ import annotations

from dataclasses import dataclass
from math import ceil
from typing import Any, ClassVar, Dict, List, NamedTuple, Optional, Tuple

from ...configs import ConfigBase

__all__ = ["ReXNetConfig", "Block", "ChannelPlan", "channel_plan", "make_divisible", "PRESETS", "ALIASES",
           "VARIANTS"]

VARIANTS = ("rexnet", "lite")

# Per-stage block counts, first strides and SE switches shared by both upstream files.
_STAGE_LAYERS = (1, 2, 2, 3, 3, 5)
_STAGE_STRIDES = (1, 2, 2, 2, 1, 2)
_STAGE_SE = (False, False, True, True, True, True)
# Upstream defaults that differ between the two files.
_DEFAULT_FINAL_CH = {"rexnet": 180, "lite": 164}
_LITE_HEAD_HIDDEN = 1024


@dataclass(frozen=True)
class ReXNetConfig(ConfigBase):
    """Everything needed to rebuild one upstream ReXNet (either file) with identical shapes.

    ``final_ch=None`` means "the upstream default of the variant" (180 for rexnet, 164 for lite) and is
    resolved at construction, so ``cfg.final_ch`` is always an int.
    """

    variant: str = "rexnet"
    width_mult: float = 1.0  # ``width_mult`` in ReXNetV1, ``multiplier`` in ReXNetV1_lite
    depth_mult: float = 1.0
    num_classes: int = 1000
    dropout: float = 0.2
    use_se: bool = True
    se_ratio: int = 12
    input_ch: int = 16
    final_ch: Optional[int] = None
    fix_head_stem: bool = False
    divisible_value: int = 8
    kernel_conf: str = "333333"

    family_title: ClassVar[str] = "ReXNet"

    def __post_init__(self) -> None:
        if self.variant not in VARIANTS:
            raise ValueError(f"variant must be one of {VARIANTS}, got {self.variant!r}")
        if self.final_ch is None:
            object.__setattr__(self, "final_ch", _DEFAULT_FINAL_CH[self.variant])
        if not self.width_mult > 0:
            raise ValueError(f"width_mult must be > 0, got {self.width_mult}")
        if not self.depth_mult > 0:
            raise ValueError(f"depth_mult must be > 0, got {self.depth_mult}")
        if self.num_classes < 0:
            raise ValueError(f"num_classes must be >= 0, got {self.num_classes}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.se_ratio < 1:
            raise ValueError(f"se_ratio must be >= 1, got {self.se_ratio}")
        if self.variant == "lite":
            if self.depth_mult != 1.0:
                raise ValueError("ReXNet-lite has no depth multiplier upstream; depth_mult must be 1.0")
            if len(self.kernel_conf) != len(_STAGE_LAYERS) or any(c not in "3579" for c in self.kernel_conf):
                raise ValueError(f"kernel_conf must be {len(_STAGE_LAYERS)} odd digits (3/5/7/9), "
                                 f"got {self.kernel_conf!r}")

    # -- convenience -------------------------------------------------------------------------------
    @property
    def input_size(self) -> int:
        """Training/eval resolution of every released ReXNet (the net itself is size-agnostic)."""
        return 224

    def replace(self, **kw: Any) -> "ReXNetConfig":
        """A copy with some fields changed (validated like a new config).

        Switching ``variant`` without giving ``final_ch`` carries the new variant's default along when
        the current value is the old variant's default (so rexnet_100 -> lite gives 164, not 180).
        """
        if ("variant" in kw and "final_ch" not in kw
                and self.final_ch == _DEFAULT_FINAL_CH[self.variant]):
            kw["final_ch"] = None
        return super().replace(**kw)


class Block(NamedTuple):
    """One LinearBottleneck. ``dw_ch`` is the expanded width, ``se_ch`` the SE bottleneck (0: no SE)."""

    in_ch: int
    out_ch: int
    t: int
    stride: int
    use_se: bool
    kernel: int = 3
    se_ch: int = 0

    @property
    def dw_ch(self) -> int:
        return self.in_ch * self.t if self.t != 1 else self.in_ch

    @property
    def use_shortcut(self) -> bool:
        # upstream: a residual only when the stride is 1 and the block does not shrink the width
        return self.stride == 1 and self.in_ch <= self.out_ch


class ChannelPlan(NamedTuple):
    """Widths of a whole network: stem output, blocks, penultimate conv, head hidden layer (lite)."""

    stem_ch: int
    blocks: Tuple[Block, ...]
    pen_ch: int
    head_hidden: int  # 0 for rexnet (direct classifier), 1024 for lite

    @property
    def feature_blocks(self) -> Tuple[int, ...]:
        """Block indices whose outputs end a resolution: the last block before each stride-2 block, and
        the last block. These are the maps returned with ``features_only`` (strides 2, 4, 8, 16, 32)."""
        ends = [i - 1 for i, b in enumerate(self.blocks) if b.stride > 1 and i > 0]
        ends.append(len(self.blocks) - 1)
        return tuple(ends)


def make_divisible(channel_size: float, divisor: Optional[int] = None, min_value: Optional[int] = None) -> int:
    """The lite file's rounding to a multiple of ``divisor`` (nearest, never more than 10 % down).

    ``divisor`` falsy returns the input unchanged, as upstream does.
    """
    if not divisor:
        return channel_size  # type: ignore[return-value]
    if min_value is None:
        min_value = divisor
    new = max(min_value, int(channel_size + divisor / 2) // divisor * divisor)
    if new < 0.9 * channel_size:
        new += divisor
    return new


def _expand(per_stage, layers) -> List:
    return [v for v, n in zip(per_stage, layers) for _ in range(n)]


def _first_strides(layers) -> List[int]:
    return [s if j == 0 else 1 for s, n in zip(_STAGE_STRIDES, layers) for j in range(n)]


def channel_plan(cfg: ReXNetConfig) -> ChannelPlan:
    """The per-block schedule exactly as the upstream constructors compute it.

    Mirrors the float accumulation (``inplanes += final_ch / n`` step by step, not ``i * step``) because
    the sums are then rounded and a different summation order can flip a ``.5``.
    """
    if cfg.variant == "lite":
        return _plan_lite(cfg)
    return _plan_rexnet(cfg)


def _plan_rexnet(cfg: ReXNetConfig) -> ChannelPlan:
    w = cfg.width_mult
    layers = [ceil(n * cfg.depth_mult) for n in _STAGE_LAYERS]
    n_blocks = sum(layers)
    strides = _first_strides(layers)
    use_ses = _expand(_STAGE_SE, layers) if cfg.use_se else [False] * n_blocks
    ts = [1] * layers[0] + [6] * (n_blocks - layers[0])
    # below 1.0x the stem and the first block keep their 1.0x widths (the base is divided by w first)
    stem_base = 32 / w if w < 1.0 else 32
    inplanes = cfg.input_ch / w if w < 1.0 else cfg.input_ch
    stem_ch = int(round(stem_base * w))
    ins, outs = [], []
    for i in range(n_blocks):
        if i == 0:
            ins.append(stem_ch)
            outs.append(int(round(inplanes * w)))
        else:
            ins.append(int(round(inplanes * w)))
            inplanes += cfg.final_ch / (n_blocks * 1.0)  # upstream divides by all blocks (16), not 15
            outs.append(int(round(inplanes * w)))
    blocks = []
    for cin, cout, t, s, se in zip(ins, outs, ts, strides, use_ses):
        dw = cin * t if t != 1 else cin
        blocks.append(Block(cin, cout, t, s, bool(se), 3, dw // cfg.se_ratio if se else 0))
    return ChannelPlan(stem_ch, tuple(blocks), int(1280 * w), 0)


def _plan_lite(cfg: ReXNetConfig) -> ChannelPlan:
    m, div = cfg.width_mult, cfg.divisible_value
    layers = list(_STAGE_LAYERS)
    n_blocks = sum(layers)
    strides = _first_strides(layers)
    ts = [1] * layers[0] + [6] * (n_blocks - layers[0])
    kernels = _expand([int(c) for c in cfg.kernel_conf], layers)
    inplanes = cfg.input_ch / m if m < 1.0 else cfg.input_ch
    first = 32 / m if (m < 1.0 or cfg.fix_head_stem) else 32
    stem_ch = make_divisible(int(round(first * m)), div)
    ins, outs = [], []
    for i in range(n_blocks):
        cur = make_divisible(int(round(inplanes * m)), div)
        if i == 0:
            ins.append(stem_ch)
            outs.append(cur)
        else:
            ins.append(cur)
            inplanes += cfg.final_ch / (n_blocks - 1 * 1.0)  # the lite file divides by 15
            outs.append(make_divisible(int(round(inplanes * m)), div))
    blocks = tuple(Block(cin, cout, t, s, False, k, 0)
                   for cin, cout, t, s, k in zip(ins, outs, ts, strides, kernels))
    pen = int(1280 * m) if (m > 1 and not cfg.fix_head_stem) else 1280
    return ChannelPlan(stem_ch, blocks, pen, _LITE_HEAD_HIDDEN)


# -- presets ----------------------------------------------------------------------------------------
PRESETS: Dict[str, ReXNetConfig] = {
    **{f"rexnet_{round(w * 100):03d}": ReXNetConfig(width_mult=w)
       for w in (0.9, 1.0, 1.3, 1.5, 2.0, 2.2, 3.0)},
    **{f"rexnet_lite_{round(w * 100):03d}": ReXNetConfig(variant="lite", width_mult=w)
       for w in (1.0, 1.3, 1.5, 2.0)},
}

# ppim (PaddlePaddle model zoo) constructor names -> ours. ppim ships no lite models.
ALIASES: Dict[str, str] = {
    "rexnet_1_0": "rexnet_100",
    "rexnet_1_3": "rexnet_130",
    "rexnet_1_5": "rexnet_150",
    "rexnet_2_0": "rexnet_200",
    "rexnet_3_0": "rexnet_300",
}
