"""Building blocks shared by both forms: activations, SE, the pre-activation Conv and channel shuffles.

Every block is pre-activation (BatchNorm → activation → convolution), as in CondenseNet(V2).
BatchNorm momentum is Paddle's 0.9, i.e. torch's 0.1; epsilon 1e-5 as torch's default.
"""
from __future__ import annotations

import paddle
import paddle.nn as nn
import paddle.nn.functional as F

BN_MOMENTUM = 0.9
BN_EPSILON = 1e-5


def batch_norm(channels: int) -> nn.BatchNorm2D:
    return nn.BatchNorm2D(channels, momentum=BN_MOMENTUM, epsilon=BN_EPSILON)


class HS(nn.Layer):
    """Hard-swish, x * relu6(x + 3) / 6 (Paddle's hardswish is the same function)."""

    def forward(self, x):
        return F.hardswish(x)


def make_activation(name: str) -> nn.Layer:
    if name == "ReLU":
        return nn.ReLU()
    if name == "HS":
        return HS()
    raise ValueError(f"unknown activation {name!r}; expected 'ReLU' or 'HS'")


class SELayer(nn.Layer):
    """Squeeze-and-excitation with bias-free linears; ``fc.0``/``fc.2`` match the official keys."""

    def __init__(self, channels: int, reduction: int = 16):
        super().__init__()
        self.avg_pool = nn.AdaptiveAvgPool2D(1)
        hidden = channels // reduction
        self.fc = nn.Sequential(
            nn.Linear(channels, hidden, bias_attr=False),
            nn.ReLU(),
            nn.Linear(hidden, channels, bias_attr=False),
            nn.Sigmoid(),
        )

    def forward(self, x):
        scale = self.fc(paddle.flatten(self.avg_pool(x), 1))
        return x * scale.unsqueeze([2, 3])


class Conv(nn.Sequential):
    """BN → activation → convolution, the plain (non-learned) layer of the dense layers."""

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, groups=1, activation="ReLU"):
        super().__init__(
            ("norm", batch_norm(in_channels)),
            ("activation", make_activation(activation)),
            ("conv", nn.Conv2D(in_channels, out_channels, kernel_size, stride=stride, padding=padding,
                               groups=groups, bias_attr=False)),
        )


def _regroup(x, outer: int, inner: int):
    n, c, h, w = x.shape
    return x.reshape([n, outer, inner, h, w]).transpose([0, 2, 1, 3, 4]).reshape([n, c, h, w])


def channel_shuffle(x, groups: int):
    """Interleave the outputs of ``groups`` grouped-conv groups: channel g*C/G + k goes to k*G + g."""
    return _regroup(x, groups, x.shape[1] // groups)


def channel_unshuffle(x, groups: int):
    """Inverse of ``channel_shuffle``: gather channels g, g+G, g+2G, ... into group g."""
    return _regroup(x, x.shape[1] // groups, groups)
