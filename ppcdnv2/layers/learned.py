"""Training-form layers: learned group convolution (LGC) and sparse feature reactivation (SFR).

Both are a dense convolution multiplied by a 0/1 ``_mask`` that is pruned in stages as training
progresses. LGC prunes *input* channels per output group (groups are the output channels
``g::groups``); SFR is its transpose and prunes *output* channels per input group (input channels
``g::groups``). After ``factor - 1`` stages every group keeps exactly ``1/factor`` of the connections,
which is what ``ppcdnv2.condense`` turns into grouped convolutions.

Deviation from upstream, on purpose: upstream drops at most one stage per forward call and only
while ``progress < 0.5005``, so a run whose steps straddle that window (or skip a stage) ends with
masks denser than ``1/factor`` and cannot be condensed. Here every forward catches up on all stages
that ``progress`` has passed, one pruning step per stage (so a schedule that upstream follows stage
by stage gives identical masks), and ``progress >= 0.5`` always means the final stage.
"""
from __future__ import annotations

import paddle
import paddle.nn as nn
import paddle.nn.functional as F

from .common import batch_norm, make_activation


def stage_for_progress(progress: float, factor: int) -> int:
    """The condensation stage reached at training ``progress`` in [0, 1] (upstream's thresholds)."""
    for stage in range(factor - 1):
        if progress * 2 < (stage + 1) / (factor - 1):
            return stage
    return factor - 1


class _LearnedConv(nn.Layer):
    """Shared machinery of LGC and SFR; subclasses say which axis is pruned within which groups."""

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1, groups=1,
                 condense_factor=None, dropout_rate=0.0, activation="ReLU"):
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.groups = groups
        self.condense_factor = groups if condense_factor is None else condense_factor
        self.activation_type = activation
        self.stride, self.padding, self.dilation = stride, padding, dilation
        self.norm = batch_norm(in_channels)
        self.activation = make_activation(activation)
        self.dropout_rate = dropout_rate
        if dropout_rate > 0:
            self.drop = nn.Dropout(dropout_rate)
        self.conv = nn.Conv2D(in_channels, out_channels, kernel_size, stride=stride, padding=padding,
                              dilation=dilation, bias_attr=False)
        self.register_buffer("_count", paddle.zeros([1], "float32"))
        self.register_buffer("_stage", paddle.zeros([1], "float32"))
        self.register_buffer("_mask", paddle.ones(self.conv.weight.shape, "float32"))
        self.progress = 0.0
        self._check_args()

    def _check_args(self):
        if self.in_channels % self.groups or self.out_channels % self.groups:
            raise ValueError(f"{type(self).__name__}: channels {self.in_channels}->{self.out_channels} "
                             f"are not divisible by groups={self.groups}")

    # --- condensation state -------------------------------------------------------------
    @property
    def stage(self) -> int:
        return int(self._stage.item())

    @property
    def count(self) -> int:
        return int(self._count.item())

    @property
    def mask(self):
        return self._mask

    @property
    def fully_condensed(self) -> bool:
        return self.stage >= self.condense_factor - 1

    def _check_drop(self):
        target = stage_for_progress(self.progress, self.condense_factor)
        if target == 0:
            return
        stage = self.stage
        if stage >= target:
            return
        with paddle.no_grad():
            for _ in range(stage, target):
                self._drop_one_stage()
            self._stage.set_value(paddle.full([1], float(target), "float32"))

    def _drop_one_stage(self):
        delta = self._pruned_channels // self.condense_factor
        # importance[g, c]: L1 weight of channel c (input for LGC, output for SFR) seen by group g
        weight = (self.conv.weight * self._mask).abs().sum([2, 3])
        importance = self._group_importance(weight)
        kept = self._group_pattern(self._mask[:, :, 0, 0])
        # rank only channels still kept; pruned ones sort last and are never picked again
        ranked = paddle.where(kept, importance, paddle.full_like(importance, float("inf")))
        order = paddle.argsort(ranked, axis=1, stable=True)[:, :delta]
        drop = paddle.zeros_like(importance).put_along_axis(order, paddle.ones_like(order, "float32"), 1)
        self._mask.set_value(self._mask * (1.0 - self._expand(drop)).unsqueeze([2, 3]))
        self._count.set_value(self._count + float(delta))

    @property
    def lasso_loss(self):
        """Group-lasso penalty of CondenseNet, zero once the last stage is reached."""
        if self.stage >= self.groups - 1:
            return paddle.zeros([], self.conv.weight.dtype)
        weight = (self.conv.weight * self._mask).pow(2).sum([2, 3])
        return self._group_importance(weight).clip(min=1e-6).sqrt().sum()

    def forward(self, x, residual=None):
        self._check_drop()
        x = self.activation(self.norm(x))
        if self.dropout_rate > 0:
            x = self.drop(x)
        out = F.conv2d(x, self.conv.weight * self._mask, None, self.stride, self.padding, self.dilation)
        return out if residual is None else residual + out


class LGC(_LearnedConv):
    """Learned group convolution: each output group learns which input channels it keeps."""

    def _check_args(self):
        super()._check_args()
        if self.in_channels % self.condense_factor:
            raise ValueError(f"LGC: in_channels={self.in_channels} not divisible by "
                             f"condense_factor={self.condense_factor}")

    @property
    def _pruned_channels(self):
        return self.in_channels

    def _group_importance(self, weight):
        # weight [out, in]; group g owns output rows g, g+G, ... → sum them: [G, in]
        return weight.reshape([self.out_channels // self.groups, self.groups, self.in_channels]).sum(0)

    def _group_pattern(self, mask2d):
        return mask2d[: self.groups] > 0  # row g is the first row of group g

    def _expand(self, drop):
        # drop [G, in] → per row r (group r % G): [out, in]
        return paddle.tile(drop, [self.out_channels // self.groups, 1])


class SFR(_LearnedConv):
    """Sparse feature reactivation: each input group learns which output channels it updates."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # A fresh SFR adds nothing to the features it reactivates (the network's init overrides this).
        self.norm.weight.set_value(paddle.zeros_like(self.norm.weight))

    def _check_args(self):
        super()._check_args()
        if self.out_channels % self.condense_factor:
            raise ValueError(f"SFR: out_channels={self.out_channels} not divisible by "
                             f"condense_factor={self.condense_factor}")

    @property
    def _pruned_channels(self):
        return self.out_channels

    def _group_importance(self, weight):
        # weight [out, in]; group g owns input columns g, g+G, ... → [G, out]
        return weight.reshape([self.out_channels, self.in_channels // self.groups, self.groups]).sum(1).t()

    def _group_pattern(self, mask2d):
        return mask2d[:, : self.groups].t() > 0  # column g is the first column of group g

    def _expand(self, drop):
        # drop [G, out] → per column c (group c % G): [out, in]
        return paddle.tile(drop.t(), [1, self.in_channels // self.groups])


LEARNED_LAYERS = (LGC, SFR)
