"""Torch reference of GFNet's EfficientNet-B2 / B3 (``efficientnet_b2`` / ``_b3``, non-TF), upstream's keys.

``forward(x) -> (pooled vector, map after conv_head-bn2-swish)``.
See :mod:`ppcdnv2.families.gfnet.backbones.efficientnet` for the architecture."""
from __future__ import annotations

import torch.nn as nn

from ..backbones.efficientnet import plan
from .geffnet_blocks import activation, batch_norm, build_blocks, conv2d

__all__ = ["EfficientNet", "build"]


class EfficientNet(nn.Module):
    def __init__(self, name: str = "efficientnet_b2", num_classes: int = 1000):
        super().__init__()
        stem, stages, last, head = plan(name)
        self.conv_stem = conv2d(3, stem, 3, 2)
        self.bn1 = batch_norm(stem)
        self.act1 = activation("swish")
        self.blocks = build_blocks(stages)
        self.conv_head = conv2d(last, head, 1)
        self.bn2 = batch_norm(head)
        self.act2 = activation("swish")
        self.global_pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(head, num_classes)
        self.feature_num = head
        self.fmap_channels = head

    def forward(self, x):
        fmap = self.act2(self.bn2(self.conv_head(self.blocks(self.act1(self.bn1(self.conv_stem(x)))))))
        return self.global_pool(fmap).flatten(1), fmap.detach()

    def classify(self, vector):
        return self.classifier(vector)


def build(name: str) -> EfficientNet:
    return EfficientNet(name)
