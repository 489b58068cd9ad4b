"""ppcdnv2: efficient CNNs of the CondenseNet line of work in PaddlePaddle (CondenseNetV2, CondenseNet, ReXNet, GFNet).

Models are registered by family (``ppcdnv2.registry``; one package per family under ``ppcdnv2.families``):
``list_models()``, ``create_model(name, pretrained=path)``, ``preset(name)``; ``condense(model)`` turns a
training-form model of a family that condenses into its deployment form.
"""
import warnings

# Paddle warns on every import that ccache (for compiling C++ extensions) is missing; irrelevant here
# and it would precede every CLI message
warnings.filterwarnings("ignore", message="No ccache found", category=UserWarning)

# before anything runs an MKL routine: Paddle's bundled MKL runs its SSE kernels on AMD CPUs (see _cpu)
from ._cpu import enable_mkl_avx2_on_amd  # noqa: E402
enable_mkl_avx2_on_amd()

from .registry import create_model, families, get_family, list_models, preset  # noqa: E402
from . import families as _families  # noqa: E402,F401 (registers the built-in families)
from .families.condensenet import (CondenseNetConfig, CondenseNetV2Config, build_condensenet,  # noqa: E402
                                   build_condensenetv2)
from .families.condensenet.v2 import CondenseNetV2  # noqa: E402
from .condense import condense  # noqa: E402
from . import gfnet  # noqa: E402  (GFNet's budget tools and model classes)

__version__ = "0.1.0"
__all__ = ["create_model", "list_models", "preset", "families", "get_family", "condense", "gfnet", "CondenseNetV2",
           "CondenseNetV2Config", "CondenseNetConfig", "build_condensenetv2", "build_condensenet", "__version__"]
