"""CondenseNetV2 (Yang et al., CVPR 2021) in Paddle, training and condensed forms.

Module names follow the official PyTorch code so official state dicts map key for key
(after Paddle's BatchNorm/Linear renames, see ``ppcdnv2.convert``).
"""
from __future__ import annotations

import math
from typing import Callable, List, Optional, Tuple, Union

import paddle
import paddle.nn as nn

from ..layers import LGC, SFR, Conv, CondenseLGC, CondenseSFR, HS, SELayer, LEARNED_LAYERS, batch_norm
from .config import PRESETS, CondenseNetV2Config, preset  # noqa: F401 (preset: re-exported)
from .registry import ModelFamily, register_model_family

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


class Transition(nn.Layer):
    def __init__(self):
        super().__init__()
        self.pool = nn.AvgPool2D(2, 2)

    def forward(self, x):
        return self.pool(x)


def dense_trunk(cfg, form: str, dense_layer: Callable[[int, int, int], nn.Layer]
                ) -> Tuple[nn.Sequential, int, List[int]]:
    """The ``features`` trunk the CondenseNet families share, with upstream's module names: stem conv
    (``init_conv``), dense blocks of ``dense_layer(block index, in_channels, growth)`` with 2x2
    average-pool transitions between them, then ``norm_last``/``relu_last``/``pool_last``.
    Returns (trunk, output channels, output channels of each block)."""
    if form not in FORMS:
        raise ValueError(f"form must be one of {FORMS}, got {form!r}")
    features = nn.Sequential()
    channels = 2 * cfg.growth[0]
    features.add_sublayer("init_conv", nn.Conv2D(3, channels, 3, stride=cfg.init_stride, padding=1, bias_attr=False))
    stage_channels: List[int] = []
    last = len(cfg.stages) - 1
    for i, (depth, growth) in enumerate(zip(cfg.stages, cfg.growth)):
        block = nn.Sequential()
        for j in range(depth):
            block.add_sublayer(f"denselayer_{j + 1}", dense_layer(i, channels + j * growth, growth))
        features.add_sublayer(f"denseblock_{i + 1}", block)
        channels += depth * growth
        stage_channels.append(channels)
        if i != last:
            features.add_sublayer(f"transition_{i + 1}", Transition())
    features.add_sublayer("norm_last", batch_norm(channels))
    features.add_sublayer("relu_last", nn.ReLU())
    features.add_sublayer("pool_last", nn.AvgPool2D(cfg.pool_size))
    return features, channels, stage_channels


class CondenseNetV2(nn.Layer):
    """CondenseNetV2 in either form.

    ``form="train"``: LGC/SFR layers with masks, condensed progressively by ``progress``.
    ``form="converted"``: the condensed deployment form (what ``ppcdnv2.condense`` returns).
    ``num_classes=0``: no classifier; the output is the ``fc → HS`` embedding (``fc_channel`` wide).
    ``features_only=True``: the output is the list of each dense block's output feature map
    (strides 4/8/16/32/32 for the ImageNet stem), for use as a detection/segmentation backbone.
    """

    family = "condensenetv2"

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
        inplace = _inplace_blocks(self)
        for name, layer in self.features.named_children():
            if name in ("norm_last", "relu_last", "pool_last", "se_last"):
                break
            x = condensed_block_inplace(layer, x) if inplace and name.startswith("denseblock_") else layer(x)
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
        if _inplace_blocks(self):
            for name, layer in self.features.named_children():
                x = condensed_block_inplace(layer, x) if name.startswith("denseblock_") else layer(x)
            return self.forward_head(x)
        return self.forward_head(self.features(x))


def _inplace_blocks(model) -> bool:
    """Whether dense blocks may run in place: converted form, dygraph, gradients off."""
    return model.form == "converted" and paddle.in_dynamic_mode() and not paddle.is_grad_enabled()


FAMILY = register_model_family(ModelFamily("condensenetv2", "CondenseNetV2", CondenseNetV2, CondenseNetV2Config,
                                            PRESETS))


def build_condensenetv2(cfg: Union[CondenseNetV2Config, str, dict], form: str = "train",
                        features_only: bool = False, **overrides) -> CondenseNetV2:
    """Any configuration: a preset name, a ``CondenseNetV2Config``, or a dict of its fields."""
    return FAMILY.build(cfg, form=form, features_only=features_only, **overrides)
