"""ReXNet (ReXNetV1 and ReXNetV1_lite of clovaai/rexnet) in PaddlePaddle.

Layer names follow the upstream PyTorch files so that an official state dict maps key for key after
the generic torch->Paddle renames (BatchNorm ``running_mean``/``running_var`` -> ``_mean``/``_variance``,
``num_batches_tracked`` dropped); no Linear layer exists anywhere (SE and classifiers are 1x1 convs), so
no weight is transposed. See :mod:`.reference` for the layout; widths come from
:func:`~.config.channel_plan`.

Numerics as upstream: SiLU is ``x * sigmoid(x)`` (Paddle's ``silu``), SE uses ReLU inside and a sigmoid
gate, ReLU6 follows the depthwise conv/SE in ReXNetV1, BatchNorm eps 1e-5 and momentum 0.9 in Paddle's
convention (= torch 0.1). The residual is added to the first ``in_ch`` channels only (the block widens).

Heads:

* ``num_classes=0``: no ``output`` head; ``forward`` returns pooled penultimate features ``[B, pen_ch]``
  (``self.num_features``). For lite this also drops the 1024-wide hidden layer, which upstream places
  in the head.
* ``features_only=True``: ``features`` holds the stem and the blocks only (the penultimate conv, pool and
  head are not built, so the keys are a prefix-compatible subset of upstream's) and ``forward`` returns
  five maps at strides 2, 4, 8, 16, 32: the output of the last block at each resolution (the blocks of
  :attr:`ChannelPlan.feature_blocks`; the same maps as timm's ``features_only``). ``self.feature_info``
  lists their channels and strides.

Initialisation (upstream relies on torch defaults; ours is the usual one for mobile nets): conv weights
``N(0, sqrt(2 / fan_out))`` with ``fan_out = k*k*C_out/groups``, conv biases 0, BatchNorm 1/0, the
classifier conv ``N(0, 0.01)`` with bias 0.
"""
from __future__ import annotations

import math
from typing import Dict, List, Optional, Union

import paddle
from paddle import nn

from .config import Block, ReXNetConfig, channel_plan

__all__ = ["ReXNet", "SE", "LinearBottleneck"]

_BN = dict(momentum=0.9, epsilon=1e-5)


def _conv_bn(layers: List[nn.Layer], cin: int, cout: int, k: int = 1, s: int = 1, groups: int = 1,
             act: Optional[nn.Layer] = None) -> None:
    layers += [nn.Conv2D(cin, cout, k, s, k // 2, groups=groups, bias_attr=False), nn.BatchNorm2D(cout, **_BN)]
    if act is not None:
        layers.append(act)


class SE(nn.Layer):
    """Squeeze-excitation: pool, 1x1 conv, BN, ReLU, 1x1 conv, sigmoid gate."""

    def __init__(self, channels: int, mid: int):
        super().__init__()
        self.avg_pool = nn.AdaptiveAvgPool2D(1)
        self.fc = nn.Sequential(nn.Conv2D(channels, mid, 1), nn.BatchNorm2D(mid, **_BN), nn.ReLU(),
                                nn.Conv2D(mid, channels, 1), nn.Sigmoid())

    def forward(self, x):
        return x * self.fc(self.avg_pool(x))


class LinearBottleneck(nn.Layer):
    """Inverted residual block; layers live in ``out`` to keep upstream's key indices."""

    def __init__(self, b: Block, lite: bool):
        super().__init__()
        self.use_shortcut = b.use_shortcut
        self.in_channels, self.out_channels = b.in_ch, b.out_ch
        layers: List[nn.Layer] = []
        if b.t != 1:
            _conv_bn(layers, b.in_ch, b.dw_ch, act=nn.ReLU6() if lite else nn.Silu())
        if lite:
            _conv_bn(layers, b.dw_ch, b.dw_ch, b.kernel, b.stride, b.dw_ch, act=nn.ReLU6())
        else:
            _conv_bn(layers, b.dw_ch, b.dw_ch, b.kernel, b.stride, b.dw_ch)
            if b.use_se:
                layers.append(SE(b.dw_ch, b.se_ch))
            layers.append(nn.ReLU6())  # upstream keeps this ReLU6 whether or not the block has SE
        _conv_bn(layers, b.dw_ch, b.out_ch)
        self.out = nn.Sequential(*layers)

    def forward(self, x):
        y = self.out(x)
        if not self.use_shortcut:
            return y
        c = self.in_channels
        if c == self.out_channels:
            return y + x
        return paddle.concat([y[:, :c] + x, y[:, c:]], axis=1)


class ReXNet(nn.Layer):
    """ReXNetV1 (``cfg.variant == "rexnet"``) or ReXNetV1_lite (``"lite"``) in upstream layout.

    ``form`` exists for uniformity with the package's other families; ReXNet has a single form.
    """

    def __init__(self, cfg: ReXNetConfig, form: str = "train", features_only: bool = False):
        super().__init__()
        if form != "train":
            raise ValueError(f"ReXNet has only the 'train' form, got form={form!r}")
        self.cfg = cfg
        self.form = "train"
        self.features_only = bool(features_only)
        self.lite = cfg.variant == "lite"
        plan = channel_plan(cfg)
        self.plan = plan
        act = nn.ReLU6 if self.lite else nn.Silu

        feats: List[nn.Layer] = []
        _conv_bn(feats, 3, plan.stem_ch, 3, 2, act=act())
        feats += [LinearBottleneck(b, lite=self.lite) for b in plan.blocks]
        self._first_block = 3  # stem = conv, BN, act
        if self.features_only:
            self.features = nn.Sequential(*feats)
            take = plan.feature_blocks
            self._take = {self._first_block + i for i in take}
            self.feature_info: List[Dict[str, int]] = []
            stride = 2
            for i, b in enumerate(plan.blocks):
                stride *= b.stride
                if i in take:
                    self.feature_info.append({"num_chs": b.out_ch, "reduction": stride,
                                              "index": self._first_block + i})
            self.num_features = plan.blocks[-1].out_ch
            self._init_weights()
            return

        _conv_bn(feats, plan.blocks[-1].out_ch, plan.pen_ch, act=act())
        if not self.lite:
            feats.append(nn.AdaptiveAvgPool2D(1))  # ReXNetV1 keeps the pool inside ``features``
        self.features = nn.Sequential(*feats)
        if self.lite:
            self.avgpool = nn.AdaptiveAvgPool2D(1)
        self.num_features = plan.pen_ch
        if cfg.num_classes > 0:
            if self.lite:
                hid = plan.head_hidden
                self.output = nn.Sequential(nn.Conv2D(plan.pen_ch, hid, 1), nn.BatchNorm2D(hid, **_BN),
                                            nn.ReLU6(), nn.Dropout(cfg.dropout),
                                            nn.Conv2D(hid, cfg.num_classes, 1))
            else:
                self.output = nn.Sequential(nn.Dropout(cfg.dropout), nn.Conv2D(plan.pen_ch, cfg.num_classes, 1))
        else:
            self.output = None
        self._init_weights()

    def _init_weights(self) -> None:
        classifier = None
        if getattr(self, "output", None) is not None:
            classifier = self.output[len(self.output) - 1]
        for m in self.sublayers():
            if isinstance(m, nn.Conv2D):
                if m is classifier:
                    m.weight.set_value(paddle.normal(0.0, 0.01, m.weight.shape).astype(m.weight.dtype))
                else:
                    out_c, _, kh, kw = m.weight.shape
                    fan_out = kh * kw * out_c // m._groups
                    std = math.sqrt(2.0 / fan_out)
                    m.weight.set_value(paddle.normal(0.0, std, m.weight.shape).astype(m.weight.dtype))
                if m.bias is not None:
                    m.bias.set_value(paddle.zeros_like(m.bias))
            elif isinstance(m, nn.BatchNorm2D):
                m.weight.set_value(paddle.ones_like(m.weight))
                m.bias.set_value(paddle.zeros_like(m.bias))

    def forward_features(self, x) -> Union[paddle.Tensor, List[paddle.Tensor]]:
        """Pooled features ``[B, num_features]``, or the list of stage maps with ``features_only``."""
        if self.features_only:
            maps = []
            for i, layer in enumerate(self.features):
                x = layer(x)
                if i in self._take:
                    maps.append(x)
            return maps
        x = self.features(x)
        if self.lite:
            x = self.avgpool(x)
        return x

    def forward(self, x):
        x = self.forward_features(x)
        if self.features_only:
            return x
        if self.output is not None:
            x = self.output(x)
        return paddle.flatten(x, 1)  # never squeeze: batch 1 stays [1, C]
