"""Model families the converter knows: how to recognise, size, build and map each one.

The converter (reading, checks, writing, ``--verify``, the CLI) is generic; a family contributes a
:class:`FamilySpec` subclass that answers a few questions about its checkpoints (is this state dict
mine, which configuration does it have, which presets exist, how to build the Paddle model and the
torch reference) and registers it with :func:`register_family`. Key mapping and condensation are
shared: the renames are derived from the Paddle model's layers (``keymap``) and ``condense_state_dict``
handles every learned layer, so most families override only :meth:`FamilySpec.infer_config`.
"""
from __future__ import annotations

import dataclasses
import json
from collections import OrderedDict
from dataclasses import dataclass, field
from importlib import import_module
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Tuple

import numpy as np

from ..weights import WeightsError, state_dict_numpy
from .checks import ArchMismatchError, Shapes, check_shapes, first_keys
from .keymap import paddle_to_torch_state, torch_to_paddle_state

@dataclass
class Detection:
    """What a checkpoint holds: family, configuration, form and how the configuration was decided."""

    family: "FamilySpec"
    cfg: Any
    form: str  # "train" | "converted"
    label: str  # preset name, "custom ..." or the --arch value
    source: str  # "--arch", "checkpoint args", "preset", "inferred"
    notes: List[str] = field(default_factory=list)


class FamilySpec:
    """Base class: override ``name``, ``config_class``, ``presets``, :meth:`claims`, :meth:`infer_config`,
    :meth:`build` and :meth:`build_reference`; the rest works for any family built from the shared layers."""

    name = "?"
    config_class: Any = None
    presets: Mapping[str, Any] = {}
    # config fields that weights cannot show (e.g. activation choice): taken from a preset, the
    # checkpoint's args or --arch; defaults otherwise, with a note
    hidden_fields: Tuple[str, ...] = ()
    # dotted name of a function ``f(config dict, form=...)`` building any configuration, for load hints
    build_function: Optional[str] = None

    # --- to override ----------------------------------------------------------------------
    def claims(self, keys) -> bool:
        """Whether these state-dict keys look like this family's."""
        raise NotImplementedError

    def infer_config(self, state: Mapping[str, np.ndarray], layout: str, form: str) -> Tuple[Any, List[str]]:
        """The configuration the shapes show, and the names of fields they did not show."""
        raise NotImplementedError

    def build(self, cfg, form: str):
        """The Paddle model."""
        raise NotImplementedError

    def build_reference(self, cfg, form: str):
        """The torch reference model with the official layout (``--verify``); may need torch."""
        raise NotImplementedError

    def reference_in_form(self, ref, form: str):
        """The loaded torch reference turned into ``form`` (``--verify`` of a training checkpoint written
        condensed). Identity where condensing leaves the logits unchanged; a family whose condensation
        changes them (V1's classifier) returns the upstream conversion of ``ref``."""
        return ref

    def config_from_args(self, args) -> Optional[Any]:
        """The configuration recorded in a trainer checkpoint's ``args`` (None if there is none)."""
        return None

    def model_name(self, cfg, form: str) -> Optional[str]:
        """The ``ppcdnv2.create_model`` name that builds exactly this, if any: a preset equal to ``cfg``
        that is registered as a model (``name``, or ``converted_name`` for the condensed form)."""
        from ..models import list_models  # importing the models registers their presets

        for name, p in self.presets.items():
            if p == cfg:
                name = name if form == "train" else f"converted_{name}"
                return name if name in list_models() else None
        return None

    def paddle_load_hint(self, cfg, form: str, path: str) -> str:
        """One line of Python that loads converted weights at ``path``."""
        name = self.model_name(cfg, form)
        if name:
            return f"ppcdnv2.create_model({name!r}, pretrained={path!r})"
        if self.build_function:
            return (f"ppcdnv2.weights.load_pretrained({self.build_function}({cfg.to_dict()}, form={form!r}), "
                    f"{path!r})")
        return f"build the {self.name} model ({form} form) for {self.describe(cfg)}, then ppcdnv2.weights.load_pretrained(model, {path!r})"

    # --- generic ----------------------------------------------------------------------------
    def form_of(self, state: Mapping[str, np.ndarray]) -> str:
        return "train" if any(k.endswith("._mask") for k in state) else "converted"

    def config_from_arch(self, arch: str) -> Tuple[Any, str]:
        """``--arch``: a preset name (``converted_`` prefix allowed) or a .json/.yaml file of config fields."""
        name = arch[len("converted_"):] if arch.startswith("converted_") else arch
        if name in self.presets:
            return self.presets[name], name
        path = Path(arch)
        if path.suffix.lower() in (".json", ".yaml", ".yml"):
            if not path.is_file():
                raise WeightsError(f"--arch {arch}: no such file")
            text = path.read_text()
            try:
                if path.suffix.lower() == ".json":
                    fields = json.loads(text)
                else:
                    import yaml

                    fields = yaml.safe_load(text)
                return self.config_class.from_dict(fields), f"{path.name}"
            except (ValueError, TypeError, AttributeError) as e:
                raise WeightsError(f"--arch {arch}: not a {self.name} configuration ({e})") from None
            except Exception as e:  # yaml errors
                raise WeightsError(f"--arch {arch}: unreadable ({type(e).__name__}: {e})") from None
        raise WeightsError(f"--arch {arch!r}: not a {self.name} preset ({', '.join(self.presets)}) "
                           f"nor a .json/.yaml configuration file")

    def template(self, cfg, form: str):
        """A model used only for its structure (key names, shapes, layer kinds); cached, never loaded."""
        cache = self.__dict__.setdefault("_templates", OrderedDict())
        key = (cfg, form)
        if key not in cache:
            cache[key] = self.build(cfg, form)
            while len(cache) > 4:
                cache.popitem(last=False)
        return cache[key]

    def expected_shapes(self, cfg, form: str, layout: str) -> Shapes:
        """Every key of the state dict of ``cfg``/``form`` in ``layout`` with its acceptable shape(s)."""
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
        from ..condense import condense_state_dict

        if self.form_of(state) == "train" and model.form == "converted":
            train = self.template(model.cfg, "train")
            return condense_state_dict(torch_to_paddle_state(state, train), model)
        return torch_to_paddle_state(state, model)

    def paddle_to_official(self, state: Mapping[str, np.ndarray], model) -> Dict[str, np.ndarray]:
        return paddle_to_torch_state(state, model)

    def describe(self, cfg) -> str:
        for name, p in self.presets.items():
            if p == cfg:
                return name
        if dataclasses.is_dataclass(cfg):
            return f"custom {self.name} {json.dumps(cfg.to_dict() if hasattr(cfg, 'to_dict') else dataclasses.asdict(cfg))}"
        return f"custom {self.name} {cfg}"

    def detect(self, state: Mapping[str, np.ndarray], layout: str = "torch", args=None,
               arch: Optional[str] = None, where: str = "checkpoint") -> Detection:
        """Decide the configuration (``--arch``, else the checkpoint's args, a preset or inference) and check it.

        Whatever decided it, the state must then fit it key for key and shape for shape, or
        :class:`ArchMismatchError` names the configuration and the first disagreeing keys.
        """
        form = self.form_of(state)
        notes: List[str] = []
        if arch:
            cfg, label = self.config_from_arch(arch)
            source = "--arch"
        else:
            cfg, label, source = self._decide(state, layout, form, args, notes, where)
        check_shapes(self.expected_shapes(cfg, form, layout), state, f"{label} ({form} form)", where)
        return Detection(self, cfg, form, label, source, notes)

    def _decide(self, state, layout, form, args, notes, where):
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


# --- registry ---------------------------------------------------------------------------------
_FAMILIES: Dict[str, FamilySpec] = {}
_BUILTIN = ("ppcdnv2.convert.cdnv2", "ppcdnv2.convert.condensenet")  # modules that register the built-in families when imported


def register_family(spec: FamilySpec) -> FamilySpec:
    if spec.name in _FAMILIES and type(_FAMILIES[spec.name]) is not type(spec):
        raise ValueError(f"converter family {spec.name!r} registered twice")
    _FAMILIES[spec.name] = spec
    return spec


def families() -> Dict[str, FamilySpec]:
    for module in _BUILTIN:
        import_module(module)
    return dict(_FAMILIES)


def get_family(name: str) -> FamilySpec:
    fams = families()
    if name not in fams:
        raise WeightsError(f"unknown model family {name!r}; known: {', '.join(fams)}")
    return fams[name]


def find_family(state: Mapping[str, np.ndarray], where: str = "checkpoint") -> FamilySpec:
    """The family whose keys these are; a clear error naming the first keys when none claims them."""
    fams = families()
    for spec in fams.values():
        if spec.claims(list(state)):
            return spec
    raise ArchMismatchError(f"{where}: not a checkpoint of a known architecture ({', '.join(fams)}); "
                            f"its keys start {first_keys(list(state))}")


__all__ = ["Detection", "FamilySpec", "register_family", "families", "get_family", "find_family"]
