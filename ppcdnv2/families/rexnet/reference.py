"""A PyTorch ReXNet with the upstream module layout, for parity tests and the converter's ``--verify``.

Why our own: the upstream files (clovaai/rexnet) JIT-script a custom SiLU at import time and hard-code
their defaults; this module builds the same networks from :func:`~.config.channel_plan` so every preset
(and odd widths) gets a torch twin whose ``state_dict`` keys, order and shapes equal upstream's, and
``model.load_state_dict(torch.load(official.pth))`` works strictly.

Layout reproduced (indices are what the state-dict keys carry):

* ReXNetV1: ``features`` = [conv, BN, SiLU] stem, one ``LinearBottleneck`` per block (its layers in
  ``out``), [conv, BN, SiLU] penultimate, ``AdaptiveAvgPool2d``; ``output`` = [Dropout, 1x1 conv+bias].
* ReXNetV1_lite: ``features`` = [conv, BN, ReLU6] stem, blocks, [conv, BN, ReLU6] penultimate (no pool);
  ``avgpool``; ``output`` = [1x1 conv+bias, BN, ReLU6, Dropout, 1x1 conv+bias].

BatchNorm: eps 1e-5, momentum 0.1 (torch convention; upstream's ``bn_momentum=0.9`` argument of
ReXNetV1 is never used).
"""
from __future__ import annotations

from typing import List, Optional

import torch
from torch import nn

from .config import Block, ReXNetConfig, channel_plan

__all__ = ["build_reference", "ReXNetV1Reference", "ReXNetLiteReference", "SE", "LinearBottleneck"]


def _conv_bn(layers: List[nn.Module], cin: int, cout: int, k: int = 1, s: int = 1, groups: int = 1,
             act: Optional[nn.Module] = None) -> None:
    layers += [nn.Conv2d(cin, cout, k, s, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)]
    if act is not None:
        layers.append(act)


class SE(nn.Module):
    """Squeeze-excitation with a BatchNorm between its two 1x1 convs (``avg_pool`` has no weights)."""

    def __init__(self, channels: int, mid: int):
        super().__init__()
        self.avg_pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Sequential(nn.Conv2d(channels, mid, 1), nn.BatchNorm2d(mid), nn.ReLU(),
                                nn.Conv2d(mid, channels, 1), nn.Sigmoid())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.fc(self.avg_pool(x))


class LinearBottleneck(nn.Module):
    """Inverted residual; the shortcut is added to the first ``in_ch`` output channels only."""

    def __init__(self, b: Block, lite: bool):
        super().__init__()
        self.use_shortcut = b.use_shortcut
        self.in_channels, self.out_channels = b.in_ch, b.out_ch
        layers: List[nn.Module] = []
        if b.t != 1:
            _conv_bn(layers, b.in_ch, b.dw_ch, act=nn.ReLU6() if lite else nn.SiLU())
        if lite:  # depthwise with its own ReLU6, no SE
            _conv_bn(layers, b.dw_ch, b.dw_ch, b.kernel, b.stride, b.dw_ch, act=nn.ReLU6())
        else:  # depthwise without activation, optional SE, then ReLU6 (present with or without SE)
            _conv_bn(layers, b.dw_ch, b.dw_ch, b.kernel, b.stride, b.dw_ch)
            if b.use_se:
                layers.append(SE(b.dw_ch, b.se_ch))
            layers.append(nn.ReLU6())
        _conv_bn(layers, b.dw_ch, b.out_ch)
        self.out = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.out(x)
        if not self.use_shortcut:
            return y
        c = self.in_channels
        if c == y.shape[1]:
            return y + x
        return torch.cat([y[:, :c] + x, y[:, c:]], dim=1)


def _check(cfg: ReXNetConfig) -> None:
    if cfg.num_classes < 1:
        raise ValueError("the upstream layout always has a classifier: num_classes must be >= 1")


class ReXNetV1Reference(nn.Module):
    """``rexnetv1.ReXNetV1`` in layout and numerics."""

    def __init__(self, cfg: ReXNetConfig):
        super().__init__()
        _check(cfg)
        plan = channel_plan(cfg)
        feats: List[nn.Module] = []
        _conv_bn(feats, 3, plan.stem_ch, 3, 2, act=nn.SiLU())
        feats += [LinearBottleneck(b, lite=False) for b in plan.blocks]
        _conv_bn(feats, plan.blocks[-1].out_ch, plan.pen_ch, act=nn.SiLU())
        feats.append(nn.AdaptiveAvgPool2d(1))
        self.features = nn.Sequential(*feats)
        self.output = nn.Sequential(nn.Dropout(cfg.dropout), nn.Conv2d(plan.pen_ch, cfg.num_classes, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.output(self.features(x)).flatten(1)


class ReXNetLiteReference(nn.Module):
    """``rexnetv1_lite.ReXNetV1_lite`` in layout and numerics."""

    def __init__(self, cfg: ReXNetConfig):
        super().__init__()
        _check(cfg)
        plan = channel_plan(cfg)
        feats: List[nn.Module] = []
        _conv_bn(feats, 3, plan.stem_ch, 3, 2, act=nn.ReLU6())
        feats += [LinearBottleneck(b, lite=True) for b in plan.blocks]
        _conv_bn(feats, plan.blocks[-1].out_ch, plan.pen_ch, act=nn.ReLU6())
        self.features = nn.Sequential(*feats)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        hid = plan.head_hidden
        self.output = nn.Sequential(nn.Conv2d(plan.pen_ch, hid, 1), nn.BatchNorm2d(hid), nn.ReLU6(),
                                    nn.Dropout(cfg.dropout), nn.Conv2d(hid, cfg.num_classes, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.output(self.avgpool(self.features(x))).flatten(1)


def build_reference(cfg: ReXNetConfig) -> nn.Module:
    """The torch twin of ``cfg`` in upstream layout (torch default init; load weights into it)."""
    return ReXNetLiteReference(cfg) if cfg.variant == "lite" else ReXNetV1Reference(cfg)
