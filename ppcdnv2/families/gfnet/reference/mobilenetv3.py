"""Torch reference of GFNet's MobileNetV3-Large (``mobilenetv3_large_100`` / ``_125``), upstream's keys.

``forward(x) -> (vector [B, 1280], last block's map)``: pool, ``conv_head`` (bias, no BN), h-swish.
See :mod:`ppcdnv2.families.gfnet.backbones.mobilenetv3` for the architecture."""
from __future__ import annotations

import torch.nn as nn

from ..backbones.mobilenetv3 import plan
from .geffnet_blocks import activation, batch_norm, build_blocks, conv2d

__all__ = ["MobileNetV3", "build"]


class MobileNetV3(nn.Module):
    def __init__(self, name: str = "mobilenetv3_large_100", num_classes: int = 1000):
        super().__init__()
        stem, stages, last, head = plan(name)
        self.conv_stem = conv2d(3, stem, 3, 2)
        self.bn1 = batch_norm(stem)
        self.act1 = activation("hard_swish")
        self.blocks = build_blocks(stages)
        self.global_pool = nn.AdaptiveAvgPool2d(1)
        self.conv_head = conv2d(last, head, 1, bias=True)
        self.act2 = activation("hard_swish")
        self.classifier = nn.Linear(head, num_classes)
        self.feature_num = head
        self.fmap_channels = last

    def forward(self, x):
        fmap = self.blocks(self.act1(self.bn1(self.conv_stem(x))))
        vector = self.act2(self.conv_head(self.global_pool(fmap)))
        return vector.flatten(1), fmap.detach()

    def classify(self, vector):
        return self.classifier(vector)


def build(name: str) -> MobileNetV3:
    return MobileNetV3(name)
