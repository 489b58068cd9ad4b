"""EfficientNet-B2 / B3 as GFNet uses them (geffnet ``efficientnet_b2`` / ``_b3``, non-TF), in Paddle.

``forward(x) -> (vector [B, F], feature map [B, F, h, w])``: the map is after ``conv_head`` (1x1, no
bias) - ``bn2`` - swish (F = 1408 for B2, 1536 for B3: 1280 scaled like the other widths); the vector is its
global average pool. ``classify(vector)`` applies ``classifier`` (Linear F -> classes), which upstream keeps
out of the forward; dropout and drop-connect are training-only and not applied. Any input size works.

Architecture (B0's table scaled by (width, depth) = (1.1, 1.2) for B2 and (1.2, 1.4) for B3): stem 3x3/2
conv (32 * w) -BN-swish, seven stages whose repeat counts are ``ceil(repeats * depth)``, swish everywhere,
every block with SE (swish inside, sigmoid gate) whose reduce width comes from the block's *input* width:
``make_divisible(in * 0.25, 1)`` (e.g. 16 -> 4, 24 -> 6, 88 -> 22).
"""
from __future__ import annotations

from typing import Dict, List, Tuple

from paddle import nn

from .geffnet_blocks import (BlockSpec, SEPolicy, StageRow, activation, build_blocks, expand_stages,
                             init_goog_, round_channels, batch_norm, conv2d)

__all__ = ["EfficientNet", "SCALES", "plan", "build"]

# name: (channel multiplier, depth multiplier); upstream's input resolutions are 260 / 300
SCALES: Dict[str, Tuple[float, float]] = {"efficientnet_b2": (1.1, 1.2), "efficientnet_b3": (1.2, 1.4)}

_R = StageRow
# kind, repeats, kernel, stride, out, expansion, se ratio
B0 = (
    (_R("ds", 1, 3, 1, 16, 1, 0.25),),
    (_R("ir", 2, 3, 2, 24, 6, 0.25),),
    (_R("ir", 2, 5, 2, 40, 6, 0.25),),
    (_R("ir", 3, 3, 2, 80, 6, 0.25),),
    (_R("ir", 3, 5, 1, 112, 6, 0.25),),
    (_R("ir", 4, 5, 2, 192, 6, 0.25),),
    (_R("ir", 1, 3, 1, 320, 6, 0.25),),
)
SE = SEPolicy(from_mid=False, divisor=1, act=None, gate="sigmoid")
STEM = 32
HEAD = 1280


def plan(name: str) -> Tuple[int, List[List[BlockSpec]], int, int]:
    """``(stem width, blocks per stage, last block width, head width)`` of ``name``."""
    if name not in SCALES:
        raise KeyError(f"unknown EfficientNet {name!r}; known: {', '.join(SCALES)}")
    width, depth = SCALES[name]
    stem = round_channels(STEM, width)
    stages, last = expand_stages(B0, stem, width, depth, "swish", SE)
    return stem, stages, last, round_channels(HEAD, width)


class EfficientNet(nn.Layer):
    def __init__(self, name: str = "efficientnet_b2", num_classes: int = 1000):
        super().__init__()
        stem, stages, last, head = plan(name)
        self.arch = name
        self.conv_stem = conv2d(3, stem, 3, 2)
        self.bn1 = batch_norm(stem)
        self.act1 = activation("swish")
        self.blocks = build_blocks(stages)
        self.conv_head = conv2d(last, head, 1)
        self.bn2 = batch_norm(head)
        self.act2 = activation("swish")
        self.global_pool = nn.AdaptiveAvgPool2D(1)
        self.classifier = nn.Linear(head, num_classes)
        self.feature_num = head
        self.fmap_channels = head
        init_goog_(self)

    def forward(self, x):
        x = self.blocks(self.act1(self.bn1(self.conv_stem(x))))
        fmap = self.act2(self.bn2(self.conv_head(x)))
        return self.global_pool(fmap).flatten(1), fmap

    def classify(self, vector):
        return self.classifier(vector)


def build(name: str, num_classes: int = 1000) -> EfficientNet:
    return EfficientNet(name, num_classes)
