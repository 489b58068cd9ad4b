"""Models from a run config, and weights of any kind we read, for training and evaluation."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Optional, Tuple

from ..models.registry import ModelFamily, list_models, model_entry, model_families  # (ppcdnv2.models registers both)
from .config import ConfigError
from ..weights import StateDictMismatchError, WeightsError, load_state_dict, read_weights

TORCH_SUFFIXES = (".pth", ".pt", ".tar", ".pkl")
DEFAULT_FAMILY = "condensenetv2"


def resolve_family(model_cfg: Mapping[str, Any]) -> ModelFamily:
    """The family a ``model`` section describes: ``model.name``'s (any registered preset of either
    family, ``converted_`` names included), else ``model.family`` (default: condensenetv2)."""
    name, family = model_cfg.get("name"), model_cfg.get("family")
    families = model_families()
    if family is not None and family not in families:
        raise ConfigError(f"model.family = {family!r}; expected one of {sorted(families)}")
    if not name:
        return families[family or DEFAULT_FAMILY]
    if name not in list_models():
        raise ConfigError(f"model.name = {name!r} is not a registered model; known: {', '.join(list_models())} "
                          f"(or null with the whole architecture in model.arch)")
    found = families[model_entry(name).family]
    if family is not None and family != found.name:
        raise ConfigError(f"model.family = {family!r} but model.name = {name!r} is a {found.name} preset")
    return found


def config_family(cfg) -> ModelFamily:
    """The family of a model config object (``CondenseNetV2Config`` or ``CondenseNetConfig``)."""
    for family in model_families().values():
        if isinstance(cfg, family.config_class):
            return family
    raise TypeError(f"not a model config of a registered family: {type(cfg).__name__}")


def model_config(model_cfg: Mapping[str, Any], num_classes: Optional[int] = None):
    """The family's config: ``model.name`` preset (or the family's defaults) ← ``model.arch`` fields ←
    ``model.num_classes`` or the dataset's. A ``CondenseNetV2Config`` or a ``CondenseNetConfig``."""
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
    try:
        return config_family(cfg).model_class(cfg, form=form)
    except ValueError as e:  # e.g. channels not divisible by the groups
        raise ConfigError(f"model: this architecture cannot be built: {e}") from None


def build_model(model_cfg: Mapping[str, Any], form: str = "train", num_classes: Optional[int] = None):
    """The model (``CondenseNetV2`` or ``CondenseNet``) a ``model`` config section describes, in ``form``."""
    return _build(model_config(model_cfg, num_classes), form)


def is_torch_file(path) -> bool:
    p = Path(path)
    return p.suffix in TORCH_SUFFIXES or p.name.endswith(".pth.tar")


def _state_form(state) -> str:
    from ..convert import is_training_form

    return "train" if is_training_form(state) else "converted"


def read_state(path, which: str = "ema"):
    """Our weights as ``(numpy state, form)``: a training checkpoint (its EMA or model), .pdparams or .safetensors."""
    from .checkpoint import CheckpointError, checkpoint_weights

    path = Path(path)
    if path.suffix == ".safetensors":
        try:
            state, _ = checkpoint_weights(path, which)
            return state, _state_form(state)
        except CheckpointError as e:
            if "not a ppcdnv2 training checkpoint" not in str(e):
                raise
    state = read_weights(path)
    return state, _state_form(state)


def load_model(path, cfg, form: str = "auto", which: str = "ema") -> Tuple[Any, str]:
    """A model of ``form`` (``auto``: the weights' own) holding the weights at ``path``; returns (model, source form).

    Training-form weights asked for in converted form are condensed (``ppcdnv2.condense``); official
    ``.pth`` files are converted on the fly (``ppcdnv2.convert``).
    """
    if form not in ("auto", "train", "converted"):
        raise ValueError(f"form must be auto, train or converted, got {form!r}")
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{path}: no such weights file")
    if is_torch_file(path):
        from ..convert import extract_state_dict, official_state_to_model
        from ..convert.torch_file import load_torch_file

        state, _ = extract_state_dict(load_torch_file(path), "ema" if which == "ema" else "model", where=str(path))
        source = _state_form(state)
        model = _build(cfg, source if form == "auto" else form)
        if source == "converted" and model.form == "train":
            raise WeightsError(f"{path}: converted (condensed) weights cannot be evaluated in training form")
        load_state_dict(model, official_state_to_model(state, model), where=str(path))
        return model, source
    state, source = read_state(path, which)
    if source == "converted" and form == "train":
        raise WeightsError(f"{path}: converted (condensed) weights cannot be evaluated in training form")
    model = _build(cfg, source)
    load_state_dict(model, state, where=str(path))
    if form == "converted" and source == "train":
        from ..condense import condense

        model = condense(model)
    return model, source


def load_initial_weights(model, path) -> bool:
    """Start training from ``path`` (ours or an official .pth, training form); returns whether the
    classifier was left freshly initialised because its shape differs (fine-tuning on other classes)."""
    from ..weights import load_pretrained

    try:
        load_pretrained(model, path)
        return False
    except StateDictMismatchError as e:
        if e.missing or e.unexpected or not e.shapes or not all(k.startswith("classifier.") for k, _, _ in e.shapes):
            raise
    load_pretrained(model, path, skip_classifier=True)
    return True
