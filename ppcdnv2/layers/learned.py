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
from paddle.autograd import PyLayer

from .. import _cpu
from .common import Conv, batch_norm, make_activation


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
        if not _cpu._malloc_state["done"] and self.training and x.place.is_cpu_place():
            _cpu.keep_freed_memory()  # CPU training: stop page-faulting large tensors in every step
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


# --- the grouped 3x3 convolution of the training form ----------------------------------------------------
class _ConvInputGrad(PyLayer):
    """Identity on a convolution's output whose backward is the convolution's *input* gradient, as a conv.

    Paddle's CPU ``conv2d_grad`` gets the input gradient of a k×k convolution by a GEMM into a k²-times
    larger column buffer and ``col2im``, its slowest CPU kernel: 11% of a CondenseNetV2-A training step,
    ahead of any GEMM (with it: 0.48 → 0.40 s a step, 1 thread). The same gradient (stride 1, dilation 1)
    is the convolution of the output gradient with the flipped, group-transposed weight, which Paddle runs
    as a (fast, specialised) ``im2col`` of the output gradient, here 4x narrower than the input, and one
    GEMM. Same products, summed in another order.
    """

    @staticmethod
    def forward(ctx, out, x, weight, groups, padding):
        ctx.save_for_backward(weight)
        ctx.groups, ctx.padding = groups, padding
        return out.reshape(out.shape)  # Paddle takes this view as in place: ``out`` still feeds its grad node (dW)

    @staticmethod
    def backward(ctx, grad):
        (weight,) = ctx.saved_tensor()
        out_ch, per_group, kh, kw = weight.shape
        g = ctx.groups
        flipped = (weight.reshape([g, out_ch // g, per_group, kh, kw]).transpose([0, 2, 1, 3, 4])
                   .reshape([g * per_group, out_ch // g, kh, kw]).flip([2, 3]))
        pad = [kh - 1 - ctx.padding[0], kw - 1 - ctx.padding[1]]
        return grad, F.conv2d(grad, flipped, None, 1, pad, 1, g), None


def _input_grad_as_conv(x, conv: nn.Conv2D) -> bool:
    """Whether :class:`_ConvInputGrad` applies: eager CPU float32 with gradients to ``x`` and the weight (a
    frozen weight leaves nothing for the conv's own grad node), a k×k (k > 1) zero-padded NCHW convolution
    of stride 1 and dilation 1 whose padding leaves a valid transposed one."""
    k, pad = list(conv._kernel_size), conv._updated_padding
    return (paddle.in_dynamic_mode() and paddle.is_grad_enabled() and not x.stop_gradient
            and not conv.weight.stop_gradient
            and x.place.is_cpu_place() and x.dtype == paddle.float32 and conv._data_format == "NCHW"
            and conv._padding_mode == "zeros" and conv._padding_algorithm == "EXPLICIT"
            and list(conv._stride) == [1, 1] and list(conv._dilation) == [1, 1] and max(k) > 1
            and isinstance(pad, (list, tuple)) and len(pad) == 2 and all(0 <= p < kk for p, kk in zip(pad, k)))


def conv2d_train(x, conv: nn.Conv2D):
    """``conv(x)``, with the input gradient computed as a convolution where :func:`_input_grad_as_conv` says
    so (the weight gradient stays Paddle's own: ``conv`` sees ``x`` detached)."""
    if not _input_grad_as_conv(x, conv):
        return conv(x)
    return _ConvInputGrad.apply(conv(x.detach()), x, conv.weight, conv._groups, list(conv._updated_padding))


class TrainConv(Conv):
    """:class:`Conv` (BN → activation → conv, same sublayers and keys) for the training forms: its
    convolution's input gradient by :func:`conv2d_train`."""

    def forward(self, x):
        return conv2d_train(self.activation(self.norm(x)), self.conv)


LEARNED_LAYERS = (LGC, SFR)
