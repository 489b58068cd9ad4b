"""CondenseNet (V1; Huang, Liu, van der Maaten, Weinberger, CVPR 2018) in Paddle, training and condensed forms.

The V1 dense layer is the V2 one without SFR/SE: an LGC 1x1 bottleneck (BN-ReLU-[dropout]-conv,
pruned to 1/condense_factor of its inputs per group) then a grouped 3x3 conv, concatenated onto the
input. Transitions are a 2x2 average pool; the head is BN-ReLU-avgpool and one Linear classifier.
The condensed form swaps each LGC for a ``CondenseLGC`` and the classifier for a ``CondenseLinear``
that reads only the half of the features with the largest weight magnitude, as upstream's
``convert_model`` does. Module names follow ShichenLiu/CondenseNet so its state dicts map key for key.
"""
from __future__ import annotations

import paddle
import paddle.nn as nn

from ...layers import LGC, Conv, CondenseLGC, CondenseLinear, TrainConv
from .config import CondenseNetConfig
from .trunk import DenseTrunkNet, dense_trunk


class DenseLayer(nn.Layer):
    """LGC 1x1 (``conv_1``) → grouped 3x3 (``conv_2``); output concat(input, new)."""

    def __init__(self, in_channels: int, growth: int, cfg: CondenseNetConfig, form: str):
        super().__init__()
        width = cfg.bottleneck * growth
        if form == "train":
            self.conv_1 = LGC(in_channels, width, 1, groups=cfg.group_1x1, condense_factor=cfg.condense_factor,
                              dropout_rate=cfg.dropout_rate)
        else:
            self.conv_1 = CondenseLGC(in_channels * cfg.group_1x1 // cfg.condense_factor, width, 1,
                                      groups=cfg.group_1x1)
        self.conv_2 = (TrainConv if form == "train" else Conv)(width, growth, 3, padding=1, groups=cfg.group_3x3)

    def forward(self, x):
        return paddle.concat([x, self.conv_2(self.conv_1(x))], axis=1)


class CondenseNet(DenseTrunkNet):
    """CondenseNet (V1) in either form.

    ``form="train"``: LGC layers with masks, condensed progressively by ``progress``.
    ``form="converted"``: the condensed deployment form (``ppcdnv2.condense`` of a trained model).
    ``num_classes=0``: no classifier; the output is the pooled ``num_features`` embedding.
    ``features_only=True``: the output is the list of each dense block's output feature map.
    """

    def __init__(self, cfg: CondenseNetConfig, form: str = "train", features_only: bool = False):
        super().__init__()
        self.cfg, self.form, self.features_only = cfg, form, features_only
        self.features, channels, self.stage_channels = dense_trunk(
            cfg, form, lambda block, in_channels, growth: DenseLayer(in_channels, growth, cfg, form))
        self.num_features = channels
        if cfg.num_classes <= 0:
            self.classifier = nn.Identity()
        elif form == "train":
            self.classifier = nn.Linear(channels, cfg.num_classes)
        else:
            self.classifier = CondenseLinear(channels, cfg.num_classes, keep=cfg.classifier_keep)
        self.init_weights_like_upstream()

    def init_weights_like_upstream(self):
        """Upstream's init: V2's (kaiming-normal fan_out convs, BN 1/0, torch-default linears), zero biases."""
        super().init_weights_like_upstream()
        for layer in self.sublayers():
            if isinstance(layer, nn.Linear):
                layer.bias.set_value(paddle.zeros_like(layer.bias))

    def forward_head(self, features):
        return self.classifier(paddle.flatten(features, 1))
