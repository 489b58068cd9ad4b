"""RegNetY-600MF / 800MF / 1.6GF as GFNet uses them (pycls ``RegNet`` built from upstream's ``pycls/cfgs``
files), in Paddle.

Architecture (pycls ``AnyNet`` with a RegNet width schedule):

* stem ``stem``: 3x3 conv stride 2 (3 -> 32, no bias), BN, ReLU;
* four stages ``s1`` .. ``s4`` of residual bottleneck blocks ``b1``, ``b2``, ...; the first block of a stage
  has stride 2 and, as its shape changes, a projection shortcut ``proj`` (1x1 conv, stride 2) + ``bn``;
  the residual branch ``f`` is ``a`` (1x1) ``a_bn`` ReLU, ``b`` (3x3 grouped, the stride) ``b_bn`` ReLU,
  ``se``, ``c`` (1x1) ``c_bn``; the block ends with ReLU after the sum;
* SE (RegNet-Y): global average pool, ``f_ex.0`` 1x1 conv (with bias) to ``round(0.25 * block input width)``
  channels, ReLU, ``f_ex.2`` 1x1 conv back, sigmoid gate;
* ``head``: global average pool only (upstream GFNet commented its linear layer out), and ``fc``: the
  Linear classifier (with bias) that GFNet's modified pycls keeps at the top level of the model (state-dict
  keys ``fc.weight`` / ``fc.bias``; there is no ``head.fc``). It is not part of ``forward``; GFNet applies it
  to the glance features for the step-0 prediction (``model_prime.module.fc``): :meth:`RegNetY.classify`.

``forward(x) -> (pooled vector [B, C], last stage's map [B, C, h, w])``; pooling is adaptive, so any input
side works (GFNet feeds 96x96 patches and the glance image). BatchNorm eps 1e-5, momentum 0.9 (Paddle's
convention; torch/pycls 0.1).

The widths come from the RegNet parameters of each cfg file (:data:`REGNETY`) through :func:`stage_plan`,
which reproduces pycls' generation: linear widths ``w_a * j + w_0`` quantised on the log-``w_m`` grid and to
multiples of 8, blocks of equal width grouped into stages, group width capped at the stage width and the
stage width rounded to a multiple of it (bottleneck ratio 1). That last rounding is Python's half-to-even
``round`` and it matters: RegNetY-800MF's 776-wide stage becomes 768 (48.5 groups of 16 -> 48), its 56-wide
stage 64 (3.5 -> 4); RegNetY-600MF 600 -> 608, RegNetY-1.6GF 128 -> 120 and 896 -> 888 (groups of 24).
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import List, Tuple

import numpy as np
import paddle
from paddle import nn

__all__ = ["REGNETY", "CFG_FILES", "RegNetParams", "Stage", "block_widths", "stage_plan", "RegNetY", "build"]

_BN = dict(momentum=0.9, epsilon=1e-5)


@dataclass(frozen=True)
class RegNetParams:
    """One RegNet design (pycls ``cfg.REGNET``): linear width slope/intercept, log-quantisation step,
    number of blocks, group width; the rest are pycls' RegNet defaults, which the cfg files keep."""
    w_a: float
    w_0: int
    w_m: float
    depth: int
    group_w: int
    stem_w: int = 32
    bot_mul: float = 1.0
    stride: int = 2
    se_ratio: float = 0.25  # of the block's INPUT width (RegNet-Y; SE_ON in the cfg files)


# upstream GFNet's pycls/cfgs/RegNetY-{600MF,800MF,1.6GF}_dds_8gpu.yaml
REGNETY = {
    "regnety_600m": RegNetParams(w_a=32.54, w_0=48, w_m=2.32, depth=15, group_w=16),
    "regnety_800m": RegNetParams(w_a=38.84, w_0=56, w_m=2.40, depth=14, group_w=16),
    "regnety_1.6g": RegNetParams(w_a=20.71, w_0=48, w_m=2.65, depth=27, group_w=24),
}
CFG_FILES = {"regnety_600m": "RegNetY-600MF_dds_8gpu.yaml", "regnety_800m": "RegNetY-800MF_dds_8gpu.yaml",
             "regnety_1.6g": "RegNetY-1.6GF_dds_8gpu.yaml"}


@dataclass(frozen=True)
class Stage:
    width: int
    depth: int
    group_w: int
    bot_mul: float
    stride: int


def block_widths(w_a: float, w_0: int, w_m: float, depth: int, q: int = 8) -> List[int]:
    """Per-block widths: ``u_j = w_a * j + w_0`` snapped to ``w_0 * w_m ** round(log_{w_m}(u_j / w_0))``, then
    to the nearest multiple of ``q`` (numpy's half-to-even rounding, as pycls)."""
    if not (w_a >= 0 and w_0 > 0 and w_m > 1 and w_0 % q == 0):
        raise ValueError(f"invalid RegNet parameters w_a={w_a} w_0={w_0} w_m={w_m} (q={q})")
    linear = np.arange(depth) * w_a + w_0
    steps = np.round(np.log(linear / w_0) / np.log(w_m))
    snapped = np.round(w_0 * np.power(w_m, steps) / q) * q
    return [int(w) for w in snapped]


def _multiple(value: float, q: int) -> int:
    """The multiple of ``q`` nearest to ``value`` (Python's ``round``: half to even)."""
    return int(round(value / q) * q)


def stage_plan(params: RegNetParams) -> List[Stage]:
    """The stages of a RegNet: runs of equal block width, with the group width made compatible."""
    widths = block_widths(params.w_a, params.w_0, params.w_m, params.depth)
    stages = []
    for width, run in itertools.groupby(widths):
        depth = len(list(run))
        bottleneck = int(width * params.bot_mul)
        group_w = min(params.group_w, bottleneck)
        bottleneck = _multiple(bottleneck, group_w)
        stages.append(Stage(int(bottleneck / params.bot_mul), depth, group_w, params.bot_mul, params.stride))
    return stages


def se_width(w_in: int, ratio: float) -> int:
    return int(round(w_in * ratio))


def _conv(cin: int, cout: int, k: int, stride: int = 1, groups: int = 1, bias: bool = False) -> nn.Conv2D:
    """pycls' init: ``N(0, sqrt(2 / (k * k * cout)))`` (fan-out ignoring groups), biases zero."""
    std = math.sqrt(2.0 / (k * k * cout))
    return nn.Conv2D(cin, cout, k, stride, k // 2, groups=groups,
                     weight_attr=paddle.ParamAttr(initializer=nn.initializer.Normal(0.0, std)),
                     bias_attr=paddle.ParamAttr(initializer=nn.initializer.Constant(0.0)) if bias else False)


class SE(nn.Layer):
    def __init__(self, channels: int, mid: int):
        super().__init__()
        self.avg_pool = nn.AdaptiveAvgPool2D(1)
        self.f_ex = nn.Sequential(_conv(channels, mid, 1, bias=True), nn.ReLU(),
                                  _conv(mid, channels, 1, bias=True), nn.Sigmoid())

    def forward(self, x):
        return x * self.f_ex(self.avg_pool(x))


class BottleneckTransform(nn.Layer):
    def __init__(self, w_in: int, w_out: int, stride: int, bot_mul: float, group_w: int, se_ratio: float):
        super().__init__()
        w_b = int(round(w_out * bot_mul))
        self.a, self.a_bn = _conv(w_in, w_b, 1), nn.BatchNorm2D(w_b, **_BN)
        self.b, self.b_bn = _conv(w_b, w_b, 3, stride, groups=w_b // group_w), nn.BatchNorm2D(w_b, **_BN)
        self.se = SE(w_b, se_width(w_in, se_ratio)) if se_ratio else None
        self.c, self.c_bn = _conv(w_b, w_out, 1), nn.BatchNorm2D(w_out, **_BN)
        self.relu = nn.ReLU()

    def forward(self, x):
        x = self.relu(self.a_bn(self.a(x)))
        x = self.relu(self.b_bn(self.b(x)))
        if self.se is not None:
            x = self.se(x)
        return self.c_bn(self.c(x))


class ResBottleneckBlock(nn.Layer):
    def __init__(self, w_in: int, w_out: int, stride: int, bot_mul: float, group_w: int, se_ratio: float):
        super().__init__()
        self.has_proj = w_in != w_out or stride != 1
        if self.has_proj:
            self.proj, self.bn = _conv(w_in, w_out, 1, stride), nn.BatchNorm2D(w_out, **_BN)
        self.f = BottleneckTransform(w_in, w_out, stride, bot_mul, group_w, se_ratio)
        self.relu = nn.ReLU()

    def forward(self, x):
        shortcut = self.bn(self.proj(x)) if self.has_proj else x
        return self.relu(shortcut + self.f(x))


class Stem(nn.Layer):
    def __init__(self, w_in: int, w_out: int):
        super().__init__()
        self.conv, self.bn, self.relu = _conv(w_in, w_out, 3, 2), nn.BatchNorm2D(w_out, **_BN), nn.ReLU()

    def forward(self, x):
        return self.relu(self.bn(self.conv(x)))


class Head(nn.Layer):
    """GFNet's pycls ``AnyHead``: global average pool and flatten (no weights)."""

    def __init__(self):
        super().__init__()
        self.avg_pool = nn.AdaptiveAvgPool2D(1)

    def forward(self, x):
        return paddle.flatten(self.avg_pool(x), 1)


class RegNetY(nn.Layer):
    """A RegNet(-Y) backbone with GFNet's interface (see the module docstring)."""

    def __init__(self, params: RegNetParams, num_classes: int = 1000):
        super().__init__()
        self.params = params
        self.stages_plan = stage_plan(params)
        self.stem = Stem(3, params.stem_w)
        self.stage_names = []
        w_in = params.stem_w
        for i, st in enumerate(self.stages_plan, 1):
            blocks = nn.Sequential()
            for j in range(st.depth):
                blocks.add_sublayer(f"b{j + 1}", ResBottleneckBlock(
                    w_in if j == 0 else st.width, st.width, st.stride if j == 0 else 1,
                    st.bot_mul, st.group_w, params.se_ratio))
            self.add_sublayer(f"s{i}", blocks)
            self.stage_names.append(f"s{i}")
            w_in = st.width
        self.head = Head()
        self.fc = nn.Linear(w_in, num_classes,
                            weight_attr=paddle.ParamAttr(initializer=nn.initializer.Normal(0.0, 0.01)),
                            bias_attr=paddle.ParamAttr(initializer=nn.initializer.Constant(0.0)))
        self.feature_num = self.fmap_channels = w_in

    def forward_features(self, x):
        x = self.stem(x)
        for name in self.stage_names:
            x = getattr(self, name)(x)
        return x

    def forward(self, x) -> Tuple[paddle.Tensor, paddle.Tensor]:
        fmap = self.forward_features(x)
        return self.head(fmap), fmap

    def classify(self, vector):
        """The model's own ``fc`` on the pooled vector (GFNet's step-0 logits for RegNet)."""
        return self.fc(vector)


def build(name: str, num_classes: int = 1000) -> RegNetY:
    if name not in REGNETY:
        raise KeyError(f"unknown RegNet backbone {name!r}; known: {', '.join(REGNETY)}")
    return RegNetY(REGNETY[name], num_classes)
