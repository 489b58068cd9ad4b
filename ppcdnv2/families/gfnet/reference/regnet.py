"""PyTorch RegNetY-600MF / 800MF / 1.6GF with the layout of GFNet's modified pycls ``AnyNet`` (our own code,
same module names and order, so upstream's ``model_prime_state_dict`` / ``model_state_dict`` load strictly
once ``module.`` is stripped).

Keys: ``stem.conv``/``stem.bn``; ``s{i}.b{j}.proj``/``bn`` (first block of each stage);
``s{i}.b{j}.f.{a,a_bn,b,b_bn,se.f_ex.0,se.f_ex.2,c,c_bn}``; ``fc`` (Linear with bias, top level; ``head`` is
an average pool without weights). ``forward`` returns ``(pooled vector, last stage's map)`` (the map
detached, as upstream); ``classify`` applies ``fc`` (upstream's ``model_prime.module.fc``). Widths come from
:func:`ppcdnv2.families.gfnet.backbones.regnet.stage_plan`. BatchNorm eps 1e-5, momentum 0.1 (pycls).
"""
from __future__ import annotations

import math
from typing import Tuple

import torch
from torch import nn

from ..backbones.regnet import REGNETY, RegNetParams, se_width, stage_plan

__all__ = ["RegNetYReference", "build"]


def _conv(cin: int, cout: int, k: int, stride: int = 1, groups: int = 1, bias: bool = False) -> nn.Conv2d:
    conv = nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=bias)
    nn.init.normal_(conv.weight, 0.0, math.sqrt(2.0 / (k * k * cout)))
    if bias:
        nn.init.zeros_(conv.bias)
    return conv


def _bn(c: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(c, eps=1e-5, momentum=0.1)


class SE(nn.Module):
    def __init__(self, channels: int, mid: int):
        super().__init__()
        self.avg_pool = nn.AdaptiveAvgPool2d(1)
        self.f_ex = nn.Sequential(_conv(channels, mid, 1, bias=True), nn.ReLU(),
                                  _conv(mid, channels, 1, bias=True), nn.Sigmoid())

    def forward(self, x):
        return x * self.f_ex(self.avg_pool(x))


class BottleneckTransform(nn.Module):
    def __init__(self, w_in: int, w_out: int, stride: int, bot_mul: float, group_w: int, se_ratio: float):
        super().__init__()
        w_b = int(round(w_out * bot_mul))
        self.a, self.a_bn = _conv(w_in, w_b, 1), _bn(w_b)
        self.b, self.b_bn = _conv(w_b, w_b, 3, stride, groups=w_b // group_w), _bn(w_b)
        self.se = SE(w_b, se_width(w_in, se_ratio)) if se_ratio else None
        self.c, self.c_bn = _conv(w_b, w_out, 1), _bn(w_out)

    def forward(self, x):
        x = torch.relu(self.a_bn(self.a(x)))
        x = torch.relu(self.b_bn(self.b(x)))
        if self.se is not None:
            x = self.se(x)
        return self.c_bn(self.c(x))


class ResBottleneckBlock(nn.Module):
    def __init__(self, w_in: int, w_out: int, stride: int, bot_mul: float, group_w: int, se_ratio: float):
        super().__init__()
        self.has_proj = w_in != w_out or stride != 1
        if self.has_proj:
            self.proj, self.bn = _conv(w_in, w_out, 1, stride), _bn(w_out)
        self.f = BottleneckTransform(w_in, w_out, stride, bot_mul, group_w, se_ratio)

    def forward(self, x):
        shortcut = self.bn(self.proj(x)) if self.has_proj else x
        return torch.relu(shortcut + self.f(x))


class Stem(nn.Module):
    def __init__(self, w_in: int, w_out: int):
        super().__init__()
        self.conv, self.bn = _conv(w_in, w_out, 3, 2), _bn(w_out)

    def forward(self, x):
        return torch.relu(self.bn(self.conv(x)))


class Head(nn.Module):
    def __init__(self):
        super().__init__()
        self.avg_pool = nn.AdaptiveAvgPool2d(1)

    def forward(self, x):
        return torch.flatten(self.avg_pool(x), 1)


class RegNetYReference(nn.Module):
    def __init__(self, params: RegNetParams, num_classes: int = 1000):
        super().__init__()
        self.stem = Stem(3, params.stem_w)
        self.stage_names = []
        w_in = params.stem_w
        for i, st in enumerate(stage_plan(params), 1):
            stage = nn.Sequential()
            for j in range(st.depth):
                stage.add_module(f"b{j + 1}", ResBottleneckBlock(
                    w_in if j == 0 else st.width, st.width, st.stride if j == 0 else 1,
                    st.bot_mul, st.group_w, params.se_ratio))
            self.add_module(f"s{i}", stage)
            self.stage_names.append(f"s{i}")
            w_in = st.width
        self.head = Head()
        self.fc = nn.Linear(w_in, num_classes)
        nn.init.normal_(self.fc.weight, 0.0, 0.01)
        nn.init.zeros_(self.fc.bias)
        self.feature_num = self.fmap_channels = w_in

    def forward(self, x) -> Tuple[torch.Tensor, torch.Tensor]:
        x = self.stem(x)
        for name in self.stage_names:
            x = getattr(self, name)(x)
        return self.head(x), x.detach()

    def classify(self, vector):
        return self.fc(vector)


def build(name: str, num_classes: int = 1000) -> RegNetYReference:
    if name not in REGNETY:
        raise KeyError(f"unknown RegNet backbone {name!r}; known: {', '.join(REGNETY)}")
    return RegNetYReference(REGNETY[name], num_classes)
