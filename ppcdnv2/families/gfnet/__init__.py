"""Glance-and-Focus networks (GFNet; Wang et al., NeurIPS 2020 / TPAMI 2023; blackfeather-wang/GFNet-Pytorch)
with their backbones (ResNet-50, DenseNet-121/169/201, RegNetY, MobileNetV3-Large, EfficientNet-B2/B3), as the
models ``gfnet_<config>`` of the 14 released configurations. Also ``ppcdnv2.gfnet``: the budget tools
(``find_thresholds``, ``evaluate_budget``) and the model classes."""
from .budget import StepMaxima, anytime_accuracy, budget_curve, evaluate_budget, exit_distribution, find_thresholds
from .config import PRESETS, RELEASED, GFNetConfig
from .family import GFNET, GFNetFamily, cumulative_macs, step_macs
from .model import GFNet, GlanceFocusResult, PredictResult

__all__ = ["GFNet", "GFNetConfig", "GFNetFamily", "GFNET", "PRESETS", "RELEASED", "GlanceFocusResult", "PredictResult",
           "find_thresholds", "evaluate_budget", "exit_distribution", "budget_curve", "anytime_accuracy",
           "step_macs", "cumulative_macs", "StepMaxima"]
