"""The one registry: model families and the models they register, with everything generic code asks of them.

A family (CondenseNetV2, CondenseNet V1, ReXNet, ...) is one :class:`Family` subclass instance in its own
package under ``ppcdnv2/families/``, registered once with :func:`register_family` when that package is
imported. It declares its config class and presets, its forms (``converted_*`` names exist only for
families that condense), per-weights metadata (:class:`WeightsInfo`: evaluation preprocessing, classifier,
published figures), capabilities (``condensable``, ``progressive``, ``lasso``), and answers the questions
of the converter (which keys are mine, which configuration do they show, key maps to and from external
layouts), of the FLOPs counter and of ``--verify`` (its torch reference). The engine, deployment,
``condense``, the FLOPs CLI and evaluation preprocessing ask this registry; no one else knows a family by
name or type.

Importing this module needs numpy only; Paddle and torch are imported inside the methods that need them.
"""
from __future__ import annotations

import dataclasses
import json
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Tuple

import numpy as np

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
CONVERTED = "converted_"


def strip_converted(name: str) -> str:
    """``converted_cdnv2_a`` → ``cdnv2_a`` (any other name unchanged)."""
    return name[len(CONVERTED):] if name.startswith(CONVERTED) else name


@dataclass(frozen=True)
class WeightsInfo:
    """What a set of weights needs besides its tensors, as timm's ``_cfg`` / torchvision's ``Weights``:
    the evaluation transform it was published with and its published figures."""

    resize: int = 256  # shorter side before the center crop
    crop: int = 224
    interpolation: str = "bicubic"
    mean: Tuple[float, ...] = IMAGENET_MEAN
    std: Tuple[float, ...] = IMAGENET_STD
    top1: Optional[float] = None  # published ImageNet top-1, %
    mflops: Optional[float] = None  # published multiply-adds, M
    mparams: Optional[float] = None  # published parameters, M
    files: Tuple[str, ...] = ()  # released file names (never downloaded here)
    published_form: str = "train"  # the form the published FLOPs/params were counted on

    def replace(self, **changes) -> "WeightsInfo":
        return dataclasses.replace(self, **changes)


IMAGENET_EVAL = WeightsInfo()
CIFAR_EVAL = WeightsInfo(resize=32, crop=32, interpolation="bilinear", mean=CIFAR10_MEAN, std=CIFAR10_STD)


@dataclass
class Detection:
    """What a checkpoint holds: family, configuration, form and how the configuration was decided."""

    family: "Family"
    cfg: Any
    form: str  # "train" | "converted"
    label: str  # preset name, "custom ..." or the --arch value
    source: str  # "--arch", "checkpoint args", "preset", "inferred"
    notes: List[str] = field(default_factory=list)
    layout: str = "official"  # the external layout the weights came in ("official", "timm", "ppim", ...)


class Family:
    """A model family. Subclasses set the class attributes and override the hooks marked *to override*;
    the converter's generic machinery (detection, shape checks, key maps derived from the Paddle model)
    works for any family whose official layout equals ours up to the frameworks' renames."""

    name = "?"  # registry name, e.g. "condensenetv2"
    title = "?"  # for people, e.g. "CondenseNet (V1)"
    config_class: Any = None  # frozen dataclass with replace/to_dict/from_dict
    presets: Mapping[str, Any] = {}
    aliases: Mapping[str, str] = {}  # other names of presets (e.g. ppim's) → preset name
    forms: Tuple[str, ...] = ("train",)  # ("train", "converted") for a family that condenses
    condensable = False  # ppcdnv2.condense turns the training form into the converted form
    progressive = False  # training drives the model with set_progress(step / total)
    lasso = False  # the model has a lasso_loss() for train.lasso
    exportable = True  # paddle.jit export (Paddle Inference, ONNX) works
    single_output = True  # forward(x) -> logits [B, classes] (GFNet: one set per step)
    classifier = "classifier"  # state-dict prefix of the classifier (left fresh for new classes)
    # config fields that weights cannot show (e.g. activation choice): taken from a preset, the
    # checkpoint's args or --arch; defaults otherwise, with a note
    hidden_fields: Tuple[str, ...] = ()
    layouts: Tuple[str, ...] = ("official",)  # external torch layouts the converter reads and writes
    torch_container: Optional[str] = "state_dict"  # key the upstream code loads its weights from (None: bare)
    paddle_layouts: Tuple[str, ...] = ()  # other Paddle layouts read and written (e.g. "ppim")

    # --- to override: models ----------------------------------------------------------------
    def model_class(self):
        """The Paddle model class, ``cls(cfg, form=..., features_only=...)`` (imported lazily: needs Paddle)."""
        raise NotImplementedError

    def weights_info(self, cfg) -> WeightsInfo:
        """Evaluation preprocessing and published figures of ``cfg``'s weights (a preset's, if it is one)."""
        return IMAGENET_EVAL if getattr(cfg, "input_size", 224) >= 64 else CIFAR_EVAL

    def classifier_of(self, cfg) -> str:
        """State-dict prefix of ``cfg``'s classifier: the layer left fresh when fine-tuning on other classes."""
        return self.classifier

    def count_flops(self, cfg, form: str = "train", input_size: Optional[int] = None):
        """A ``ppcdnv2.flops.FlopsReport`` of ``cfg`` in ``form``."""
        raise NotImplementedError

    def condense(self, model):
        """The converted-form twin of a training-form ``model`` (condensable families)."""
        raise ValueError(f"{self.title} has one form only; there is nothing to condense")

    def condensed_equivalent(self, model):
        """The training-form model computing exactly what ``condense(model)`` computes (itself by default)."""
        return model

    # --- to override: converter ----------------------------------------------------------------
    def claims(self, keys) -> bool:
        """Whether these state-dict keys (any layout this family reads) are this family's."""
        raise NotImplementedError

    def infer_config(self, state: Mapping[str, np.ndarray], layout: str, form: str) -> Tuple[Any, List[str]]:
        """The configuration the shapes show (``layout``: "torch" or "paddle"), and the fields they did not show."""
        raise NotImplementedError

    def build_reference(self, cfg, form: str):
        """The torch reference model with the official layout (``--verify``); needs torch."""
        raise NotImplementedError

    def to_official(self, state: Mapping[str, np.ndarray]) -> Tuple[Dict[str, np.ndarray], str]:
        """A torch-side state in any layout this family reads → (official layout, layout name)."""
        return dict(state), "official"

    def from_official(self, state: Mapping[str, np.ndarray], layout: str, cfg=None) -> Dict[str, np.ndarray]:
        """An official torch-layout state (of configuration ``cfg``) → external ``layout`` (one of ``layouts``)."""
        if layout != "official":
            raise ValueError(f"{self.title}: no {layout!r} layout; known: {', '.join(self.layouts)}")
        return dict(state)

    def paddle_from_external(self, state: Mapping[str, np.ndarray]) -> Tuple[Dict[str, np.ndarray], str]:
        """A Paddle-side state in another Paddle layout (ppim's) → (ours, layout name)."""
        return dict(state), "ours"

    def to_paddle_layout(self, model, layout: str) -> Dict[str, np.ndarray]:
        """``model``'s weights in another Paddle ``layout`` (one of ``paddle_layouts``)."""
        raise ValueError(f"{self.title}: no Paddle layout {layout!r}; known: {', '.join(self.paddle_layouts) or 'none'}")

    def unpack_checkpoint(self, obj, where: str):
        """A checkpoint object this family stores its own way (not one state dict) → ``(state, what, args)``,
        the state in the torch layout of our module names; None when ``obj`` is not such a checkpoint."""
        return None

    def official_for_reference(self, state: Mapping[str, np.ndarray]) -> Dict[str, np.ndarray]:
        """The part of an official state the torch reference loads (strictly) for ``--verify``."""
        return dict(state)

    def reference_in_form(self, ref, form: str):
        """The loaded torch reference turned into ``form`` (``--verify`` of a training checkpoint written
        condensed). Identity where condensing leaves the logits unchanged."""
        return ref

    def config_from_args(self, args) -> Optional[Any]:
        """The configuration recorded in a trainer checkpoint's ``args`` (None if there is none)."""
        return None

    # --- presets and models ----------------------------------------------------------------
    def resolve_name(self, name: str) -> str:
        """The preset name of ``name`` (``converted_`` prefix and aliases allowed)."""
        base = strip_converted(name)
        return self.aliases.get(base, base)

    def preset(self, name: str, **overrides):
        """A preset by name (``converted_`` prefix and aliases allowed), with field overrides."""
        base = self.resolve_name(name)
        if base not in self.presets:
            raise KeyError(f"unknown {self.title} preset {name!r}; known: {sorted(self.presets)}")
        cfg = self.presets[base]
        return cfg.replace(**overrides) if overrides else cfg

    def config(self, cfg, **overrides):
        """A preset name, a config of this family or a dict of its fields → a config, with overrides."""
        if isinstance(cfg, str):
            cfg = self.preset(cfg)
        elif isinstance(cfg, Mapping):
            cfg = self.config_class.from_dict(cfg)
        elif not isinstance(cfg, self.config_class):
            raise TypeError(f"expected a {self.title} preset name, {self.config_class.__name__} or dict, "
                            f"got {type(cfg).__name__}")
        return cfg.replace(**overrides) if overrides else cfg

    def forms_of(self, cfg) -> Tuple[str, ...]:
        """The forms ``cfg`` has (the family's; a family whose configurations differ narrows it per config)."""
        return self.forms

    def build(self, cfg, form: str = "train", features_only: bool = False, **overrides):
        """The Paddle model of any configuration (see :meth:`config`) in ``form``."""
        cfg = self.config(cfg, **overrides)
        if form not in self.forms_of(cfg):
            raise ValueError(f"{self.describe(cfg)} has the form(s) {', '.join(self.forms_of(cfg))}, not {form!r}")
        return self.model_class()(cfg, form=form, features_only=features_only)

    def model_name(self, cfg, form: str) -> Optional[str]:
        """The ``create_model`` name that builds exactly this, if any."""
        for name, p in self.presets.items():
            if p == cfg:
                return name if form == "train" else CONVERTED + name
        return None

    def describe(self, cfg) -> str:
        for name, p in self.presets.items():
            if p == cfg:
                return name
        if dataclasses.is_dataclass(cfg):
            return f"custom {self.name} {json.dumps(cfg.to_dict())}"
        return f"custom {self.name} {cfg}"

    def paddle_load_hint(self, cfg, form: str, path: str) -> str:
        """One line of Python that loads converted weights at ``path``."""
        name = self.model_name(cfg, form)
        if name:
            return f"ppcdnv2.create_model({name!r}, pretrained={path!r})"
        return (f"ppcdnv2.weights.load_pretrained(ppcdnv2.registry.get_family({self.name!r}).build("
                f"{cfg.to_dict()}, form={form!r}), {path!r})")

    # --- converter, generic ----------------------------------------------------------------
    def form_of(self, state: Mapping[str, np.ndarray]) -> str:
        if "converted" not in self.forms:
            return "train"
        return "train" if any(k.endswith("._mask") for k in state) else "converted"

    def config_from_arch(self, arch: str) -> Tuple[Any, str]:
        """``--arch``: a preset name (``converted_`` prefix allowed) or a .json/.yaml file of config fields."""
        name = self.resolve_name(arch)
        if name in self.presets:
            return self.presets[name], name
        path = Path(arch)
        if path.suffix.lower() in (".json", ".yaml", ".yml"):
            from .weights import WeightsError

            if not path.is_file():
                raise WeightsError(f"--arch {arch}: no such file")
            text = path.read_text()
            try:
                if path.suffix.lower() == ".json":
                    fields = json.loads(text)
                else:
                    import yaml

                    fields = yaml.safe_load(text)
                if isinstance(fields, Mapping) and isinstance(fields.get("model"), Mapping):
                    return self._config_from_run(fields["model"], path), f"{path.name} (model section)"
                return self.config_class.from_dict(fields), f"{path.name}"
            except (ValueError, TypeError, AttributeError) as e:
                raise WeightsError(f"--arch {arch}: not a {self.name} configuration ({e})") from None
            except Exception as e:  # yaml errors
                raise WeightsError(f"--arch {arch}: unreadable ({type(e).__name__}: {e})") from None
        from .weights import WeightsError

        raise WeightsError(f"--arch {arch!r}: not a {self.name} preset ({', '.join(self.presets)}) "
                           f"nor a .json/.yaml configuration file")

    def _config_from_run(self, model_section, path):
        """The model of a training config (``output/<run>/config.yaml``): its ``model`` section as the engine
        reads it; the class count is taken from the weights when the section leaves it to the data."""
        from .engine.build import model_config
        from .weights import WeightsError

        try:
            cfg = model_config(model_section)
        except Exception as e:  # ConfigError, unknown fields
            raise WeightsError(f"--arch {path}: its model section does not describe a model ({e})") from None
        if family_of(cfg) is not self:
            raise WeightsError(f"--arch {path}: a {family_of(cfg).title} configuration, but the weights are "
                               f"{self.title}")
        return cfg

    def template(self, cfg, form: str):
        """A model used only for its structure (key names, shapes, layer kinds); cached, never loaded."""
        cache = self.__dict__.setdefault("_templates", OrderedDict())
        key = (cfg, form)
        if key not in cache:
            cache[key] = self.build(cfg, form)
            while len(cache) > 4:
                cache.popitem(last=False)
        return cache[key]

    def expected_shapes(self, cfg, form: str, layout: str):
        """Every key of the state dict of ``cfg``/``form`` in ``layout`` with its acceptable shape(s)."""
        from .convert.keymap import paddle_to_torch_state
        from .weights import state_dict_numpy

        model = self.template(cfg, form)
        state = state_dict_numpy(model)
        if layout == "torch":
            state = paddle_to_torch_state(state, model)
        return {k: self._alternatives(k, tuple(v.shape), model) for k, v in state.items()}

    def _alternatives(self, key: str, shape: Tuple[int, ...], model) -> List[Tuple[int, ...]]:
        """Other shapes a key may have in files (e.g. an index in another encoding); hook for families."""
        return [shape]

    def official_to_paddle(self, state: Mapping[str, np.ndarray], model) -> Dict[str, np.ndarray]:
        """Official (torch-layout) state of either form → ``model``'s Paddle state, condensing if needed."""
        from .convert.keymap import torch_to_paddle_state

        if self.form_of(state) == "train" and model.form == "converted":
            from .condense import condense_state_dict

            train = self.template(model.cfg, "train")
            return condense_state_dict(torch_to_paddle_state(state, train), model)
        return torch_to_paddle_state(state, model)

    def paddle_to_official(self, state: Mapping[str, np.ndarray], model) -> Dict[str, np.ndarray]:
        from .convert.keymap import paddle_to_torch_state

        return paddle_to_torch_state(state, model)

    def detect(self, state: Mapping[str, np.ndarray], layout: str = "torch", args=None,
               arch: Optional[str] = None, where: str = "checkpoint") -> Detection:
        """Decide the configuration (``--arch``, else the checkpoint's args, a preset or inference) and check it.

        Whatever decided it, the state must then fit it key for key and shape for shape, or
        :class:`ArchMismatchError` names the configuration and the first disagreeing keys.
        """
        from .convert.checks import check_shapes

        form = self.form_of(state)
        notes: List[str] = []
        if arch:
            cfg, label = self.config_from_arch(arch)
            source = "--arch"
            cfg = self._classes_from_weights(cfg, state, layout, form, notes)
        else:
            cfg, label, source = self._decide(state, layout, form, args, notes, where)
        what = f"{label} ({form} form)" if len(self.forms_of(cfg)) > 1 else label
        check_shapes(self.expected_shapes(cfg, form, layout), state, what, where)
        return Detection(self, cfg, form, label, source, notes)

    def _classes_from_weights(self, cfg, state, layout, form, notes):
        """An --arch configuration with the class count the weights' classifier shows (a fine-tuned preset,
        or a training config whose classes came from its data)."""
        try:
            n = self.infer_config(state, layout, form)[0].num_classes
        except Exception:  # the shape check that follows names what does not fit
            return cfg
        if n != cfg.num_classes:
            notes.append(f"the weights have {n} classes: num_classes={n} instead of {cfg.num_classes}")
            return cfg.replace(num_classes=n)
        return cfg

    def _decide(self, state, layout, form, args, notes, where):
        from .convert.checks import ArchMismatchError

        try:
            inferred, hidden = self.infer_config(state, layout, form)
        except (KeyError, IndexError, ValueError, ZeroDivisionError, TypeError) as e:
            raise ArchMismatchError(f"{where}: cannot infer the {self.name} architecture from its keys and shapes "
                                    f"({type(e).__name__}: {e}); pass --arch") from None

        def fits(cand):
            return inferred.replace(**{f: getattr(cand, f) for f in hidden}) == cand

        candidates = []
        from_args = self.config_from_args(args) if args is not None else None
        if from_args is not None:
            candidates.append((from_args, f"{self.describe(from_args)} (from the checkpoint's args)", "checkpoint args"))
        candidates += [(p, n, "preset") for n, p in self.presets.items()]
        for cand, label, source in candidates:
            if fits(cand):
                return cand, label, source
        classes = "num_classes"
        for cand, label, source in candidates:  # a preset fine-tuned to other classes
            if hasattr(cand, classes) and fits(cand.replace(**{classes: getattr(inferred, classes)})):
                n = getattr(inferred, classes)
                return cand.replace(**{classes: n}), f"{label} with {classes}={n}", source
        if from_args is not None:
            notes.append("the checkpoint's args disagree with its weights; the weights' shapes were used")
        if hidden:
            defaults = ", ".join(f"{f}={getattr(inferred, f)!r}" for f in hidden)
            notes.append(f"not stored in the weights, assumed defaults: {defaults} (set them with --arch FILE)")
        return inferred, "custom configuration", "inferred"

    # --- registration ----------------------------------------------------------------------
    def _register_models(self) -> None:
        for name, cfg in self.presets.items():
            _register(ModelEntry(name, self, name, "train"))
            if "converted" in self.forms_of(cfg):
                _register(ModelEntry(CONVERTED + name, self, name, "converted"))


# --- the registry ------------------------------------------------------------------------------
@dataclass(frozen=True)
class ModelEntry:
    name: str
    family: Family
    preset: str
    form: str

    def build(self, **kwargs):
        features_only = kwargs.pop("features_only", False)
        return self.family.build(self.preset, form=self.form, features_only=features_only, **kwargs)


_FAMILIES: Dict[str, Family] = {}
_MODELS: Dict[str, ModelEntry] = {}


def _register(entry: ModelEntry) -> None:
    if entry.name in _MODELS:
        raise ValueError(f"model {entry.name!r} registered twice")
    _MODELS[entry.name] = entry


def register_family(family: Family) -> Family:
    """Register ``family`` and a model per preset (and ``converted_<preset>`` where it condenses)."""
    if family.name in _FAMILIES:
        raise ValueError(f"model family {family.name!r} registered twice")
    _FAMILIES[family.name] = family
    family._register_models()
    return family


def _load_builtin() -> None:
    from . import families  # noqa: F401 (importing the packages registers them)


def families() -> Dict[str, Family]:
    """The registered families by name."""
    _load_builtin()
    return dict(_FAMILIES)


def get_family(name: str) -> Family:
    fams = families()
    if name not in fams:
        raise KeyError(f"unknown model family {name!r}; known: {', '.join(fams)}")
    return fams[name]


def list_models(family: Optional[str] = None) -> List[str]:
    """Registered model names (aliases not included), optionally of one family."""
    _load_builtin()
    return sorted(n for n, e in _MODELS.items() if family is None or e.family.name == family)


def model_entry(name: str) -> ModelEntry:
    """The entry of a registered name or alias (an alias of a preset keeps its ``converted_`` prefix)."""
    _load_builtin()
    if name in _MODELS:
        return _MODELS[name]
    conv = name.startswith(CONVERTED)
    for fam in _FAMILIES.values():
        target = fam.aliases.get(strip_converted(name))
        if target is not None:
            return _MODELS[(CONVERTED if conv else "") + target]
    raise KeyError(f"unknown model {name!r}; available: {', '.join(list_models())}")


def preset(name: str, **overrides):
    """The configuration of any registered model name or alias, with field overrides."""
    entry = model_entry(name)
    return entry.family.preset(entry.preset, **overrides)


def create_model(name: str, pretrained: Optional[str] = None, **kwargs):
    """Build a registered model; ``pretrained`` is a local weights file (ours, official or another layout).

    Keyword arguments override config fields (e.g. ``num_classes=10``) or pass ``features_only``.
    With ``pretrained`` and a changed ``num_classes``, the classifier is left freshly initialised.
    """
    n = kwargs.get("num_classes")
    if n is not None and (isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0):
        raise ValueError(f"num_classes must be a non-negative int (0: no classifier), got {n!r}")
    model = model_entry(name).build(**kwargs)
    if pretrained is not None and pretrained is not False:
        from .weights import load_pretrained

        load_pretrained(model, pretrained, skip_classifier="num_classes" in kwargs)
    return model


def family_of(obj) -> Family:
    """The family of a model, a config object or a registered model name."""
    _load_builtin()
    if isinstance(obj, str):
        return model_entry(obj).family
    cfg = getattr(obj, "cfg", obj)
    for fam in _FAMILIES.values():
        if fam.config_class is not None and isinstance(cfg, fam.config_class):
            return fam
    raise TypeError(f"not a model or config of a registered family: {type(obj).__name__}")


def find_family(state: Mapping[str, np.ndarray], where: str = "checkpoint") -> Family:
    """The family whose keys these are; a clear error naming the first keys when none claims them."""
    from .convert.checks import ArchMismatchError, first_keys

    fams = families()
    for fam in fams.values():
        if fam.claims(list(state)):
            return fam
    raise ArchMismatchError(f"{where}: not a checkpoint of a known architecture ({', '.join(fams)}); "
                            f"its keys start {first_keys(list(state))}")


__all__ = ["Family", "WeightsInfo", "Detection", "ModelEntry", "register_family", "families",
           "get_family", "list_models", "model_entry", "preset", "create_model", "family_of", "find_family",
           "strip_converted", "IMAGENET_MEAN", "IMAGENET_STD", "CIFAR10_MEAN", "CIFAR10_STD", "IMAGENET_EVAL",
           "CIFAR_EVAL"]
