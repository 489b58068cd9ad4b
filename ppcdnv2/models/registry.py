"""Model registry: builders registered by name, created with ``create_model``."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, List, Optional


@dataclass(frozen=True)
class ModelEntry:
    name: str
    builder: Callable
    family: str
    form: str


_REGISTRY: Dict[str, ModelEntry] = {}


def register_model(name: str, family: str, form: str):
    def wrap(fn):
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} registered twice")
        _REGISTRY[name] = ModelEntry(name, fn, family, form)
        return fn

    return wrap


def list_models(family: Optional[str] = None) -> List[str]:
    return sorted(n for n, e in _REGISTRY.items() if family is None or e.family == family)


def model_entry(name: str) -> ModelEntry:
    if name not in _REGISTRY:
        raise KeyError(f"unknown model {name!r}; available: {', '.join(list_models())}")
    return _REGISTRY[name]


def create_model(name: str, pretrained: Optional[str] = None, **kwargs):
    """Build a registered model; ``pretrained`` is a local weights file (.pdparams or official .pth).

    Keyword arguments override config fields (e.g. ``num_classes=10``) or pass ``features_only``.
    With ``pretrained`` and a changed ``num_classes``, the classifier is left freshly initialised.
    """
    model = model_entry(name).builder(**kwargs)
    if pretrained:
        from ..weights import load_pretrained

        load_pretrained(model, pretrained, skip_classifier="num_classes" in kwargs)
    return model
