from .config import CondenseNetV2Config, PRESETS, preset
from .registry import create_model, list_models, model_entry, register_model
from .condensenetv2 import CondenseNetV2, SFRDenseLayer, build_condensenetv2

__all__ = ["CondenseNetV2Config", "PRESETS", "preset", "create_model", "list_models", "model_entry",
           "register_model", "CondenseNetV2", "SFRDenseLayer", "build_condensenetv2"]
