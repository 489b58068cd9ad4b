"""Models from a run config, and weights of any kind we read, for training and evaluation."""
from __future__ import annotations

from typing import Any, Mapping, Optional

from ..registry import Family, family_of, families, list_models, model_entry
from ..weights import StateDictMismatchError, load_pretrained
from .config import ConfigError

DEFAULT_FAMILY = "condensenetv2"


def resolve_family(model_cfg: Mapping[str, Any]) -> Family:
    """The family a ``model`` section describes: ``model.name``'s (any registered model or alias,
    ``converted_`` names included), else ``model.family`` (default: condensenetv2)."""
    name, family = model_cfg.get("name"), model_cfg.get("family")
    fams = families()
    if family is not None and family not in fams:
        raise ConfigError(f"model.family = {family!r}; expected one of {sorted(fams)}")
    if not name:
        return fams[family or DEFAULT_FAMILY]
    try:
        found = model_entry(name).family
    except KeyError:
        raise ConfigError(f"model.name = {name!r} is not a registered model; known: {', '.join(list_models())} "
                          f"(or null with the whole architecture in model.arch)") from None
    if family is not None and family != found.name:
        raise ConfigError(f"model.family = {family!r} but model.name = {name!r} is a {found.name} preset")
    return found


def model_config(model_cfg: Mapping[str, Any], num_classes: Optional[int] = None):
    """The family's config: ``model.name`` preset (or the family's defaults) ← ``model.arch`` fields ←
    ``model.num_classes`` or the dataset's: a config object of the family."""
    family = resolve_family(model_cfg)
    arch = dict(model_cfg.get("arch") or {})
    base = family.preset(model_cfg["name"]) if model_cfg.get("name") else family.config_class()
    try:
        cfg = base.replace(**arch) if arch else base
    except (TypeError, ValueError) as e:
        known = sorted(family.config_class().to_dict())
        raise ConfigError(f"model.arch: {e}; known fields of a {family.name} (model.family) config: {known} "
                          f"(model.arch=null clears the fields a base config set)") from None
    n = model_cfg.get("num_classes") or num_classes
    if n is not None and n != cfg.num_classes:
        cfg = cfg.replace(num_classes=int(n))
    return cfg


def _build(cfg, form: str):
    family = family_of(cfg)
    if form not in family.forms_of(cfg):
        raise ConfigError(f"model: {family.describe(cfg)} has the form(s) {', '.join(family.forms_of(cfg))}, "
                          f"not {form!r}")
    try:
        return family.build(cfg, form=form)
    except ValueError as e:  # e.g. channels not divisible by the groups
        raise ConfigError(f"model: this architecture cannot be built: {e}") from None


def build_model(model_cfg: Mapping[str, Any], form: str = "train", num_classes: Optional[int] = None):
    """The model a ``model`` config section describes, in ``form``."""
    return _build(model_config(model_cfg, num_classes), form)


def load_initial_weights(model, path) -> bool:
    """Start training from ``path`` (any weights file we read, training form); returns whether the
    classifier was left freshly initialised because its shape differs (fine-tuning on other classes)."""
    prefix = family_of(model).classifier_of(model.cfg) + "."
    try:
        load_pretrained(model, path)
        return False
    except StateDictMismatchError as e:
        if e.missing or e.unexpected or not e.shapes or not all(k.startswith(prefix) for k, _, _ in e.shapes):
            raise
    load_pretrained(model, path, skip_classifier=True)
    return True
