"""The CondenseNet families: CondenseNetV2 (``cdnv2_*``) and CondenseNet V1 (``condensenet*``), sharing
one dense trunk (``trunk``), their layers (``ppcdnv2.layers``) and condensation (``ppcdnv2.condense``)."""
from .config import V1_PRESETS, V2_PRESETS, CondenseConfigBase, CondenseNetConfig, CondenseNetV2Config
from .family import CONDENSENET, CONDENSENETV2, CondenseNetFamily, CondenseNetV2Family


def build_condensenetv2(cfg, form: str = "train", features_only: bool = False, **overrides):
    """Any CondenseNetV2 configuration: a preset name, a ``CondenseNetV2Config`` or a dict of its fields."""
    return CONDENSENETV2.build(cfg, form=form, features_only=features_only, **overrides)


def build_condensenet(cfg, form: str = "train", features_only: bool = False, **overrides):
    """Any CondenseNet (V1) configuration: a preset name, a ``CondenseNetConfig`` or a dict of its fields."""
    return CONDENSENET.build(cfg, form=form, features_only=features_only, **overrides)


__all__ = ["CondenseConfigBase", "CondenseNetV2Config", "CondenseNetConfig", "V2_PRESETS", "V1_PRESETS",
           "CONDENSENETV2", "CONDENSENET", "CondenseNetV2Family", "CondenseNetFamily", "build_condensenetv2",
           "build_condensenet"]
