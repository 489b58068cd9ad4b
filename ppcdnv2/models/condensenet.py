"""CondenseNet (V1; Huang, Liu, van der Maaten, Weinberger, CVPR 2018) in Paddle, training and condensed forms.

The V1 dense layer is the V2 one without SFR/SE: an LGC 1x1 bottleneck (BN-ReLU-[dropout]-conv,
pruned to 1/condense_factor of its inputs per group) then a grouped 3x3 conv, concatenated onto the
input. Transitions are a 2x2 average pool; the head is BN-ReLU-avgpool and one Linear classifier.
The condensed form swaps each LGC for a ``CondenseLGC`` and the classifier for a ``CondenseLinear``
that reads only the half of the features with the largest weight magnitude, as upstream's
``convert_model`` does. Module names follow ShichenLiu/CondenseNet so its state dicts map key for key.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Dict, Tuple, Union

import paddle
import paddle.nn as nn

from ..layers import LGC, Conv, CondenseLGC, CondenseLinear
from .condensenetv2 import FORMS, CondenseNetV2, dense_trunk  # noqa: F401 (FORMS: re-exported)
from .config import CondenseConfigBase, lookup_preset
from .registry import ModelFamily, register_model_family


@dataclass(frozen=True)
class CondenseNetConfig(CondenseConfigBase):
    """Hyper-parameters of a CondenseNet (V1); field names follow upstream's ``main.py`` arguments.

    Geometry (``init_stride``, ``pool_size``, ``input_size``, ``num_features``), ``replace``,
    ``to_dict``/``from_dict`` and the stages/growth/stem checks are shared with V2 (``CondenseConfigBase``).
    """

    family_title: ClassVar[str] = "CondenseNet"

    stages: Tuple[int, ...] = (4, 6, 8, 10, 8)
    growth: Tuple[int, ...] = (8, 16, 32, 64, 128)
    bottleneck: int = 4
    group_1x1: int = 4
    group_3x3: int = 4
    condense_factor: int = 4  # LGC keeps 1/condense_factor of its input connections per group
    dropout_rate: float = 0.0  # dropout before each LGC convolution (training form only)
    classifier_keep: float = 0.5  # fraction of features the condensed classifier keeps (upstream: 0.5)
    num_classes: int = 1000
    stem: str = "imagenet"  # "imagenet": stride-2 stem, 7x7 final pool; "cifar": stride 1, 8x8 pool

    def __post_init__(self):
        super().__post_init__()
        if not 0.0 < self.classifier_keep <= 1.0:
            raise ValueError(f"classifier_keep must be in (0, 1], got {self.classifier_keep}")

    @property
    def classifier_features(self) -> int:
        """Input features the condensed classifier keeps (upstream: ``int(in_features * 0.5)``)."""
        return int(self.num_features * self.classifier_keep)

    @classmethod
    def from_official_args(cls, args: Any) -> "CondenseNetConfig":
        """Build from upstream's ``argparse.Namespace`` (or a dict of it): ``data``, ``stages``, ``growth``, ..."""
        get = cls._args_getter(args)
        data = str(get("data", "imagenet"))
        group_1x1 = get("group_1x1", 4)
        default_classes = {"cifar10": 10, "cifar100": 100}.get(data, 1000)
        return cls(stages=cls._int_tuple(get("stages")), growth=cls._int_tuple(get("growth")),
                   bottleneck=get("bottleneck", 4), group_1x1=group_1x1, group_3x3=get("group_3x3", 4),
                   condense_factor=get("condense_factor") or group_1x1,
                   dropout_rate=float(get("dropout_rate", 0.0) or 0.0),
                   num_classes=get("num_classes", default_classes),
                   stem="cifar" if data in ("cifar10", "cifar100") else "imagenet")


def _cifar(n: int, growth=(8, 16, 32)) -> CondenseNetConfig:
    return CondenseNetConfig(stages=(n, n, n), growth=growth, num_classes=10, stem="cifar")


# The published models: ImageNet CondenseNet-74 (upstream README/script.sh) and the CIFAR table of the
# paper (depth = 6 N + 2; CIFAR-10 heads, pass num_classes=100 for CIFAR-100).
PRESETS: Dict[str, CondenseNetConfig] = {
    "condensenet74_c4_g4": CondenseNetConfig(),
    "condensenet74_c8_g8": CondenseNetConfig(group_1x1=8, group_3x3=8, condense_factor=8),
    **{f"condensenet_cifar{d}": _cifar((d - 2) // 6) for d in (50, 74, 86, 98, 110, 122)},
    "condensenet_cifar182": _cifar(30, growth=(12, 24, 48)),
}


def preset(name: str, **overrides) -> CondenseNetConfig:
    """A V1 preset by name (``condensenet_cifar86`` or ``converted_condensenet_cifar86`` alike)."""
    return lookup_preset(PRESETS, name, CondenseNetConfig.family_title, **overrides)


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
        self.conv_2 = Conv(width, growth, 3, padding=1, groups=cfg.group_3x3)

    def forward(self, x):
        return paddle.concat([x, self.conv_2(self.conv_1(x))], axis=1)


class CondenseNet(nn.Layer):
    """CondenseNet (V1) in either form.

    ``form="train"``: LGC layers with masks, condensed progressively by ``progress``.
    ``form="converted"``: the condensed deployment form (``ppcdnv2.condense`` of a trained model).
    ``num_classes=0``: no classifier; the output is the pooled ``num_features`` embedding.
    ``features_only=True``: the output is the list of each dense block's output feature map.
    """

    family = "condensenet"

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
        self._init_weights()

    def _init_weights(self):
        """Upstream's init: V2's (kaiming-normal fan_out convs, BN 1/0, torch-default linears), zero biases."""
        CondenseNetV2._init_weights(self)
        for layer in self.sublayers():
            if isinstance(layer, nn.Linear):
                layer.bias.set_value(paddle.zeros_like(layer.bias))

    # Progress, group lasso and the stage/forward plumbing are V2's, over the same module names.
    learned_layers = CondenseNetV2.learned_layers
    set_progress = CondenseNetV2.set_progress
    lasso_loss = CondenseNetV2.lasso_loss
    forward_stages = CondenseNetV2.forward_stages
    forward = CondenseNetV2.forward

    def forward_head(self, features):
        return self.classifier(paddle.flatten(features, 1))


FAMILY = register_model_family(ModelFamily("condensenet", "CondenseNet (V1)", CondenseNet, CondenseNetConfig,
                                            PRESETS))


def build_condensenet(cfg: Union[CondenseNetConfig, str, dict], form: str = "train",
                      features_only: bool = False, **overrides) -> CondenseNet:
    """Any V1 configuration: a preset name, a ``CondenseNetConfig``, or a dict of its fields."""
    return FAMILY.build(cfg, form=form, features_only=features_only, **overrides)
