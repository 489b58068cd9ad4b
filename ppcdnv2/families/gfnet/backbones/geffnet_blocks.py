"""Shared pieces of GFNet's MobileNetV3 and EfficientNet backbones (upstream: a copy of rwightman's
``gen-efficientnet-pytorch``, non-TF variants), in Paddle.

Two parts:

* a framework-free *plan* (:class:`BlockSpec`, :func:`expand_stages`): every block's widths, kernel,
  stride, activation, SE width and residual, computed with upstream's channel arithmetic
  (:func:`make_divisible`, :func:`round_channels`, per-stage depth scaling). The torch reference builds
  from the same plan, so both frameworks always agree on the layout;
* the Paddle blocks with upstream's sub-layer names, so an official state dict maps key for key
  (``conv_pw/bn1/conv_dw/bn2/se.conv_reduce/se.conv_expand/conv_pwl/bn3``; depthwise-separable blocks
  ``conv_dw/bn1/[se]/conv_pw/bn2``; conv-bn-act blocks ``conv/bn1``).

Numerics (geffnet, non-TF): symmetric padding ``((stride - 1) + (k - 1)) // 2``, convs without bias except
the SE convs, BatchNorm eps 1e-5 (Paddle momentum 0.9 = torch 0.1), ``hard_swish(x) = x * relu6(x + 3) / 6``,
``hard_sigmoid(x) = relu6(x + 3) / 6``, ``swish(x) = x * sigmoid(x)``. Drop-connect (upstream: per-image
zeroing of a residual branch, training mode only) is off by default (``drop_connect_rate = 0``: inference is
a plain sum); GFNet training switches it on with :func:`set_drop_connect`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import paddle
import paddle.nn.functional as F
from paddle import nn

__all__ = ["make_divisible", "round_channels", "StageRow", "SEPolicy", "BlockSpec", "expand_stages",
           "conv_padding", "activation", "batch_norm", "conv2d", "SqueezeExcite", "ConvBnAct",
           "DepthwiseSeparableConv", "InvertedResidual", "build_blocks", "init_goog_", "drop_connect",
           "set_drop_connect"]

BN_EPS = 1e-5
BN_MOMENTUM = 0.9  # Paddle convention (running = m * running + (1 - m) * batch) = torch momentum 0.1


# --- channel arithmetic ----------------------------------------------------------------------
def make_divisible(value: float, divisor: int = 8, min_value: Optional[int] = None) -> int:
    """Nearest multiple of ``divisor`` (halves round up), at least ``min_value`` (default ``divisor``) and
    never more than 10 % below ``value`` (then one ``divisor`` more)."""
    floor = divisor if min_value is None else min_value
    out = max(floor, int(value + divisor / 2) // divisor * divisor)
    if out < 0.9 * value:
        out += divisor
    return out


def round_channels(channels: float, multiplier: float = 1.0, divisor: int = 8) -> int:
    """A width scaled by ``multiplier`` and made divisible by ``divisor`` (unchanged if no multiplier)."""
    if not multiplier:
        return int(channels)
    return make_divisible(channels * multiplier, divisor)


# --- the plan -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class StageRow:
    """One row of an architecture table: ``repeats`` blocks of ``kind`` (``ds`` depthwise-separable,
    ``ir`` inverted residual, ``cn`` conv-bn-act); ``out`` is the unscaled width; ``act`` overrides the
    network's default activation (``None`` keeps it); ``noskip`` drops the residual."""
    kind: str
    repeats: int
    kernel: int
    stride: int
    out: int
    expansion: float = 1.0
    se_ratio: float = 0.0
    act: Optional[str] = None
    noskip: bool = False


@dataclass(frozen=True)
class SEPolicy:
    """How a network sizes and runs its SE blocks.

    ``from_mid``: reduce width from the block's expanded width (MobileNetV3) or from its input width
    (EfficientNet); ``divisor`` for :func:`make_divisible`; ``act``: the SE's inner activation (``None`` =
    the block's own); ``gate``: ``sigmoid`` or ``hard_sigmoid``."""
    from_mid: bool
    divisor: int
    act: Optional[str]
    gate: str


@dataclass(frozen=True)
class BlockSpec:
    kind: str
    in_ch: int
    out_ch: int
    mid_ch: int          # expanded width (ir); the input width for ds; out for cn
    kernel: int
    stride: int
    act: str
    se_ch: int           # 0: no SE
    se_act: str
    se_gate: str
    residual: bool


def _scale_repeats(repeats: Sequence[int], depth_multiplier: float) -> List[int]:
    """Per-stage depth scaling: the stage's total repeats times the multiplier, rounded up, handed back
    to the rows from the last one (rows keep at least one block)."""
    total = sum(repeats)
    target = int(math.ceil(total * depth_multiplier))
    scaled = []
    for r in reversed(repeats):
        n = max(1, round(r / total * target))
        scaled.append(n)
        total -= r
        target -= n
    return scaled[::-1]


def expand_stages(stages: Sequence[Sequence[StageRow]], stem_ch: int, channel_multiplier: float,
                  depth_multiplier: float, default_act: str, se: SEPolicy) -> Tuple[List[List[BlockSpec]], int]:
    """Every block of every stage, with upstream's widths; returns ``(stages, last width)``."""
    in_ch = stem_ch
    out_stages = []
    for rows in stages:
        counts = _scale_repeats([r.repeats for r in rows], depth_multiplier)
        blocks = []
        for row, count in zip(rows, counts):
            for _ in range(count):
                stride = row.stride if not blocks else 1  # only a stage's first block strides
                out_ch = round_channels(row.out, channel_multiplier)
                act = row.act or default_act
                if row.kind == "ir":
                    mid = make_divisible(in_ch * row.expansion)
                elif row.kind == "ds":
                    mid = in_ch
                elif row.kind == "cn":
                    mid = out_ch
                else:
                    raise ValueError(f"unknown block kind {row.kind!r}")
                se_ch = 0
                if row.se_ratio > 0 and row.kind != "cn":
                    base = mid if se.from_mid else in_ch
                    se_ch = make_divisible(base * row.se_ratio, se.divisor)
                residual = row.kind in ("ir", "ds") and stride == 1 and in_ch == out_ch and not row.noskip
                blocks.append(BlockSpec(row.kind, in_ch, out_ch, mid, row.kernel, stride, act, se_ch,
                                        se.act or act, se.gate, residual))
                in_ch = out_ch
        out_stages.append(blocks)
    return out_stages, in_ch


def conv_padding(kernel: int, stride: int = 1) -> int:
    """geffnet's default (PyTorch-style, symmetric) padding."""
    return ((stride - 1) + (kernel - 1)) // 2


# --- Paddle layers -----------------------------------------------------------------------------
def _hard_sigmoid(x):
    return F.relu6(x + 3.0) / 6.0


class _Act(nn.Layer):
    def __init__(self, name: str):
        super().__init__()
        if name not in ("relu", "hard_swish", "swish", "sigmoid", "hard_sigmoid"):
            raise ValueError(f"unknown activation {name!r}")
        self.kind = name

    def forward(self, x):
        if self.kind == "relu":
            return F.relu(x)
        if self.kind == "hard_swish":
            return x * _hard_sigmoid(x)
        if self.kind == "swish":
            return x * F.sigmoid(x)
        if self.kind == "sigmoid":
            return F.sigmoid(x)
        return _hard_sigmoid(x)

    def extra_repr(self):
        return self.kind


def activation(name: str) -> nn.Layer:
    return _Act(name)


def batch_norm(ch: int) -> nn.BatchNorm2D:
    return nn.BatchNorm2D(ch, momentum=BN_MOMENTUM, epsilon=BN_EPS)


def conv2d(cin: int, cout: int, k: int, stride: int = 1, groups: int = 1, bias: bool = False) -> nn.Conv2D:
    return nn.Conv2D(cin, cout, k, stride, conv_padding(k, stride), groups=groups,
                     bias_attr=None if bias else False)


class SqueezeExcite(nn.Layer):
    def __init__(self, ch: int, reduced: int, act: str, gate: str):
        super().__init__()
        self.avg_pool = nn.AdaptiveAvgPool2D(1)
        self.conv_reduce = conv2d(ch, reduced, 1, bias=True)
        self.act1 = activation(act)
        self.conv_expand = conv2d(reduced, ch, 1, bias=True)
        self.gate = activation(gate)

    def forward(self, x):
        s = self.conv_expand(self.act1(self.conv_reduce(self.avg_pool(x))))
        return x * self.gate(s)


def _se(spec: BlockSpec, ch: int) -> nn.Layer:
    return SqueezeExcite(ch, spec.se_ch, spec.se_act, spec.se_gate) if spec.se_ch else nn.Identity()


def drop_connect(y: paddle.Tensor, rate: float) -> paddle.Tensor:
    """Upstream's drop-connect: each image's branch kept with probability ``1 - rate`` (then scaled by
    ``1 / (1 - rate)``) or zeroed, the mask ``floor(keep + U[0, 1))`` drawn from Paddle's generator."""
    keep = 1.0 - float(rate)
    mask = paddle.floor(keep + paddle.rand([y.shape[0], 1, 1, 1], dtype=y.dtype))
    return y / keep * mask


def _residual(block: nn.Layer, y: paddle.Tensor, x: paddle.Tensor) -> paddle.Tensor:
    if not block.has_residual:
        return y
    if block.training and block.drop_connect_rate > 0.0:
        y = drop_connect(y, block.drop_connect_rate)
    return y + x


class ConvBnAct(nn.Layer):
    def __init__(self, spec: BlockSpec):
        super().__init__()
        self.conv = conv2d(spec.in_ch, spec.out_ch, spec.kernel, spec.stride)
        self.bn1 = batch_norm(spec.out_ch)
        self.act1 = activation(spec.act)

    def forward(self, x):
        return self.act1(self.bn1(self.conv(x)))


class DepthwiseSeparableConv(nn.Layer):
    """Depthwise conv-BN-act, optional SE, pointwise conv-BN (no activation), residual when shapes allow."""

    def __init__(self, spec: BlockSpec):
        super().__init__()
        self.has_residual = spec.residual
        c = spec.in_ch
        self.conv_dw = conv2d(c, c, spec.kernel, spec.stride, groups=c)
        self.bn1 = batch_norm(c)
        self.act1 = activation(spec.act)
        self.se = _se(spec, c)
        self.conv_pw = conv2d(c, spec.out_ch, 1)
        self.bn2 = batch_norm(spec.out_ch)

    drop_connect_rate = 0.0  # set by set_drop_connect for training

    def forward(self, x):
        y = self.act1(self.bn1(self.conv_dw(x)))
        y = self.bn2(self.conv_pw(self.se(y)))
        return _residual(self, y, x)


class InvertedResidual(nn.Layer):
    """Pointwise expansion-BN-act, depthwise-BN-act, optional SE, linear projection-BN, residual."""

    def __init__(self, spec: BlockSpec):
        super().__init__()
        self.has_residual = spec.residual
        m = spec.mid_ch
        self.conv_pw = conv2d(spec.in_ch, m, 1)
        self.bn1 = batch_norm(m)
        self.act1 = activation(spec.act)
        self.conv_dw = conv2d(m, m, spec.kernel, spec.stride, groups=m)
        self.bn2 = batch_norm(m)
        self.act2 = activation(spec.act)
        self.se = _se(spec, m)
        self.conv_pwl = conv2d(m, spec.out_ch, 1)
        self.bn3 = batch_norm(spec.out_ch)

    drop_connect_rate = 0.0  # set by set_drop_connect for training

    def forward(self, x):
        y = self.act1(self.bn1(self.conv_pw(x)))
        y = self.act2(self.bn2(self.conv_dw(y)))
        y = self.bn3(self.conv_pwl(self.se(y)))
        return _residual(self, y, x)


_BLOCKS = {"ds": DepthwiseSeparableConv, "ir": InvertedResidual, "cn": ConvBnAct}


def build_blocks(stages: Sequence[Sequence[BlockSpec]]) -> nn.Sequential:
    """``blocks.<stage>.<block>`` as upstream nests them."""
    return nn.Sequential(*[nn.Sequential(*[_BLOCKS[b.kind](b) for b in stage]) for stage in stages])


def set_drop_connect(blocks: nn.Sequential, rate: float) -> None:
    """Upstream's schedule (``EfficientNetBuilder``): block ``i`` of ``n`` (all stages, counted in order, the
    final conv-bn-act block included) drops with ``rate * i / n``; only residual blocks use it."""
    flat = [b for stage in blocks for b in stage]
    for i, b in enumerate(flat):
        if isinstance(b, (DepthwiseSeparableConv, InvertedResidual)):
            b.drop_connect_rate = float(rate) * i / len(flat)


@paddle.no_grad()
def init_goog_(model: nn.Layer) -> None:
    """The usual mobile-net initialisation (as upstream's default): conv ``N(0, sqrt(2 / fan_out))`` with
    ``fan_out = k*k*C_out/groups``, biases 0, BatchNorm 1/0, Linear ``U(±1/sqrt(out_features))``."""
    for layer in model.sublayers():
        if isinstance(layer, nn.Conv2D):
            k = layer.weight.shape
            fan_out = k[0] * k[2] * k[3] // layer._groups
            nn.initializer.Normal(0.0, math.sqrt(2.0 / fan_out))(layer.weight)
            if layer.bias is not None:
                nn.initializer.Constant(0.0)(layer.bias)
        elif isinstance(layer, nn.BatchNorm2D):
            nn.initializer.Constant(1.0)(layer.weight)
            nn.initializer.Constant(0.0)(layer.bias)
        elif isinstance(layer, nn.Linear):
            bound = 1.0 / math.sqrt(layer.weight.shape[1])
            nn.initializer.Uniform(-bound, bound)(layer.weight)
            nn.initializer.Constant(0.0)(layer.bias)
