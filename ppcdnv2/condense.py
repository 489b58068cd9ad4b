"""Training form → condensed form, vectorised (no per-channel Python loops).

Works on state dicts of numpy arrays so the converter can condense an official training checkpoint
without building anything but the target model. Channel placement follows the official conversion
exactly (checked against the official converted fixture in the tests): CondenseLGC keeps each
group's surviving input channels in ascending order, group after group; CondenseSFR numbers each
group's surviving output channels in ascending order and records them as scatter targets.
"""
from __future__ import annotations

from typing import Dict, Tuple

import numpy as np

from .layers import CondenseLGC, CondenseLinear, CondenseSFR, condense_linear_index

_BN = ("weight", "bias", "_mean", "_variance")


class NotCondensedError(ValueError):
    """A learned layer whose masks have not reached the final stage cannot be condensed exactly."""


def _group_keep(pattern: np.ndarray, name: str, factor: int, what: str) -> np.ndarray:
    """``pattern`` [G, R, C] 0/1 per group: check it is shared in the group and keeps C/factor; → [G, keep]."""
    if not np.all(pattern == pattern[:, :1]):
        raise NotCondensedError(f"{name}: mask differs within a group; not a learned-group-conv mask")
    keep = pattern[:, 0] != 0
    expected = keep.shape[1] // factor
    counts = keep.sum(1)
    if not np.all(counts == expected):
        raise NotCondensedError(
            f"{name}: groups keep {sorted(set(counts.tolist()))} {what} channels, expected exactly {expected} "
            f"(1/{factor}); the layer is not fully condensed — train until progress >= 0.5 first")
    return np.nonzero(keep)[1].reshape(keep.shape[0], expected)


def condense_lgc(weight: np.ndarray, mask: np.ndarray, groups: int, factor: int,
                 name: str = "LGC") -> Tuple[np.ndarray, np.ndarray]:
    """Dense masked weight [O, I, k, k] → (index [G*I/factor], grouped weight [O, I/factor, k, k])."""
    out_ch, in_ch = weight.shape[:2]
    per_group = out_ch // groups
    # output row r belongs to group r % G: view rows as [k, g]
    pattern = (mask[:, :, 0, 0] != 0).reshape(per_group, groups, in_ch).transpose(1, 0, 2)
    keep = _group_keep(pattern, name, factor, "input")  # [G, I/factor]
    w = weight.reshape(per_group, groups, in_ch, *weight.shape[2:]).swapaxes(0, 1)  # [G, O/G, I, k, k]
    w = np.take_along_axis(w, keep[:, None, :, None, None], axis=2)
    return keep.reshape(-1).astype(np.int64), w.reshape(out_ch, keep.shape[1], *weight.shape[2:])


def condense_sfr(weight: np.ndarray, mask: np.ndarray, groups: int, factor: int,
                 name: str = "SFR") -> Tuple[np.ndarray, np.ndarray]:
    """Dense masked weight [O, I, k, k] → (targets [G*O/factor], grouped weight [G*O/factor, I/G, k, k])."""
    out_ch, in_ch = weight.shape[:2]
    per_group = in_ch // groups
    # input column c belongs to group c % G: view columns as [k, g]
    pattern = (mask[:, :, 0, 0] != 0).reshape(out_ch, per_group, groups).transpose(2, 1, 0)
    keep = _group_keep(pattern, name, factor, "output")  # [G, O/factor]
    w = weight.reshape(out_ch, per_group, groups, *weight.shape[2:]).transpose(2, 0, 1, 3, 4)  # [G, O, I/G, k, k]
    w = np.take_along_axis(w, keep[:, :, None, None, None], axis=1)
    return keep.reshape(-1).astype(np.int64), w.reshape(-1, per_group, *weight.shape[2:])


def condense_state_dict(state: Dict[str, np.ndarray], target) -> Dict[str, np.ndarray]:
    """Training-form state (Paddle key layout) → the state of ``target``, a converted-form model."""
    out = {}
    consumed = set()
    for name, layer in target.named_sublayers():
        if isinstance(layer, CondenseLinear):
            out.update(condense_linear_state(state, name, layer.in_features))
            continue
        if not isinstance(layer, (CondenseLGC, CondenseSFR)):
            continue
        try:
            weight, mask = state[f"{name}.conv.weight"], state[f"{name}._mask"]
        except KeyError as e:
            raise KeyError(f"training-form state has no {e.args[0]!r}; is it a training-form checkpoint?") from None
        bn = {p: state[f"{name}.norm.{p}"] for p in _BN}
        if isinstance(layer, CondenseLGC):
            factor = weight.shape[1] * layer.groups // layer.in_channels
            index, w = condense_lgc(weight, mask, layer.groups, factor, name)
            bn = {p: v[index] for p, v in bn.items()}
        else:
            factor = weight.shape[0] * layer.groups // layer.conv_channels
            index, w = condense_sfr(weight, mask, layer.groups, factor, name)
        out[f"{name}.index"], out[f"{name}.conv.weight"] = index, w
        out.update({f"{name}.norm.{p}": v for p, v in bn.items()})
        consumed.update(f"{name}.{s}" for s in ("_mask", "_count", "_stage", "conv.weight"))
        consumed.update(f"{name}.norm.{p}" for p in _BN)
    for key in target.state_dict():
        if key not in out:
            if key not in state:
                raise KeyError(f"training-form state has no {key!r}")
            out[key] = state[key]
    return out


def condense_linear_state(state: Dict[str, np.ndarray], name: str, kept: int) -> Dict[str, np.ndarray]:
    """CondenseNet (V1) classifier: dense Linear ``name`` (Paddle layout [in, out]) → CondenseLinear state."""
    try:
        weight, bias = state[f"{name}.weight"], state[f"{name}.bias"]
    except KeyError as e:
        raise KeyError(f"training-form state has no {e.args[0]!r}; is it a training-form checkpoint?") from None
    index = condense_linear_index(np.asarray(weight).T, kept)
    return {f"{name}.index": index, f"{name}.linear.weight": np.asarray(weight)[index],
            f"{name}.linear.bias": np.asarray(bias)}


def condense(model):
    """The condensed (converted) form of a fully condensed training-form model of a family that condenses."""
    from .registry import family_of

    family = family_of(model)
    if not family.condensable:
        raise ValueError(f"{family.title} has one form only; there is nothing to condense")
    if model.form != "train":
        raise ValueError(f"condense() expects a training-form {family.title} (form='train'), got form={model.form!r}")
    return family.condense(model)


def condensed_equivalent(model):
    """The training-form model that computes exactly what ``condense(model)`` computes (``model`` itself,
    except for families whose condensation changes the logits: CondenseNet V1's classifier)."""
    from .registry import family_of

    return family_of(model).condensed_equivalent(model)


def condense_model(model):
    """Condensed twin of a training-form model built from the shared learned layers (its state condensed
    by :func:`condense_state_dict`, loaded strictly into a converted-form model of the same config)."""
    from .weights import load_state_dict, state_dict_numpy

    target = type(model)(model.cfg, form="converted", features_only=model.features_only)
    load_state_dict(target, condense_state_dict(state_dict_numpy(model), target))
    target.train() if model.training else target.eval()
    return target


def pruned_classifier_twin(model):
    """CondenseNet (V1): a copy of the training-form ``model`` whose classifier weights for the features
    that condensing drops are zero.

    Upstream's conversion keeps only ``classifier_keep`` (0.5) of the classifier's input features, which
    changes the logits; this twin computes what the condensed model computes, so its predictions can be
    checked against it.
    """
    from .weights import load_state_dict, state_dict_numpy

    if model.form != "train" or model.cfg.num_classes <= 0:
        return model
    kept = model.cfg.classifier_features
    if kept >= model.num_features:
        return model
    state = state_dict_numpy(model)
    weight = state["classifier.weight"]  # Paddle layout [in, out]
    dropped = np.ones(weight.shape[0], bool)
    dropped[condense_linear_index(weight.T, kept)] = False
    state["classifier.weight"] = np.where(dropped[:, None], np.zeros_like(weight), weight)
    twin = type(model)(model.cfg, form="train", features_only=model.features_only)
    load_state_dict(twin, state)
    twin.train() if model.training else twin.eval()
    return twin
