"""Model registry: builders registered by name, created with ``create_model``; and the model families.

A family (CondenseNetV2, CondenseNet V1) registers once with :func:`register_model_family`, which
registers every preset in both forms (``name``: training form, ``converted_name``: condensed form)
and gives one way to build any configuration of it (:meth:`ModelFamily.build`). Kept free of Paddle:
the families' modules hand in their model classes.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Mapping, Optional

from .config import lookup_preset


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


# --- families ---------------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class ModelFamily:
    """A family of models: its model class (``cls(cfg, form=..., features_only=...)``), config class
    (a ``CondenseConfigBase`` dataclass) and presets."""

    name: str  # registry family name, e.g. "condensenetv2"
    title: str  # for documentation, e.g. "CondenseNet (V1)"
    model_class: Callable
    config_class: type
    presets: Mapping[str, Any]

    def preset(self, name: str, **overrides):
        """A preset by name (``converted_`` prefix allowed), with field overrides."""
        return lookup_preset(self.presets, name, self.config_class.family_title, **overrides)

    def config(self, cfg, **overrides):
        """A preset name, a config of this family or a dict of its fields → a config, with overrides."""
        if isinstance(cfg, str):
            cfg = self.preset(cfg)
        elif isinstance(cfg, dict):
            cfg = self.config_class.from_dict(cfg)
        return cfg.replace(**overrides) if overrides else cfg

    def build(self, cfg, form: str = "train", features_only: bool = False, **overrides):
        """The model of any configuration (see :meth:`config`) in ``form``."""
        return self.model_class(self.config(cfg, **overrides), form=form, features_only=features_only)

    def _register_preset(self, name: str, form: str) -> None:
        def builder(**kwargs):
            features_only = kwargs.pop("features_only", False)
            return self.model_class(self.preset(name, **kwargs), form=form, features_only=features_only)

        builder.__name__ = name
        builder.__doc__ = f"{self.title} preset {name.replace('converted_', '')}, {form} form."
        register_model(name, family=self.name, form=form)(builder)


_FAMILIES: Dict[str, ModelFamily] = {}


def register_model_family(family: ModelFamily) -> ModelFamily:
    """Register ``family`` and each of its presets as ``name`` (training form) and ``converted_name``."""
    if family.name in _FAMILIES:
        raise ValueError(f"model family {family.name!r} registered twice")
    _FAMILIES[family.name] = family
    for name in family.presets:
        family._register_preset(name, "train")
        family._register_preset("converted_" + name, "converted")
    return family


def model_families() -> Dict[str, ModelFamily]:
    """The registered families by name (``condensenetv2``, ``condensenet``)."""
    return dict(_FAMILIES)

