"""CondenseNetV2 (Yang et al., CVPR 2021) in Paddle, training and condensed forms.

Module names follow the official PyTorch code so official state dicts map key for key
(after Paddle's BatchNorm/Linear renames, see ``ppcdnv2.convert``).
"""
from __future__ import annotations


import paddle
import paddle.nn as nn

from ...layers import LGC, SFR, Conv, CondenseLGC, CondenseSFR, HS, SELayer, TrainConv
from .config import CondenseNetV2Config
from .trunk import DenseTrunkNet, dense_trunk


class SFRDenseLayer(nn.Layer):
    """LGC 1x1 bottleneck → grouped 3x3 → (SE) → SFR back onto the input; output concat(input', new)."""

    def __init__(self, in_channels: int, growth: int, cfg: CondenseNetV2Config, activation: str,
                 use_se: bool, form: str):
        super().__init__()
        width = cfg.bottleneck * growth
        if form == "train":
            self.conv_1 = LGC(in_channels, width, 1, groups=cfg.group_1x1,
                              condense_factor=cfg.condense_factor, activation=activation)
        else:
            self.conv_1 = CondenseLGC(in_channels * cfg.group_1x1 // cfg.condense_factor, width, 1,
                                      groups=cfg.group_1x1, activation=activation)
        # TrainConv: Conv with a faster CPU input gradient (same keys)
        self.conv_2 = (TrainConv if form == "train" else Conv)(width, growth, 3, padding=1, groups=cfg.group_3x3,
                                                               activation=activation)
        if use_se:
            self.se = SELayer(growth, reduction=1)
        self.use_se = use_se
        if form == "train":
            self.sfr = SFR(growth, in_channels, 1, groups=cfg.group_trans,
                           condense_factor=cfg.trans_factor, activation=activation)
        else:
            self.sfr = CondenseSFR(growth, in_channels, 1, groups=cfg.group_trans,
                                   activation=activation, condense_factor=cfg.trans_factor)

    def new_features(self, x):
        new = self.conv_2(self.conv_1(x))
        return self.se(new) if self.use_se else new

    def forward(self, x):
        new = self.new_features(x)
        return paddle.concat([self.sfr(new, residual=x), new], axis=1)


def condensed_block_inplace(block: nn.Sequential, x):
    """A converted-form dense block without re-copying the growing feature map (no-grad dygraph only).

    The block's output is allocated once; each layer reads its input channels straight from it (its
    LGC gathers channels below its own width only), scatter-adds its reactivation onto them and adds
    its new channels into their (zero) slot, both with in-place ``index_add_``. The functional path
    copies the whole map twice per layer (``index_add`` and ``concat``).
    """
    layers = list(block.children())
    if not all(isinstance(layer, SFRDenseLayer) for layer in layers):  # e.g. CondenseNet V1's blocks
        return block(x)
    n, width, h, w = x.shape
    total = width + sum(layer.conv_2.conv.weight.shape[0] for layer in layers)
    features = paddle.concat([x, paddle.zeros([n, total - width, h, w], x.dtype)], axis=1)
    for layer in layers:
        new = layer.new_features(features)
        layer.sfr.add_to_(features, new)
        grown = width + new.shape[1]
        features.index_add_(paddle.arange(width, grown, dtype="int64"), 1, new)
        width = grown
    return features


class CondenseNetV2(DenseTrunkNet):
    """CondenseNetV2 in either form.

    ``form="train"``: LGC/SFR layers with masks, condensed progressively by ``progress``.
    ``form="converted"``: the condensed deployment form (what ``ppcdnv2.condense`` returns).
    ``num_classes=0``: no classifier; the output is the ``fc → HS`` embedding (``fc_channel`` wide).
    ``features_only=True``: the output is the list of each dense block's output feature map
    (strides 4/8/16/32/32 for the ImageNet stem), for use as a detection/segmentation backbone.
    """

    def __init__(self, cfg: CondenseNetV2Config, form: str = "train", features_only: bool = False):
        super().__init__()
        self.cfg, self.form, self.features_only = cfg, form, features_only

        def dense_layer(block, in_channels, growth):
            activation = "HS" if block >= cfg.hs_start_block else "ReLU"
            return SFRDenseLayer(in_channels, growth, cfg, activation, block >= cfg.se_start_block, form)

        self.features, channels, self.stage_channels = dense_trunk(cfg, form, dense_layer)
        self.features.add_sublayer("se_last", SELayer(channels, reduction=cfg.last_se_reduction))
        self.num_features = channels
        self.fc = nn.Linear(channels, cfg.fc_channel)
        self.fc_act = HS()
        self.classifier = nn.Linear(cfg.fc_channel, cfg.num_classes) if cfg.num_classes > 0 else nn.Identity()
        self.init_weights_like_upstream()

    def run_block(self, block, x):
        return condensed_block_inplace(block, x) if _inplace_blocks(self) else block(x)

    def forward_head(self, features):
        out = self.fc_act(self.fc(paddle.flatten(features, 1)))
        return self.classifier(out)


def _inplace_blocks(model) -> bool:
    """Whether dense blocks may run in place: converted form, dygraph, gradients off."""
    return model.form == "converted" and paddle.in_dynamic_mode() and not paddle.is_grad_enabled()
