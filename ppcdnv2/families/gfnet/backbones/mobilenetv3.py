"""MobileNetV3-Large 1.00 / 1.25 as GFNet uses them (geffnet ``mobilenetv3_large_100`` / ``_125``), in Paddle.

``forward(x) -> (vector [B, 1280], feature map [B, C, h, w])``: the map is the last block's output (the
1x1 conv-BN-h-swish stage; 960 / 1200 channels); the vector is MobileNetV3's "efficient head": global
average pool first, then ``conv_head`` (1x1, with bias, no BatchNorm) and h-swish. The head width is
1280 for both multipliers (upstream does not scale it). ``classify(vector)`` applies ``classifier``
(Linear 1280 -> classes), which upstream keeps out of the forward; dropout before it is a training-only
op and is not applied. Any input size works (adaptive pooling).

Architecture (upstream's table; widths scaled by the multiplier and made divisible by 8): stem 3x3/2
conv (16 * m) -BN-h-swish; stages of depthwise-separable / inverted-residual blocks with ReLU in the first
three stages and h-swish after; SE (ReLU inside, gate ``relu6(x + 3) / 6``) reduces from the block's
*expanded* width: ``make_divisible(mid * 0.25, 8)`` (e.g. 72 -> 24, 120 -> 32, 480 -> 120, 672 -> 168).
"""
from __future__ import annotations

from typing import Dict, List, Tuple

from paddle import nn

from .geffnet_blocks import (BlockSpec, SEPolicy, StageRow, activation, build_blocks, expand_stages,
                             init_goog_, round_channels, batch_norm, conv2d)

__all__ = ["MobileNetV3", "MULTIPLIERS", "plan", "build"]

MULTIPLIERS: Dict[str, float] = {"mobilenetv3_large_100": 1.0, "mobilenetv3_large_125": 1.25}

_R = StageRow
# kind, repeats, kernel, stride, out, expansion, se ratio, activation override
LARGE = (
    (_R("ds", 1, 3, 1, 16, act="relu"),),
    (_R("ir", 1, 3, 2, 24, 4, act="relu"), _R("ir", 1, 3, 1, 24, 3, act="relu")),
    (_R("ir", 3, 5, 2, 40, 3, 0.25, act="relu"),),
    (_R("ir", 1, 3, 2, 80, 6), _R("ir", 1, 3, 1, 80, 2.5), _R("ir", 2, 3, 1, 80, 2.3)),
    (_R("ir", 2, 3, 1, 112, 6, 0.25),),
    (_R("ir", 3, 5, 2, 160, 6, 0.25),),
    (_R("cn", 1, 1, 1, 960),),
)
SE = SEPolicy(from_mid=True, divisor=8, act="relu", gate="hard_sigmoid")
STEM = 16
HEAD = 1280


def plan(name: str) -> Tuple[int, List[List[BlockSpec]], int, int]:
    """``(stem width, blocks per stage, last block width, head width)`` of ``name``."""
    if name not in MULTIPLIERS:
        raise KeyError(f"unknown MobileNetV3 {name!r}; known: {', '.join(MULTIPLIERS)}")
    m = MULTIPLIERS[name]
    stem = round_channels(STEM, m)
    stages, last = expand_stages(LARGE, stem, m, 1.0, "hard_swish", SE)
    return stem, stages, last, HEAD


class MobileNetV3(nn.Layer):
    def __init__(self, name: str = "mobilenetv3_large_100", num_classes: int = 1000):
        super().__init__()
        stem, stages, last, head = plan(name)
        self.arch = name
        self.conv_stem = conv2d(3, stem, 3, 2)
        self.bn1 = batch_norm(stem)
        self.act1 = activation("hard_swish")
        self.blocks = build_blocks(stages)
        self.global_pool = nn.AdaptiveAvgPool2D(1)
        self.conv_head = conv2d(last, head, 1, bias=True)
        self.act2 = activation("hard_swish")
        self.classifier = nn.Linear(head, num_classes)
        self.feature_num = head
        self.fmap_channels = last
        init_goog_(self)

    def forward(self, x):
        fmap = self.blocks(self.act1(self.bn1(self.conv_stem(x))))
        vector = self.act2(self.conv_head(self.global_pool(fmap)))
        return vector.flatten(1), fmap

    def classify(self, vector):
        return self.classifier(vector)


def build(name: str, num_classes: int = 1000) -> MobileNetV3:
    return MobileNetV3(name, num_classes)
