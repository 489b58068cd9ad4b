"""PyTorch references of GFNet and its backbones, written by us with upstream's module layout (parity tests,
the converter's ``--verify``). Needs torch; nothing is imported until used.

:func:`build_reference_backbone` mirrors :func:`ppcdnv2.families.gfnet.backbones.build_backbone`: same names,
``forward(x) -> (vector, feature_map)``, ``classify(vector)``, upstream's state-dict keys (no ``module.``).
"""
from importlib import import_module

from ..backbones import _MODULES


def build_reference_backbone(name: str):
    """The torch reference backbone ``name``, in upstream's layout."""
    if name not in _MODULES:
        raise KeyError(f"unknown GFNet backbone {name!r}; known: {', '.join(_MODULES)}")
    return import_module(f".{_MODULES[name]}", __name__).build(name)
