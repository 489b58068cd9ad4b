"""ppcdnv2: the CondenseNet family (CondenseNetV2 first) in PaddlePaddle."""
import warnings

# Paddle warns on every import that ccache (for compiling C++ extensions) is missing; irrelevant here
# and it would precede every CLI message
warnings.filterwarnings("ignore", message="No ccache found", category=UserWarning)

from .models import CondenseNetV2, CondenseNetV2Config, build_condensenetv2, create_model, list_models, preset
from .condense import condense

__version__ = "0.1.0"
__all__ = ["CondenseNetV2", "CondenseNetV2Config", "build_condensenetv2", "create_model", "list_models",
           "preset", "condense", "__version__"]
