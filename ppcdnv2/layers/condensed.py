"""Condensed (deployment) form of the learned layers: real grouped convolutions plus index buffers.

CondenseLGC gathers the input channels its groups kept (``index``, int64 [C_in']), runs a grouped
convolution and shuffles the group outputs back to the original channel order.

CondenseSFR runs a grouped convolution over the growth channels and adds each output channel onto
one channel of the features it reactivates. Upstream stores that mapping as a dense C'×C 0/1 matrix
applied by matmul (most of the model's executed work); here ``index`` is the int64 target channel of
each conv output and the add is a scatter-add (targets repeat across groups, some channels get none).
``dense_index_to_targets`` / ``targets_to_dense_index`` convert between the two layouts.
"""
from __future__ import annotations

import numpy as np
import paddle
import paddle.nn as nn

from .common import batch_norm, channel_shuffle, channel_unshuffle, make_activation


class CondenseLGC(nn.Layer):
    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, groups=1, activation="ReLU"):
        super().__init__()
        self.in_channels, self.out_channels, self.groups = in_channels, out_channels, groups
        self.norm = batch_norm(in_channels)
        self.activation = make_activation(activation)
        self.conv = nn.Conv2D(in_channels, out_channels, kernel_size, stride=stride, padding=padding,
                              groups=groups, bias_attr=False)
        self.register_buffer("index", paddle.zeros([in_channels], "int64"))

    def forward(self, x):
        x = paddle.index_select(x, self.index, axis=1)
        x = self.conv(self.activation(self.norm(x)))
        return channel_shuffle(x, self.groups)


class CondenseSFR(nn.Layer):
    """``in_channels`` growth channels → ``conv_channels`` outputs scattered onto ``out_channels`` features."""

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, groups=1,
                 activation="ReLU", condense_factor=None):
        super().__init__()
        factor = groups if condense_factor is None else condense_factor
        self.in_channels, self.out_channels, self.groups = in_channels, out_channels, groups
        self.conv_channels = out_channels * groups // factor
        self.norm = batch_norm(in_channels)
        self.activation = make_activation(activation)
        self.conv = nn.Conv2D(in_channels, self.conv_channels, kernel_size, stride=stride, padding=padding,
                              groups=groups, bias_attr=False)
        self.register_buffer("index", paddle.zeros([self.conv_channels], "int64"))

    def forward(self, x, residual=None):
        """The reactivation features, added onto ``residual`` (zeros when None) in one scatter-add."""
        x = self.conv(channel_unshuffle(self.activation(self.norm(x)), self.groups))
        if residual is None:
            n, _, h, w = x.shape
            residual = paddle.zeros([n, self.out_channels, h, w], x.dtype)
        return paddle.index_add(residual, self.index, 1, x)


def dense_index_to_targets(matrix, name: str = "index") -> np.ndarray:
    """Official C'×C 0/1 SFR matrix → int64 target channel per row; rejects anything else."""
    m = np.asarray(matrix)
    if m.ndim != 2:
        raise ValueError(f"{name}: expected a 2-D 0/1 matrix, got shape {m.shape}")
    ones = m == 1
    if not np.all(ones | (m == 0)):
        raise ValueError(f"{name}: SFR index matrix has entries other than 0 and 1")
    per_row = ones.sum(1)
    if not np.all(per_row == 1):
        bad = int(np.flatnonzero(per_row != 1)[0])
        raise ValueError(f"{name}: SFR index row {bad} has {int(per_row[bad])} ones, expected exactly 1")
    return ones.argmax(1).astype(np.int64)


def targets_to_dense_index(targets, out_channels: int) -> np.ndarray:
    """int64 targets [C'] → the official float32 [C', out_channels] 0/1 matrix."""
    t = np.asarray(targets, dtype=np.int64)
    m = np.zeros((t.shape[0], out_channels), np.float32)
    m[np.arange(t.shape[0]), t] = 1.0
    return m
