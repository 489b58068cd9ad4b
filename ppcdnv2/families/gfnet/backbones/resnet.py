"""ResNet-50 as GFNet uses it, in Paddle (torchvision's layout; GFNet's two-output forward).

Layout (keys equal torchvision's after the framework renames of :mod:`ppcdnv2.convert.keymap`): stem
``conv1`` (7x7/2) - ``bn1`` - ReLU - 3x3/2 max pool, then ``layer1..4`` of bottlenecks
(``conv1/bn1`` 1x1, ``conv2/bn2`` 3x3 carrying the stride, ``conv3/bn3`` 1x1 x4, ``downsample.0/1`` on the
first block of each stage), and the classifier ``fc``.

``forward(x) -> (vector [B, 2048], map [B, 2048, h, w])``: the map is ``layer4``'s output, the vector its global
average (adaptive pooling, so any input size works: GFNet feeds 96x96 / 128x128 patches and glances).
``fc`` is not part of ``forward``; :meth:`ResNet.classify` applies it (GFNet's step 0 uses its own ``fc``).
BatchNorm eps 1e-5, momentum 0.9 (Paddle's convention, = torch's 0.1).
"""
from __future__ import annotations

import paddle
from paddle import nn

__all__ = ["ResNet", "Bottleneck", "build"]

_DEPTHS = {"resnet50": (3, 4, 6, 3)}
_BN = dict(momentum=0.9, epsilon=1e-5)


def _conv(cin: int, cout: int, k: int, stride: int = 1) -> nn.Conv2D:
    return nn.Conv2D(cin, cout, k, stride, k // 2, bias_attr=False,
                     weight_attr=nn.initializer.KaimingNormal(negative_slope=0.0, nonlinearity="relu",
                                                              fan_in=cout * k * k))


class Bottleneck(nn.Layer):
    expansion = 4

    def __init__(self, cin: int, width: int, stride: int = 1):
        super().__init__()
        cout = width * self.expansion
        self.conv1 = _conv(cin, width, 1)
        self.bn1 = nn.BatchNorm2D(width, **_BN)
        self.conv2 = _conv(width, width, 3, stride)
        self.bn2 = nn.BatchNorm2D(width, **_BN)
        self.conv3 = _conv(width, cout, 1)
        self.bn3 = nn.BatchNorm2D(cout, **_BN)
        self.relu = nn.ReLU()
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(_conv(cin, cout, 1, stride), nn.BatchNorm2D(cout, **_BN))

    def forward(self, x):
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        shortcut = x if self.downsample is None else self.downsample(x)
        return self.relu(y + shortcut)


class ResNet(nn.Layer):
    def __init__(self, depths=(3, 4, 6, 3), num_classes: int = 1000):
        super().__init__()
        self.conv1 = _conv(3, 64, 7, 2)
        self.bn1 = nn.BatchNorm2D(64, **_BN)
        self.relu = nn.ReLU()
        self.maxpool = nn.MaxPool2D(3, 2, 1)
        cin = 64
        for i, (n, width) in enumerate(zip(depths, (64, 128, 256, 512))):
            blocks = []
            for j in range(n):
                blocks.append(Bottleneck(cin, width, 2 if (i > 0 and j == 0) else 1))
                cin = width * Bottleneck.expansion
            setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
        self.avgpool = nn.AdaptiveAvgPool2D(1)
        self.fc = nn.Linear(cin, num_classes)
        self.feature_num = self.fmap_channels = cin

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return paddle.flatten(self.avgpool(x), 1), x

    def classify(self, vector):
        return self.fc(vector)


def build(name: str = "resnet50", num_classes: int = 1000) -> ResNet:
    if name not in _DEPTHS:
        raise KeyError(f"unknown GFNet ResNet {name!r}; known: {', '.join(_DEPTHS)}")
    return ResNet(_DEPTHS[name], num_classes)
