"""PyTorch building blocks shared by the reference models (CondenseNetV2 and CondenseNet V1).

The module layout (and therefore the state-dict keys) follows the official PyTorch code, so a
reference model loads official checkpoints with ``strict=True``. Importing this module needs torch;
``ppcdnv2`` itself never imports it.
"""
from __future__ import annotations

from typing import Callable, Tuple

from .... import torch_tools  # noqa: F401 (first: a clear error when torch is missing)

import torch
import torch.nn as nn


class HS(nn.Module):
    """Hard-swish written as upstream does, ``x * relu6(x + 3) / 6`` (the ReLU6 is a child, as upstream)."""

    def __init__(self):
        super().__init__()
        self.relu6 = nn.ReLU6()

    def forward(self, x):
        return x * self.relu6(x + 3) / 6


def make_activation(name: str) -> nn.Module:
    if name == "ReLU":
        return nn.ReLU()
    if name == "HS":
        return HS()
    raise ValueError(f"unknown activation {name!r}; expected 'ReLU' or 'HS'")


class SELayer(nn.Module):
    """Squeeze-and-excitation with bias-free linears (keys ``fc.0.weight``/``fc.2.weight``)."""

    def __init__(self, inplanes: int, reduction: int = 16):
        super().__init__()
        self.avg_pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Sequential(
            nn.Linear(inplanes, inplanes // reduction, bias=False),
            nn.ReLU(),
            nn.Linear(inplanes // reduction, inplanes, bias=False),
            nn.Sigmoid(),
        )

    def forward(self, x):
        n, c = x.shape[:2]
        return x * self.fc(self.avg_pool(x).view(n, c)).view(n, c, 1, 1)


class Conv(nn.Sequential):
    """BN → activation → convolution (keys ``norm.*``, ``conv.weight``)."""

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, groups=1, activation="ReLU"):
        super().__init__()
        self.add_module("norm", nn.BatchNorm2d(in_channels))
        self.add_module("activation", make_activation(activation))
        self.add_module("conv", nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=padding,
                                          groups=groups, bias=False))


class Transition(nn.Module):
    """Upstream's transition between dense blocks: a 2x2 average pool."""

    def __init__(self):
        super().__init__()
        self.pool = nn.AvgPool2d(kernel_size=2, stride=2)

    def forward(self, x):
        return self.pool(x)


def dense_trunk(cfg, make_layer: Callable[[int, int, int], nn.Module]) -> Tuple[nn.Sequential, int]:
    """Upstream's ``features`` of both families: stem conv, dense blocks of ``make_layer(block, in_channels,
    growth)`` with transitions between them, BN → ReLU → final average pool; and its output channels."""
    features = nn.Sequential()
    channels = 2 * cfg.growth[0]
    features.add_module("init_conv", nn.Conv2d(3, channels, 3, stride=cfg.init_stride, padding=1, bias=False))
    for i, (depth, growth) in enumerate(zip(cfg.stages, cfg.growth)):
        block = nn.Sequential()
        for j in range(depth):
            block.add_module(f"denselayer_{j + 1}", make_layer(i, channels + j * growth, growth))
        features.add_module(f"denseblock_{i + 1}", block)
        channels += depth * growth
        if i != len(cfg.stages) - 1:
            features.add_module(f"transition_{i + 1}", Transition())
    features.add_module("norm_last", nn.BatchNorm2d(channels))
    features.add_module("relu_last", nn.ReLU())
    features.add_module("pool_last", nn.AvgPool2d(cfg.pool_size))
    return features, channels


def shuffle(x, groups: int):
    """Group-major → channel-major (upstream ``ShuffleLayer``): channel g*C/G + k goes to k*G + g."""
    n, c, h, w = x.shape
    return x.view(n, groups, c // groups, h, w).transpose(1, 2).reshape(n, c, h, w)


def shuffle_trans(x, groups: int):
    """Inverse of ``shuffle`` (upstream ``ShuffleLayerTrans``): channels g, g+G, ... become group g."""
    n, c, h, w = x.shape
    return x.view(n, c // groups, groups, h, w).transpose(1, 2).reshape(n, c, h, w)


def init_like_upstream_(model: nn.Module) -> None:
    """Upstream's ``_initialize``: kaiming-normal (fan_out) convs, every BN to 1/0; linears keep torch's default."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.constant_(m.weight, 1)
            nn.init.constant_(m.bias, 0)
