"""Torch reference of the ResNet-50 GFNet uses (torchvision's layout, GFNet's two-output forward).

State-dict keys are torchvision's: ``conv1``, ``bn1``, ``layer{1..4}.{i}.conv{1,2,3}`` / ``bn{1,2,3}``,
``layer{n}.0.downsample.{0,1}`` (1x1 conv with the block's stride, then BN) and the classifier ``fc``.
The stride of a bottleneck sits on its 3x3 conv (``conv2``), as in upstream GFNet and torchvision.

``forward(x) -> (pooled [B, 2048], layer4 output [B, 2048, h, w])``: the map is ``layer4``'s output (its last
block already ends in ReLU), the vector its global average; ``fc`` is not applied in ``forward`` (GFNet calls it
separately), :meth:`ResNet.classify` does that.
"""
from __future__ import annotations

import torch
from torch import nn

__all__ = ["ResNet", "Bottleneck", "build"]

_DEPTHS = {"resnet50": (3, 4, 6, 3)}


class Bottleneck(nn.Module):
    """1x1 reduce -> 3x3 (strided) -> 1x1 expand (x4), each followed by BN; ReLU after the first two and
    after the residual sum."""

    expansion = 4

    def __init__(self, cin: int, width: int, stride: int = 1):
        super().__init__()
        cout = width * self.expansion
        self.conv1 = nn.Conv2d(cin, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, cout, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU()
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        shortcut = x if self.downsample is None else self.downsample(x)
        return self.relu(y + shortcut)


class ResNet(nn.Module):
    def __init__(self, depths=(3, 4, 6, 3), num_classes: int = 1000):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU()
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        cin = 64
        for i, (n, width) in enumerate(zip(depths, (64, 128, 256, 512))):
            blocks = []
            for j in range(n):
                blocks.append(Bottleneck(cin, width, 2 if (i > 0 and j == 0) else 1))
                cin = width * Bottleneck.expansion
            setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)
        self.feature_num = self.fmap_channels = cin

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return torch.flatten(self.avgpool(x), 1), x.detach()

    def classify(self, vector):
        return self.fc(vector)


def build(name: str = "resnet50") -> ResNet:
    if name not in _DEPTHS:
        raise KeyError(f"unknown GFNet ResNet {name!r}; known: {', '.join(_DEPTHS)}")
    return ResNet(_DEPTHS[name])
