"""ReXNet (Han et al., CVPR 2021; clovaai/rexnet): ``ReXNetV1`` (``rexnet_090`` ... ``rexnet_300``) and
``ReXNetV1_lite`` (``rexnet_lite_100`` ... ``rexnet_lite_200``); ppim's names (``rexnet_1_0``, ...) are
aliases. One form; weights convert from upstream's ``.pth``, timm's layout and ppim's ``.pdparams``."""
from .config import ALIASES, PRESETS, ReXNetConfig, channel_plan
from .family import REXNET, ReXNetFamily

__all__ = ["ReXNetConfig", "PRESETS", "ALIASES", "channel_plan", "REXNET", "ReXNetFamily"]
