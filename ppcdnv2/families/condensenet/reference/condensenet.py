"""PyTorch reference of CondenseNet (V1, ShichenLiu/CondenseNet), written from its documented behaviour.

Module names and buffers follow upstream (``features.init_conv``, ``denseblock_i.denselayer_j.conv_1``
as ``LearnedGroupConv`` with ``_mask/_count/_stage``, ``conv_2`` as ``Conv``, ``norm_last``,
``classifier``; converted: ``CondenseConv`` with ``index``, ``classifier`` as ``CondenseLinear`` with
``linear`` and ``index``), so its state dicts have the released checkpoints' keys.

Upstream semantics kept on purpose, since this is what our Paddle port is checked against:
``LearnedGroupConv`` drops at most one stage per forward (and then jumps ``_stage`` to the target),
ranking channels by ascending L1 weight including the already-pruned ones; ``convert_model`` keeps
each group's surviving inputs in ascending order and the classifier's top half of input features
by L1 weight, in ascending order of that weight. Upstream's class-global ``progress`` becomes a
per-layer attribute set by ``CondenseNet.forward(x, progress)``.
"""
from __future__ import annotations

import math
from typing import Tuple

from .common import Conv, dense_trunk  # first: clear error without torch
from ....torch_tools import state_dict_numpy
from .condensenetv2 import LGC, CondenseLGC, _condense_lgc, upstream_stage

import torch
import torch.nn as nn


class LearnedGroupConv(LGC):
    """Upstream V1's LGC: V2's (same buffers, ranking and one-stage-per-call drops) minus its progress window."""

    @torch.no_grad()
    def _check_drop(self):
        # V1 has no ``progress < 0.5005`` window: any progress past 0.5 aims at the last stage
        stage = upstream_stage(min(self.progress, 0.5), self.condense_factor)
        if bool((self._stage >= stage).all()):
            return
        self._stage.fill_(stage)
        self._dropping(self.in_channels // self.condense_factor)


class CondenseConv(CondenseLGC):
    """Upstream V1's converted LGC: gather ``index`` channels → BN → ReLU → grouped conv → shuffle (as V2's)."""


class CondenseLinear(nn.Module):
    """Upstream's converted classifier: ``linear`` over the ``index``-selected half of the features."""

    def __init__(self, in_features, out_features, drop_rate=0.5):
        super().__init__()
        self.in_features, self.out_features = int(in_features * drop_rate), out_features
        self.linear = nn.Linear(self.in_features, out_features)
        self.register_buffer("index", torch.zeros(self.in_features, dtype=torch.long))

    def forward(self, x):
        return self.linear(torch.index_select(x, 1, self.index))


class _DenseLayer(nn.Module):
    def __init__(self, in_channels, growth, cfg, converted):
        super().__init__()
        width = cfg.bottleneck * growth
        if converted:
            self.conv_1 = CondenseConv(in_channels * cfg.group_1x1 // cfg.condense_factor, width, 1,
                                       groups=cfg.group_1x1)
        else:
            self.conv_1 = LearnedGroupConv(in_channels, width, 1, groups=cfg.group_1x1,
                                           condense_factor=cfg.condense_factor, dropout_rate=cfg.dropout_rate)
        self.conv_2 = Conv(width, growth, 3, padding=1, groups=cfg.group_3x3)

    def forward(self, x):
        return torch.cat([x, self.conv_2(self.conv_1(x))], 1)


class CondenseNet(nn.Module):
    """Upstream ``models/condensenet.py`` (``converted=False``) or ``models/condensenet_converted.py``.

    ``cfg`` is a ``ppcdnv2.families.condensenet.CondenseNetConfig`` (or anything with its fields).
    """

    def __init__(self, cfg, converted: bool = False):
        super().__init__()
        self.cfg, self.converted = cfg, converted
        self.features, channels = dense_trunk(
            cfg, lambda block, in_channels, growth: _DenseLayer(in_channels, growth, cfg, converted))
        self.num_features = channels
        if converted:
            self.classifier = CondenseLinear(channels, cfg.num_classes, cfg.classifier_keep)
        else:
            self.classifier = nn.Linear(channels, cfg.num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                n = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
                m.weight.data.normal_(0, math.sqrt(2.0 / n))
            elif isinstance(m, nn.BatchNorm2d):
                m.weight.data.fill_(1)
                m.bias.data.zero_()
            elif isinstance(m, nn.Linear):
                m.bias.data.zero_()

    def learned_layers(self):
        return [m for m in self.modules() if isinstance(m, LearnedGroupConv)]

    def forward(self, x, progress=None):
        if progress is not None:
            for m in self.learned_layers():
                m.progress = float(progress)
        return self.classifier(self.features(x).flatten(1))


@torch.no_grad()
def convert_model(model: CondenseNet) -> CondenseNet:
    """Upstream ``utils.convert_model`` as a new model: LGC → CondenseConv, classifier → CondenseLinear."""
    if model.converted:
        raise ValueError("model is already converted")
    out = CondenseNet(model.cfg, converted=True)
    src_modules = dict(model.named_modules())
    for name, dst in out.named_modules():
        src = src_modules.get(name)
        if isinstance(dst, CondenseConv):
            _condense_lgc(src, dst, name)
        elif isinstance(dst, CondenseLinear):
            _, order = src.weight.abs().sum(0).sort()
            index = order[src.in_features - dst.in_features:]
            dst.index.copy_(index)
            dst.linear.weight.copy_(src.weight[:, index])
            dst.linear.bias.copy_(src.bias)
        elif isinstance(dst, (nn.Conv2d, nn.BatchNorm2d)) and not isinstance(src_modules.get(name.rpartition(".")[0]),
                                                                            LearnedGroupConv):
            dst.load_state_dict(src.state_dict())
    out.train(model.training)
    return out


def upstream_measure(model: nn.Module, size: int) -> Tuple[float, float]:
    """Upstream ``utils.measure_model`` rules by hooks: (ops, params) of one ``size``² image."""
    counts = [0.0, 0.0]

    def params(m):
        return sum(p.numel() for p in m.parameters())

    def hook(m, inputs, output):
        x = inputs[0]
        if isinstance(m, LearnedGroupConv):
            hw = output.shape[2] * output.shape[3]
            ops = x.numel() + m.conv.weight.numel() * hw / m.condense_factor  # ReLU + conv / C (BN free)
            counts[0] += ops
            counts[1] += params(m.norm) + m.conv.weight.numel() / m.condense_factor
        elif isinstance(m, nn.Conv2d):
            counts[0] += m.weight.numel() * output.shape[2] * output.shape[3]
            counts[1] += params(m)
        elif isinstance(m, nn.ReLU):
            counts[0] += x.numel()
        elif isinstance(m, nn.AvgPool2d):
            counts[0] += output.numel() * m.kernel_size * m.kernel_size
        elif isinstance(m, nn.Linear):
            counts[0] += m.weight.numel() + m.bias.numel()
            counts[1] += params(m)
        elif isinstance(m, nn.BatchNorm2d):
            counts[1] += params(m)

    learned = [m for m in model.modules() if isinstance(m, LearnedGroupConv)]
    inside = {id(c) for m in learned for c in m.modules() if c is not m}
    handles = [m.register_forward_hook(hook) for m in model.modules()
               if id(m) not in inside and (isinstance(m, LearnedGroupConv) or not list(m.children()))]
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(1, 3, size, size))
    finally:
        for h in handles:
            h.remove()
    return counts[0], counts[1]


__all__ = ["LearnedGroupConv", "CondenseConv", "CondenseLinear", "CondenseNet", "convert_model",
           "upstream_measure", "state_dict_numpy"]
