from .config import CondenseConfigBase, CondenseNetV2Config, PRESETS, preset
from .registry import (ModelFamily, create_model, list_models, model_entry, model_families, register_model,
                       register_model_family)
from .condensenetv2 import CondenseNetV2, SFRDenseLayer, build_condensenetv2
from .condensenet import CondenseNet, CondenseNetConfig, build_condensenet  # V1 family

__all__ = ["CondenseConfigBase", "CondenseNetV2Config", "PRESETS", "preset", "create_model", "list_models",
           "model_entry", "register_model", "ModelFamily", "model_families", "register_model_family",
           "CondenseNetV2", "SFRDenseLayer", "build_condensenetv2",
           "CondenseNet", "CondenseNetConfig", "build_condensenet"]
