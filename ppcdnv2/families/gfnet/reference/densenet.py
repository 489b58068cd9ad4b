"""Torch reference of the DenseNet-121/169/201 GFNet uses (torchvision's layout, GFNet's two-output forward).

State-dict keys are torchvision's: everything but the classifier lives in ``features`` (``conv0``, ``norm0``,
``denseblock{b}.denselayer{l}.{norm1,conv1,norm2,conv2}``, ``transition{b}.{norm,conv}``, ``norm5``), then
``classifier``. A dense layer is BN-ReLU-1x1 conv (4·32 channels)-BN-ReLU-3x3 conv (32 channels), its output
concatenated after its input; a transition is BN-ReLU-1x1 conv (halving the channels)-2x2 average pool.

``forward(x) -> (pooled [B, C], map [B, C, h, w])``: ``features`` ends with ``norm5`` (no ReLU inside); GFNet
applies the ReLU after it, and both outputs are taken after that ReLU (the map detached, the vector its global
average). ``classifier`` is not applied in ``forward``; :meth:`DenseNet.classify` does that.
"""
from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["DenseNet", "build", "CONFIGS"]

# name -> layers per dense block (stem 64 channels, growth 32, bottleneck 4x growth everywhere)
CONFIGS = {"densenet121": (6, 12, 24, 16), "densenet169": (6, 12, 32, 32), "densenet201": (6, 12, 48, 32)}


class _DenseLayer(nn.Module):
    def __init__(self, cin: int, growth: int, bn_size: int):
        super().__init__()
        self.norm1 = nn.BatchNorm2d(cin)
        self.relu1 = nn.ReLU()
        self.conv1 = nn.Conv2d(cin, bn_size * growth, 1, bias=False)
        self.norm2 = nn.BatchNorm2d(bn_size * growth)
        self.relu2 = nn.ReLU()
        self.conv2 = nn.Conv2d(bn_size * growth, growth, 3, 1, 1, bias=False)

    def forward(self, x):
        y = self.conv1(self.relu1(self.norm1(x)))
        y = self.conv2(self.relu2(self.norm2(y)))
        return torch.cat([x, y], 1)


class _Transition(nn.Sequential):
    def __init__(self, cin: int, cout: int):
        super().__init__(OrderedDict([
            ("norm", nn.BatchNorm2d(cin)), ("relu", nn.ReLU()),
            ("conv", nn.Conv2d(cin, cout, 1, bias=False)), ("pool", nn.AvgPool2d(2, 2)),
        ]))


class DenseNet(nn.Module):
    def __init__(self, blocks=(6, 12, 24, 16), growth: int = 32, stem: int = 64, bn_size: int = 4,
                 num_classes: int = 1000):
        super().__init__()
        layers = OrderedDict([
            ("conv0", nn.Conv2d(3, stem, 7, 2, 3, bias=False)), ("norm0", nn.BatchNorm2d(stem)),
            ("relu0", nn.ReLU()), ("pool0", nn.MaxPool2d(3, 2, 1)),
        ])
        c = stem
        for b, n in enumerate(blocks, 1):
            block = nn.Sequential()
            for i in range(n):
                block.add_module(f"denselayer{i + 1}", _DenseLayer(c + i * growth, growth, bn_size))
            layers[f"denseblock{b}"] = block
            c += n * growth
            if b != len(blocks):
                layers[f"transition{b}"] = _Transition(c, c // 2)
                c //= 2
        layers["norm5"] = nn.BatchNorm2d(c)
        self.features = nn.Sequential(layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(c, num_classes)
        self.feature_num = self.fmap_channels = c

    def forward(self, x):
        fmap = F.relu(self.features(x))
        return torch.flatten(self.avgpool(fmap), 1), fmap.detach()

    def classify(self, vector):
        return self.classifier(vector)


def build(name: str) -> DenseNet:
    if name not in CONFIGS:
        raise KeyError(f"unknown GFNet DenseNet {name!r}; known: {', '.join(CONFIGS)}")
    return DenseNet(CONFIGS[name])
