"""DenseNet-121/169/201 as GFNet uses them, in Paddle (torchvision's layout; GFNet's two-output forward).

Layout (keys equal torchvision's after the framework renames of :mod:`ppcdnv2.convert.keymap`): ``features``
holds ``conv0`` (7x7/2) - ``norm0`` - ReLU - 3x3/2 max pool, ``denseblock{b}`` of ``denselayer{l}``
(BN ``norm1`` - ReLU - 1x1 ``conv1`` to 128 channels - BN ``norm2`` - ReLU - 3x3 ``conv2`` to 32 channels,
concatenated after the layer's input), ``transition{b}`` between blocks (BN ``norm`` - ReLU - 1x1 ``conv``
halving the channels - 2x2/2 average pool) and the final BN ``norm5``; then the classifier ``classifier``.

``forward(x) -> (vector [B, C], map [B, C, h, w])``: ``features`` stops at ``norm5``; GFNet applies a ReLU after
it and takes both outputs after that ReLU (the vector is the global average of the rectified map). Adaptive
pooling, so any input size works. ``classifier`` is not part of ``forward``; :meth:`DenseNet.classify` applies
it. BatchNorm eps 1e-5, momentum 0.9 (Paddle's convention, = torch's 0.1).
"""
from __future__ import annotations

import paddle
import paddle.nn.functional as F
from paddle import nn

__all__ = ["DenseNet", "build", "CONFIGS"]

# name -> layers per dense block (stem 64 channels, growth 32, bottleneck 4x growth everywhere)
CONFIGS = {"densenet121": (6, 12, 24, 16), "densenet169": (6, 12, 32, 32), "densenet201": (6, 12, 48, 32)}
_BN = dict(momentum=0.9, epsilon=1e-5)


def _conv(cin: int, cout: int, k: int, stride: int = 1) -> nn.Conv2D:
    return nn.Conv2D(cin, cout, k, stride, k // 2, bias_attr=False,
                     weight_attr=nn.initializer.KaimingNormal(nonlinearity="relu"))


class _DenseLayer(nn.Layer):
    def __init__(self, cin: int, growth: int, bn_size: int):
        super().__init__()
        self.norm1 = nn.BatchNorm2D(cin, **_BN)
        self.relu1 = nn.ReLU()
        self.conv1 = _conv(cin, bn_size * growth, 1)
        self.norm2 = nn.BatchNorm2D(bn_size * growth, **_BN)
        self.relu2 = nn.ReLU()
        self.conv2 = _conv(bn_size * growth, growth, 3)

    def forward(self, x):
        y = self.conv1(self.relu1(self.norm1(x)))
        y = self.conv2(self.relu2(self.norm2(y)))
        return paddle.concat([x, y], axis=1)


class _Transition(nn.Layer):
    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.norm = nn.BatchNorm2D(cin, **_BN)
        self.relu = nn.ReLU()
        self.conv = _conv(cin, cout, 1)
        self.pool = nn.AvgPool2D(2, 2)

    def forward(self, x):
        return self.pool(self.conv(self.relu(self.norm(x))))


class DenseNet(nn.Layer):
    def __init__(self, blocks=(6, 12, 24, 16), growth: int = 32, stem: int = 64, bn_size: int = 4,
                 num_classes: int = 1000):
        super().__init__()
        layers = [("conv0", _conv(3, stem, 7, 2)), ("norm0", nn.BatchNorm2D(stem, **_BN)),
                  ("relu0", nn.ReLU()), ("pool0", nn.MaxPool2D(3, 2, 1))]
        c = stem
        for b, n in enumerate(blocks, 1):
            dense = [(f"denselayer{i + 1}", _DenseLayer(c + i * growth, growth, bn_size)) for i in range(n)]
            layers.append((f"denseblock{b}", nn.Sequential(*dense)))
            c += n * growth
            if b != len(blocks):
                layers.append((f"transition{b}", _Transition(c, c // 2)))
                c //= 2
        layers.append(("norm5", nn.BatchNorm2D(c, **_BN)))
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2D(1)
        self.classifier = nn.Linear(c, num_classes, bias_attr=nn.initializer.Constant(0.0))
        self.feature_num = self.fmap_channels = c

    def forward(self, x):
        fmap = F.relu(self.features(x))
        return paddle.flatten(self.avgpool(fmap), 1), fmap

    def classify(self, vector):
        return self.classifier(vector)


def build(name: str, num_classes: int = 1000) -> DenseNet:
    if name not in CONFIGS:
        raise KeyError(f"unknown GFNet DenseNet {name!r}; known: {', '.join(CONFIGS)}")
    return DenseNet(CONFIGS[name], num_classes=num_classes)
