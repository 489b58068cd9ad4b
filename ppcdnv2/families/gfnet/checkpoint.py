"""GFNet checkpoints (blackfeather-wang/GFNet-Pytorch) as numpy, read without torch and without pickle code.

Two kinds of file hold a GFNet:

* **released** (the pre-trained files that upstream's ``inference.py`` loads): ``model_name``,
  ``patch_size``, the four state dicts ``model_prime_state_dict`` / ``model_state_dict`` (saved from
  ``nn.DataParallel``: every key starts with ``module.``), ``fc`` and ``policy``, and the evaluation
  record ``model_flops``, ``policy_flops``, ``fc_flops``, ``flops`` (one per step),
  ``anytime_classification``, ``dynamic_threshold`` (float32 [39, T]) and
  ``budgeted_batch_classification`` (``[expected flops, accuracy]``, 39 budgets). Written by torch 1.3.1
  from GPU tensors (legacy format, ``torch.cuda.*Storage``, GRU weights as views of one shared storage):
  :func:`ppcdnv2.convert.torch_file.load_torch_file` reads all of that.
* **training** (upstream ``train.py``'s ``save_checkpoint``: ``checkpoint.pth.tar`` / ``model_best.pth.tar``
  in ``<work_dirs>/GF-<arch>_patch-size-<P>_T<T>_train-stage<S>/``): ``epoch``, ``model_state_dict``,
  ``model_prime_state_dict`` (from ``model.module``: no prefix), ``fc``, ``acc``, ``best_acc``,
  ``optimizer``, ``ppo_optimizer`` and ``policy`` (the last three ``None`` in training stage 1). It names
  neither the architecture nor the patch size: they are taken from the run directory's name when it has
  upstream's form, or given by the caller.

This module needs numpy only (no torch, no paddle).
"""
from __future__ import annotations

import math
import numbers
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional

import numpy as np

from ...weights import WeightsError

__all__ = ["GFNetCheckpoint", "GFNetCheckpointError", "read_gfnet_checkpoint", "parse_gfnet_checkpoint",
           "is_gfnet_checkpoint", "RELEASE_KEYS", "TRAIN_KEYS", "STATE_DICT_FIELDS"]

STATE_DICT_FIELDS = ("model_prime_state_dict", "model_state_dict", "fc", "policy")
BACKBONE_FIELDS = ("model_prime_state_dict", "model_state_dict")
# the top-level keys of a released file, in the release's order
RELEASE_KEYS = ("model_name", "patch_size", "model_prime_state_dict", "model_state_dict", "fc", "policy",
                "model_flops", "policy_flops", "fc_flops", "flops", "anytime_classification",
                "dynamic_threshold", "budgeted_batch_classification")
# upstream train.py save_checkpoint(...)
TRAIN_KEYS = ("epoch", "model_state_dict", "model_prime_state_dict", "fc", "acc", "best_acc", "optimizer",
              "ppo_optimizer", "policy")
_RELEASE_ONLY = tuple(k for k in RELEASE_KEYS if k not in STATE_DICT_FIELDS)
_RUN_DIR = re.compile(r"^GF-(?P<arch>.+)_patch-size-(?P<patch>\d+)_T(?P<T>\d+)_train-stage(?P<stage>-?\d+)$")
_MODULE = "module."


class GFNetCheckpointError(WeightsError):
    """A file or object that is not a usable GFNet checkpoint; the message names the file and the field."""


@dataclass
class GFNetCheckpoint:
    """One GFNet checkpoint, every tensor a numpy array exactly as stored (dtype and bits).

    ``model_prime_state_dict`` / ``model_state_dict`` are the global (glance) and local (focus) encoders'
    state dicts in upstream's torch layout with ``module.`` stripped; ``fc`` (``Full_layer``) and ``policy``
    (``ActorCritic``) as stored. Key order is the file's. The evaluation record (``flops`` & co.) is
    ``None`` in training checkpoints, as is ``policy`` in a training-stage-1 checkpoint.
    """

    path: Path
    kind: str  # "release" or "train"
    model_name: Optional[str]
    patch_size: Optional[int]
    model_prime_state_dict: Dict[str, np.ndarray]
    model_state_dict: Dict[str, np.ndarray]
    fc: Dict[str, np.ndarray]
    policy: Optional[Dict[str, np.ndarray]]
    dynamic_threshold: Optional[np.ndarray] = None  # float32 [39, T], bit-exact
    flops: Optional[List[float]] = None  # per step, millions of multiply-adds up to and including step t
    model_flops: Optional[float] = None
    policy_flops: Optional[float] = None
    fc_flops: Optional[float] = None
    anytime_classification: Optional[List[float]] = None  # top-1 % per step
    budgeted_batch_classification: Optional[List[List[float]]] = None  # [expected flops list, accuracy list]
    T: Optional[int] = None  # sequence length: len(flops), or the training run's T
    epoch: Optional[int] = None  # training checkpoints
    acc: Optional[float] = None
    best_acc: Optional[float] = None
    train_stage: Optional[int] = None  # from the training run's directory name
    extra: Dict[str, Any] = field(default_factory=dict)  # every other top-level field (optimizer states, ...)

    @property
    def fc_rnn(self) -> bool:
        """``Full_layer(fc_rnn=True)`` (GRU + Linear: ResNet, DenseNet, RegNet) or the cascade of ``fc_k``."""
        return "rnn.weight_ih_l0" in self.fc

    @property
    def policy_conv(self) -> Optional[bool]:
        """The policy's state encoder starts with a 1x1 conv (MobileNetV3, EfficientNet, RegNet)."""
        if self.policy is None:
            return None
        w = self.policy.get("state_encoder.0.weight")
        return None if w is None else w.ndim == 4

    def state_dicts(self) -> Dict[str, Optional[Dict[str, np.ndarray]]]:
        return {name: getattr(self, name) for name in STATE_DICT_FIELDS}


def is_gfnet_checkpoint(obj: Any) -> bool:
    """Whether a loaded checkpoint object (e.g. from ``load_torch_file``) is a GFNet checkpoint: a dict
    holding the glance and focus encoders and the classifier (``model_prime_state_dict``,
    ``model_state_dict``, ``fc``) as state dicts, and a ``policy`` entry (a state dict; ``None`` only in a
    training-stage-1 checkpoint)."""
    if not isinstance(obj, Mapping):
        return False
    for name in ("model_prime_state_dict", "model_state_dict", "fc"):
        if not _is_state_dict(obj.get(name)):
            return False
    if "policy" not in obj:
        return False
    return _is_state_dict(obj["policy"]) or (obj["policy"] is None and _is_train(obj))


def read_gfnet_checkpoint(path, *, model_name: Optional[str] = None, patch_size: Optional[int] = None,
                          T: Optional[int] = None) -> GFNetCheckpoint:
    """A released or ``train.py`` GFNet checkpoint file, read safely without torch (see module doc).

    ``model_name`` / ``patch_size`` / ``T`` fill in what a training checkpoint does not record (beyond its
    run directory's name); given for a file that records them, they must agree. Raises
    :class:`~ppcdnv2.convert.torch_file.TorchFileError` for an unreadable, truncated or unsafe file and
    :class:`GFNetCheckpointError` for a readable file that is not a (complete) GFNet checkpoint.
    """
    from ...convert.torch_file import load_torch_file

    path = Path(path)
    return parse_gfnet_checkpoint(load_torch_file(path), path, model_name=model_name, patch_size=patch_size, T=T)


def parse_gfnet_checkpoint(obj: Any, path="checkpoint", *, model_name: Optional[str] = None,
                           patch_size: Optional[int] = None, T: Optional[int] = None) -> GFNetCheckpoint:
    """:func:`read_gfnet_checkpoint` for an object already loaded (``load_torch_file``); ``path`` names it
    in errors (and, for training checkpoints, its run directory gives the model name and patch size)."""
    path = Path(path)
    if not isinstance(obj, Mapping):
        raise GFNetCheckpointError(f"{path}: not a GFNet checkpoint: holds a {type(obj).__name__}, not a dict")
    release = any(k in obj for k in _RELEASE_ONLY)
    train = not release and _is_train(obj)
    if not release:
        missing = [k for k in STATE_DICT_FIELDS if k not in obj]
        if missing:
            raise GFNetCheckpointError(
                f"{path}: not a GFNet checkpoint: no field {', '.join(map(repr, missing))} (top-level keys: "
                f"{', '.join(map(repr, list(obj)[:16]))}); a released file has {', '.join(RELEASE_KEYS)}; "
                f"a train.py checkpoint has {', '.join(TRAIN_KEYS)}")
        release = not train  # the state dicts without any record: report the release's missing fields
    required = RELEASE_KEYS if release else STATE_DICT_FIELDS
    missing = [k for k in required if k not in obj]
    if missing:
        kind = "released GFNet checkpoint" if release else "GFNet train.py checkpoint"
        raise GFNetCheckpointError(f"{path}: not a complete {kind}: missing field"
                                   f"{'s' if len(missing) > 1 else ''} {', '.join(map(repr, missing))}")

    sds = {}
    for name in STATE_DICT_FIELDS:
        value = obj[name]
        if value is None and name == "policy" and train:
            sds[name] = None  # training stage 1 has no policy yet
            continue
        sds[name] = _state_dict(value, name, path, strip=name in BACKBONE_FIELDS)

    ck = GFNetCheckpoint(path=path, kind="release" if release else "train", model_name=None, patch_size=None,
                         **sds)
    if release:
        ck.model_name = _str(obj["model_name"], "model_name", path)
        ck.patch_size = _int(obj["patch_size"], "patch_size", path)
        ck.flops = _floats(obj["flops"], "flops", path)
        ck.T = len(ck.flops)
        if ck.T < 1:
            raise GFNetCheckpointError(f"{path}: field 'flops' is empty (one entry per step expected)")
        for name in ("model_flops", "policy_flops", "fc_flops"):
            setattr(ck, name, _float(obj[name], name, path))
        ck.anytime_classification = _floats(obj["anytime_classification"], "anytime_classification", path)
        ck.budgeted_batch_classification = _budgeted(obj["budgeted_batch_classification"], path)
        ck.dynamic_threshold = _threshold(obj["dynamic_threshold"], ck.T, path)
        if len(ck.anytime_classification) != ck.T:
            raise GFNetCheckpointError(f"{path}: field 'anytime_classification' has "
                                       f"{len(ck.anytime_classification)} entries, 'flops' has {ck.T}")
        ck.extra = {k: v for k, v in obj.items() if k not in RELEASE_KEYS}
    else:
        run = _RUN_DIR.match(path.parent.name)
        if run:
            ck.model_name, ck.patch_size = run["arch"], int(run["patch"])
            ck.T, ck.train_stage = int(run["T"]), int(run["stage"])
        if "epoch" in obj and obj["epoch"] is not None:
            ck.epoch = _int(obj["epoch"], "epoch", path)
        for name in ("acc", "best_acc"):
            if obj.get(name) is not None:
                setattr(ck, name, _float(obj[name], name, path))
        ck.extra = {k: v for k, v in obj.items()
                    if k not in STATE_DICT_FIELDS and k not in ("epoch", "acc", "best_acc")}
    for name, given in (("model_name", model_name), ("patch_size", patch_size), ("T", T)):
        if given is None:
            continue
        stored = getattr(ck, name)
        if stored is None:
            setattr(ck, name, given)
        elif stored != given:
            raise GFNetCheckpointError(f"{path}: {name} {given!r} was given, but the checkpoint "
                                       f"{'records' if release else 'run directory names'} {stored!r}")
    return ck


# --- validation helpers ----------------------------------------------------------------------------
def _is_state_dict(value) -> bool:
    return (isinstance(value, Mapping) and len(value) > 0
            and all(isinstance(k, str) and isinstance(v, np.ndarray) for k, v in value.items()))


def _is_train(obj: Mapping) -> bool:
    return any(k in obj for k in ("epoch", "best_acc", "acc", "optimizer", "ppo_optimizer"))


def _state_dict(value, name, path, strip=False) -> Dict[str, np.ndarray]:
    if not isinstance(value, Mapping) or not value:
        what = "empty" if isinstance(value, Mapping) else f"a {type(value).__name__}"
        raise GFNetCheckpointError(f"{path}: field {name!r} must be a state dict of tensors, but is {what}")
    for k, v in value.items():
        if not isinstance(k, str) or not isinstance(v, np.ndarray) or v.dtype == object:
            raise GFNetCheckpointError(f"{path}: field {name!r}: entry {k!r} is a {type(v).__name__}, not a tensor")
    out = dict(value)  # the file's key order; OrderedDict attributes (_metadata) are not weights
    if strip:
        prefixed = [k.startswith(_MODULE) for k in out]
        if all(prefixed):
            out = {k[len(_MODULE):]: v for k, v in out.items()}
        elif any(prefixed):
            some = next(k for k in out if k.startswith(_MODULE))
            other = next(k for k in out if not k.startswith(_MODULE))
            raise GFNetCheckpointError(f"{path}: field {name!r} mixes keys with and without the DataParallel "
                                       f"prefix 'module.' (e.g. {some!r} and {other!r})")
    return out


def _number(value) -> bool:
    if isinstance(value, np.ndarray) and value.ndim == 0:
        value = value[()]
    return isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_))


def _float(value, name, path) -> float:
    if not _number(value):
        raise GFNetCheckpointError(f"{path}: field {name!r} must be a number, got {type(value).__name__}")
    out = float(value[()] if isinstance(value, np.ndarray) else value)
    if not math.isfinite(out):
        raise GFNetCheckpointError(f"{path}: field {name!r} is {out}")
    return out


def _int(value, name, path) -> int:
    if isinstance(value, np.ndarray) and value.ndim == 0:
        value = value[()]
    if not isinstance(value, numbers.Integral) or isinstance(value, (bool, np.bool_)):
        raise GFNetCheckpointError(f"{path}: field {name!r} must be an integer, got {value!r:.60}")
    return int(value)


def _str(value, name, path) -> str:
    if not isinstance(value, str) or not value:
        raise GFNetCheckpointError(f"{path}: field {name!r} must be a non-empty string, got {value!r:.60}")
    return value


def _floats(value, name, path) -> List[float]:
    if isinstance(value, np.ndarray) and value.ndim == 1 and value.dtype.kind in "iuf":
        return [float(v) for v in value]
    if not isinstance(value, (list, tuple)) or not all(_number(v) for v in value):
        raise GFNetCheckpointError(f"{path}: field {name!r} must be a list of numbers, got {value!r:.80}")
    return [float(v[()] if isinstance(v, np.ndarray) else v) for v in value]


def _budgeted(value, path) -> List[List[float]]:
    name = "budgeted_batch_classification"
    if not isinstance(value, (list, tuple)) or len(value) != 2:
        raise GFNetCheckpointError(f"{path}: field {name!r} must be [expected flops list, accuracy list], "
                                   f"got {value!r:.80}")
    flops, acc = (_floats(v, f"{name}[{i}]", path) for i, v in enumerate(value))
    if len(flops) != len(acc):
        raise GFNetCheckpointError(f"{path}: field {name!r}: {len(flops)} expected flops but {len(acc)} accuracies")
    return [flops, acc]


def _threshold(value, T, path) -> np.ndarray:
    name = "dynamic_threshold"
    if not isinstance(value, np.ndarray):
        raise GFNetCheckpointError(f"{path}: field {name!r} must be a float32 tensor [39, T], "
                                   f"got {type(value).__name__}")
    if value.dtype != np.float32 or value.ndim != 2 or value.shape[1] != T:
        raise GFNetCheckpointError(f"{path}: field {name!r} must be a float32 tensor [budgets, T={T}] "
                                   f"(T = len(flops)), got {value.dtype} {list(value.shape)}")
    return value  # as stored: never recomputed or cast (thresholds are compared with >= exactly)
