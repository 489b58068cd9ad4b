"""CondenseNetV2 (Yang et al., CVPR 2021) in Paddle, training and condensed forms.

Module names follow the official PyTorch code so official state dicts map key for key
(after Paddle's BatchNorm/Linear renames, see ``ppcdnv2.convert``).
"""
from __future__ import annotations

import math
from typing import List, Optional, Union

import paddle
import paddle.nn as nn

from ..layers import LGC, SFR, Conv, CondenseLGC, CondenseSFR, HS, SELayer, LEARNED_LAYERS, batch_norm
from .config import CondenseNetV2Config, preset
from .registry import register_model

FORMS = ("train", "converted")


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
        self.conv_2 = Conv(width, growth, 3, padding=1, groups=cfg.group_3x3, activation=activation)
        if use_se:
            self.se = SELayer(growth, reduction=1)
        self.use_se = use_se
        if form == "train":
            self.sfr = SFR(growth, in_channels, 1, groups=cfg.group_trans,
                           condense_factor=cfg.trans_factor, activation=activation)
        else:
            self.sfr = CondenseSFR(growth, in_channels, 1, groups=cfg.group_trans,
                                   activation=activation, condense_factor=cfg.trans_factor)

    def forward(self, x):
        new = self.conv_2(self.conv_1(x))
        if self.use_se:
            new = self.se(new)
        return paddle.concat([self.sfr(new, residual=x), new], axis=1)


class Transition(nn.Layer):
    def __init__(self):
        super().__init__()
        self.pool = nn.AvgPool2D(2, 2)

    def forward(self, x):
        return self.pool(x)


class CondenseNetV2(nn.Layer):
    """CondenseNetV2 in either form.

    ``form="train"``: LGC/SFR layers with masks, condensed progressively by ``progress``.
    ``form="converted"``: the condensed deployment form (what ``ppcdnv2.condense`` returns).
    ``num_classes=0``: no classifier; the output is the ``fc → HS`` embedding (``fc_channel`` wide).
    ``features_only=True``: the output is the list of each dense block's output feature map
    (strides 4/8/16/32/32 for the ImageNet stem), for use as a detection/segmentation backbone.
    """

    def __init__(self, cfg: CondenseNetV2Config, form: str = "train", features_only: bool = False):
        super().__init__()
        if form not in FORMS:
            raise ValueError(f"form must be one of {FORMS}, got {form!r}")
        self.cfg, self.form, self.features_only = cfg, form, features_only
        self.features = nn.Sequential()
        channels = 2 * cfg.growth[0]
        self.features.add_sublayer("init_conv", nn.Conv2D(3, channels, 3, stride=cfg.init_stride, padding=1,
                                                          bias_attr=False))
        self.stage_channels: List[int] = []
        last = len(cfg.stages) - 1
        for i, (depth, growth) in enumerate(zip(cfg.stages, cfg.growth)):
            activation = "HS" if i >= cfg.hs_start_block else "ReLU"
            block = nn.Sequential()
            for j in range(depth):
                block.add_sublayer(f"denselayer_{j + 1}", SFRDenseLayer(
                    channels + j * growth, growth, cfg, activation, i >= cfg.se_start_block, form))
            self.features.add_sublayer(f"denseblock_{i + 1}", block)
            channels += depth * growth
            self.stage_channels.append(channels)
            if i != last:
                self.features.add_sublayer(f"transition_{i + 1}", Transition())
        self.features.add_sublayer("norm_last", batch_norm(channels))
        self.features.add_sublayer("relu_last", nn.ReLU())
        self.features.add_sublayer("pool_last", nn.AvgPool2D(cfg.pool_size))
        self.features.add_sublayer("se_last", SELayer(channels, reduction=cfg.last_se_reduction))
        self.num_features = channels
        self.fc = nn.Linear(channels, cfg.fc_channel)
        self.fc_act = HS()
        self.classifier = nn.Linear(cfg.fc_channel, cfg.num_classes) if cfg.num_classes > 0 else nn.Identity()
        self._init_weights()

    def _init_weights(self):
        """Upstream's init: kaiming-normal (fan_out) convs, every BN (SFR's too) to 1/0, torch-default linears."""
        for layer in self.sublayers():
            if isinstance(layer, nn.Conv2D):
                w = layer.weight
                fan_out = w.shape[0] * w.shape[2] * w.shape[3]
                w.set_value(paddle.normal(0.0, math.sqrt(2.0 / fan_out), w.shape))
            elif isinstance(layer, nn.BatchNorm2D):
                layer.weight.set_value(paddle.ones_like(layer.weight))
                layer.bias.set_value(paddle.zeros_like(layer.bias))
            elif isinstance(layer, nn.Linear):
                bound = 1.0 / math.sqrt(layer.weight.shape[0])  # torch: U(±1/sqrt(fan_in)) for both
                layer.weight.set_value(paddle.uniform(layer.weight.shape, min=-bound, max=bound))
                if layer.bias is not None:
                    layer.bias.set_value(paddle.uniform(layer.bias.shape, min=-bound, max=bound))

    # --- condensation progress ------------------------------------------------------------
    def learned_layers(self):
        return [m for m in self.sublayers() if isinstance(m, LEARNED_LAYERS)]

    def set_progress(self, progress: float):
        """Training progress in [0, 1] (epoch fraction); drives the LGC/SFR condensation stages."""
        for layer in self.learned_layers():
            layer.progress = float(progress)

    def lasso_loss(self):
        return paddle.add_n([m.lasso_loss for m in self.learned_layers() if isinstance(m, LGC)])

    # --- forward --------------------------------------------------------------------------
    def forward_stages(self, x) -> List[paddle.Tensor]:
        outs = []
        for name, layer in self.features.named_children():
            if name in ("norm_last", "relu_last", "pool_last", "se_last"):
                break
            x = layer(x)
            if name.startswith("denseblock_"):
                outs.append(x)
        return outs

    def forward_head(self, features):
        out = self.fc_act(self.fc(paddle.flatten(features, 1)))
        return self.classifier(out)

    def forward(self, x, progress: Optional[float] = None):
        if progress is not None:
            self.set_progress(progress)
        if self.features_only:
            return self.forward_stages(x)
        return self.forward_head(self.features(x))


def build_condensenetv2(cfg: Union[CondenseNetV2Config, str, dict], form: str = "train",
                        features_only: bool = False, **overrides) -> CondenseNetV2:
    """Any configuration: a preset name, a ``CondenseNetV2Config``, or a dict of its fields."""
    if isinstance(cfg, str):
        cfg = preset(cfg)
    elif isinstance(cfg, dict):
        cfg = CondenseNetV2Config.from_dict(cfg)
    if overrides:
        cfg = cfg.replace(**overrides)
    return CondenseNetV2(cfg, form=form, features_only=features_only)


def _register(name: str, form: str):
    def builder(**kwargs):
        features_only = kwargs.pop("features_only", False)
        return CondenseNetV2(preset(name, **kwargs), form=form, features_only=features_only)

    builder.__name__ = name
    builder.__doc__ = f"CondenseNetV2 preset {name.replace('converted_', '')}, {form} form."
    register_model(name, family="condensenetv2", form=form)(builder)


for _name in ("cdnv2_a", "cdnv2_b", "cdnv2_c"):
    _register(_name, "train")
    _register("converted_" + _name, "converted")
