"""Torch blocks of GFNet's geffnet backbones (MobileNetV3, EfficientNet) with upstream's module names, built
from the same framework-free plan as the Paddle port (:mod:`..backbones.geffnet_blocks`), for parity tests.

Inference semantics only: no dropout, no drop-connect; out-of-place activations (upstream runs some in
place, which does not change the values)."""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..backbones.geffnet_blocks import BN_EPS, BlockSpec, conv_padding

__all__ = ["activation", "batch_norm", "conv2d", "SqueezeExcite", "ConvBnAct", "DepthwiseSeparableConv",
           "InvertedResidual", "build_blocks"]


def _hard_sigmoid(x):
    return F.relu6(x + 3.0) / 6.0


class _Act(nn.Module):
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
            return x * torch.sigmoid(x)
        if self.kind == "sigmoid":
            return torch.sigmoid(x)
        return _hard_sigmoid(x)

    def extra_repr(self):
        return self.kind


def activation(name: str) -> nn.Module:
    return _Act(name)


def batch_norm(ch: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(ch, eps=BN_EPS)


def conv2d(cin: int, cout: int, k: int, stride: int = 1, groups: int = 1, bias: bool = False) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, k, stride, conv_padding(k, stride), groups=groups, bias=bias)


class SqueezeExcite(nn.Module):
    def __init__(self, ch: int, reduced: int, act: str, gate: str):
        super().__init__()
        self.avg_pool = nn.AdaptiveAvgPool2d(1)
        self.conv_reduce = conv2d(ch, reduced, 1, bias=True)
        self.act1 = activation(act)
        self.conv_expand = conv2d(reduced, ch, 1, bias=True)
        self.gate = activation(gate)

    def forward(self, x):
        return x * self.gate(self.conv_expand(self.act1(self.conv_reduce(self.avg_pool(x)))))


def _se(spec: BlockSpec, ch: int) -> nn.Module:
    return SqueezeExcite(ch, spec.se_ch, spec.se_act, spec.se_gate) if spec.se_ch else nn.Identity()


class ConvBnAct(nn.Module):
    def __init__(self, spec: BlockSpec):
        super().__init__()
        self.conv = conv2d(spec.in_ch, spec.out_ch, spec.kernel, spec.stride)
        self.bn1 = batch_norm(spec.out_ch)
        self.act1 = activation(spec.act)

    def forward(self, x):
        return self.act1(self.bn1(self.conv(x)))


class DepthwiseSeparableConv(nn.Module):
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

    def forward(self, x):
        y = self.act1(self.bn1(self.conv_dw(x)))
        y = self.bn2(self.conv_pw(self.se(y)))
        return y + x if self.has_residual else y


class InvertedResidual(nn.Module):
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

    def forward(self, x):
        y = self.act1(self.bn1(self.conv_pw(x)))
        y = self.act2(self.bn2(self.conv_dw(y)))
        y = self.bn3(self.conv_pwl(self.se(y)))
        return y + x if self.has_residual else y


_BLOCKS = {"ds": DepthwiseSeparableConv, "ir": InvertedResidual, "cn": ConvBnAct}


def build_blocks(stages: Sequence[Sequence[BlockSpec]]) -> nn.Sequential:
    return nn.Sequential(*[nn.Sequential(*[_BLOCKS[b.kind](b) for b in stage]) for stage in stages])
