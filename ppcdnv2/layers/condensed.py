"""Condensed (deployment) form of the learned layers: real grouped convolutions plus index buffers.

CondenseLGC gathers the input channels its groups kept (``index``, int64 [C_in']), runs a grouped
convolution and shuffles the group outputs back to the original channel order.

CondenseSFR runs a grouped convolution over the growth channels and adds each output channel onto
one channel of the features it reactivates. Upstream stores that mapping as a dense C'×C 0/1 matrix
applied by matmul (most of the model's executed work); here ``index`` is the int64 target channel of
each conv output and the add is a scatter-add (targets repeat across groups, some channels get none).
``dense_index_to_targets`` / ``targets_to_dense_index`` convert between the two layouts.

Channel (un)shuffles use Paddle's fused ``channel_shuffle`` kernel: the reshape/transpose/reshape
formulation costs about as much as the convolutions themselves on CPU (a strided copy ~100x slower).

``portable_ops()`` makes a trace (``paddle.jit``) use only ops ONNX has, for ``paddle2onnx``, which
lacks ``channel_shuffle`` and ``index_add``: the shuffle becomes a channel gather, and SFR's grouped
conv + unshuffle + scatter-add is folded into one dense 1x1 conv onto all input channels (its weight
computed in the graph from the same parameters, so the state dict is unchanged; more MACs, no scatter).
"""
from __future__ import annotations

import contextlib

import numpy as np
import paddle
import paddle.nn as nn
import paddle.nn.functional as F

from .common import batch_norm, make_activation


_PORTABLE = False


@contextlib.contextmanager
def portable_ops():
    """While active, condensed layers trace to ONNX-convertible ops (see the module docstring)."""
    global _PORTABLE
    previous, _PORTABLE = _PORTABLE, True
    try:
        yield
    finally:
        _PORTABLE = previous


def _shuffle_order(channels: int, groups: int):
    """Gather order equal to ``channel_shuffle``: new channel k*G + g is old channel g*C/G + k."""
    return paddle.to_tensor(np.arange(channels).reshape(groups, channels // groups).T.reshape(-1))


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
        if _PORTABLE:
            return paddle.index_select(x, _shuffle_order(self.out_channels, self.groups), axis=1)
        return F.channel_shuffle(x, self.groups)  # = common.channel_shuffle, as one kernel


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

    def reactivation(self, x):
        """The conv outputs, [N, conv_channels, H, W]; output k is added onto feature channel ``index[k]``."""
        x = self.activation(self.norm(x))
        return self.conv(F.channel_shuffle(x, x.shape[1] // self.groups))  # = common.channel_unshuffle

    def add_to_(self, features, x):
        """In place: scatter-add the reactivation of ``x`` onto ``features`` (no grad; any width > max index)."""
        return features.index_add_(self.index, 1, self.reactivation(x))

    def folded_weight(self):
        """[out_channels, in_channels, 1, 1]: unshuffle, grouped conv and scatter-add as one dense 1x1 conv.

        Conv row r of group g reads original input channel i*G + g as its i-th input; its weight row,
        spread to those columns, is summed into row ``index[r]`` (duplicates add up like the scatter).
        """
        g, rows = self.groups, self.conv_channels
        per_group = self.in_channels // g
        w = self.conv.weight.reshape([g, rows // g, per_group, 1])
        spread = (w * paddle.eye(g, dtype=w.dtype).reshape([g, 1, 1, g])).reshape([rows, self.in_channels])
        targets = F.one_hot(self.index, self.out_channels).astype(w.dtype)  # [rows, out]
        return paddle.matmul(targets, spread, transpose_x=True).reshape([self.out_channels, self.in_channels, 1, 1])

    def forward(self, x, residual=None):
        """The reactivation features, added onto ``residual`` (zeros when None) in one scatter-add."""
        if _PORTABLE:
            if self.conv._kernel_size != [1, 1] or self.conv._stride != [1, 1]:
                raise NotImplementedError("portable_ops() folds 1x1 stride-1 SFR convolutions only")
            x = F.conv2d(self.activation(self.norm(x)), self.folded_weight())
            return x if residual is None else residual + x
        x = self.reactivation(x)
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


class CondenseLinear(nn.Layer):
    """Condensed classifier of CondenseNet (V1): a Linear over the ``index``-selected input features.

    Upstream's conversion keeps ``int(in_features * keep)`` features (keep = 0.5), those whose weight
    columns have the largest L1 norm, listed in ascending order of that norm.
    """

    def __init__(self, in_features: int, out_features: int, keep: float = 0.5):
        super().__init__()
        self.in_features, self.out_features = int(in_features * keep), out_features
        self.linear = nn.Linear(self.in_features, out_features)
        self.register_buffer("index", paddle.arange(self.in_features, dtype="int64"))

    def forward(self, x):
        return self.linear(paddle.index_select(x, self.index, axis=1))


def condense_linear_index(weight_out_in, kept: int) -> np.ndarray:
    """The ``kept`` features a ``CondenseLinear`` reads from a dense [out, in] weight: upstream's rule and order."""
    w = np.asarray(weight_out_in)
    if not 0 < kept <= w.shape[1]:
        raise ValueError(f"cannot keep {kept} of {w.shape[1]} linear input features")
    order = np.argsort(np.abs(w).sum(0), kind="stable")
    return order[w.shape[1] - kept:].astype(np.int64)
