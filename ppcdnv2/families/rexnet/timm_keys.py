"""State-dict key mappings for ReXNet between layouts (numpy only, no framework).

Layouts:

* **upstream** (clovaai/rexnet, torch): ``features.0/1`` stem, ``features.{3+i}.out.{j}`` blocks,
  ``features.{3+n}/{4+n}`` penultimate conv/BN, ``output.1`` (rexnet) or ``output.0/1/4`` (lite).
* **ours** (Paddle, :class:`~.model.ReXNet`): the upstream names with Paddle's BatchNorm buffer names
  (``_mean``/``_variance``) and no ``num_batches_tracked``.
* **timm** (``timm.models.rexnet``, ReXNetV1 only): ``stem.conv/bn``, ``features.{i}.conv_exp/conv_dw/
  se.fc1/se.bn/se.fc2/conv_pwl``, ``features.{n}.conv/bn`` penultimate, and a Linear ``head.fc``
  (``[out, in]`` where upstream has a 1x1 conv ``[out, in, 1, 1]``).
* **ppim** (PaddlePaddle model zoo, ``ppim.rexnet_1_0`` ...): its ``ReXNet`` reuses the upstream module
  structure with Paddle BatchNorms, so its keys are ours exactly; :func:`ppim_to_ours` and
  :func:`ours_to_ppim` only validate (a changed ppim release would then fail loudly, not silently).

Why structural (from :func:`~.config.channel_plan`) rather than by position: the index of a layer
inside a block's ``out`` depends on whether the block expands and has SE, and safetensors files list
keys alphabetically, so key order cannot be trusted.
"""
from __future__ import annotations

from typing import Dict, Iterable, List, Mapping, Tuple

import numpy as np

from .config import ReXNetConfig, channel_plan

__all__ = ["upstream_modules", "upstream_keys", "paddle_keys", "timm_to_upstream", "upstream_to_timm",
           "is_timm_layout", "is_upstream_layout", "upstream_to_paddle", "paddle_to_upstream",
           "ppim_to_ours", "ours_to_ppim"]

# parameter/buffer leaves per module kind, in torch's state-dict order
_TORCH_LEAVES = {
    "conv": ("weight",),
    "convb": ("weight", "bias"),
    "bn": ("weight", "bias", "running_mean", "running_var", "num_batches_tracked"),
}
_PADDLE_BN = {"running_mean": "_mean", "running_var": "_variance"}
_OPTIONAL = {"num_batches_tracked"}


def upstream_modules(cfg: ReXNetConfig) -> List[Tuple[str, str, str]]:
    """``(upstream_prefix, timm_prefix, kind)`` for every weighted module, in upstream order.

    ``timm_prefix`` is ``""`` where timm has no counterpart (the lite head; timm has no lite).
    ``kind`` is ``conv`` (no bias), ``convb`` (with bias), ``bn``, or ``head`` (the final classifier).
    """
    plan = channel_plan(cfg)
    lite = cfg.variant == "lite"
    mods: List[Tuple[str, str, str]] = [("features.0", "stem.conv", "conv"), ("features.1", "stem.bn", "bn")]
    for i, b in enumerate(plan.blocks):
        up, tm = f"features.{3 + i}.out", f"features.{i}"
        j = 0
        if b.t != 1:
            mods += [(f"{up}.{j}", f"{tm}.conv_exp.conv", "conv"), (f"{up}.{j + 1}", f"{tm}.conv_exp.bn", "bn")]
            j += 3  # conv, BN, activation
        mods += [(f"{up}.{j}", f"{tm}.conv_dw.conv", "conv"), (f"{up}.{j + 1}", f"{tm}.conv_dw.bn", "bn")]
        j += 3 if lite else 2  # lite's depthwise has its own ReLU6
        if b.use_se:
            mods += [(f"{up}.{j}.fc.0", f"{tm}.se.fc1", "convb"), (f"{up}.{j}.fc.1", f"{tm}.se.bn", "bn"),
                     (f"{up}.{j}.fc.3", f"{tm}.se.fc2", "convb")]
            j += 1
        if not lite:
            j += 1  # the ReLU6 after the depthwise conv / SE
        mods += [(f"{up}.{j}", f"{tm}.conv_pwl.conv", "conv"), (f"{up}.{j + 1}", f"{tm}.conv_pwl.bn", "bn")]
    n = len(plan.blocks)
    mods += [(f"features.{3 + n}", f"features.{n}.conv", "conv"), (f"features.{4 + n}", f"features.{n}.bn", "bn")]
    if cfg.num_classes > 0:
        if lite:
            mods += [("output.0", "", "convb"), ("output.1", "", "bn"), ("output.4", "", "head")]
        else:
            mods.append(("output.1", "head.fc", "head"))
    elif lite:
        mods += [("output.0", "", "convb"), ("output.1", "", "bn")]
    return mods


def _leaves(kind: str) -> Tuple[str, ...]:
    return _TORCH_LEAVES["convb" if kind == "head" else kind]


def upstream_keys(cfg: ReXNetConfig) -> List[str]:
    """Every key of the upstream (torch) state dict, in order."""
    return [f"{p}.{leaf}" for p, _, kind in upstream_modules(cfg) for leaf in _leaves(kind)]


def paddle_keys(cfg: ReXNetConfig) -> List[str]:
    """Every key of our Paddle model's state dict (also ppim's, for rexnet), in order."""
    out = []
    for p, _, kind in upstream_modules(cfg):
        for leaf in _leaves(kind):
            if leaf in _OPTIONAL:
                continue
            out.append(f"{p}.{_PADDLE_BN.get(leaf, leaf)}")
    return out


def _strip(keys: Iterable[str]) -> List[str]:
    return [k[7:] if k.startswith("module.") else k for k in keys]


def is_timm_layout(keys: Iterable[str]) -> bool:
    """True for timm's ReXNet names (a ``module.`` prefix is tolerated)."""
    ks = _strip(keys)
    return any(k.startswith("stem.conv.") for k in ks) and any(".conv_dw." in k for k in ks)


def is_upstream_layout(keys: Iterable[str]) -> bool:
    """True for the upstream/ours names (torch or Paddle BN leaves; a ``module.`` prefix is tolerated)."""
    ks = _strip(keys)
    return "features.0.weight" in ks and any(k.startswith("features.3.out.") for k in ks)


def _need_rexnet(cfg: ReXNetConfig, who: str) -> None:
    if cfg.variant != "rexnet":
        raise ValueError(f"{who} has no ReXNet-lite; only variant='rexnet' maps to it")


def _need_timm_compatible(cfg: ReXNetConfig) -> None:
    # timm rounds the penultimate width (int(x + 0.5)) where upstream truncates (int(x)); they agree
    # whenever 1280 * width_mult is whole, which holds for every released width
    _need_rexnet(cfg, "timm")
    up, tm = int(1280 * cfg.width_mult), int(1280 * cfg.width_mult + 0.5)
    if up != tm:
        raise ValueError(f"width_mult={cfg.width_mult}: timm's penultimate width is {tm}, upstream's {up}; "
                         "the two networks differ, no key mapping exists")


def _remap(state: Mapping[str, np.ndarray], table: Dict[str, Tuple[str, str]], head_to: str, src_name: str,
           expected: Iterable[str]) -> Dict[str, np.ndarray]:
    """Rename ``state`` through ``table`` (src module prefix -> (dst prefix, kind)); check completeness."""
    out: Dict[str, np.ndarray] = {}
    for key, val in state.items():
        prefix, _, leaf = key.rpartition(".")
        if prefix not in table:
            raise KeyError(f"{src_name} key {key!r} has no counterpart in this ReXNet config")
        dst, kind = table[prefix]
        if leaf not in _leaves(kind):
            raise KeyError(f"{src_name} key {key!r}: unexpected leaf {leaf!r} for a {kind} module")
        arr = np.asarray(val)
        if kind == "head" and leaf == "weight":
            if head_to == "conv":
                if arr.ndim != 2:
                    raise ValueError(f"{src_name} key {key!r}: expected a 2-D Linear weight, got {arr.shape}")
                arr = arr.reshape(arr.shape + (1, 1))
            else:
                if arr.ndim != 4 or arr.shape[2:] != (1, 1):
                    raise ValueError(f"{src_name} key {key!r}: expected a [out, in, 1, 1] conv weight, "
                                     f"got {arr.shape}")
                arr = arr.reshape(arr.shape[:2])
        out[f"{dst}.{leaf}"] = arr
    missing = [k for k in expected if k not in out and k.rpartition(".")[2] not in _OPTIONAL]
    if missing:
        raise KeyError(f"{src_name} state lacks the counterpart of {missing[0]!r} "
                       f"({len(missing)} key(s) missing)")
    return out


def timm_to_upstream(state: Mapping[str, np.ndarray], cfg: ReXNetConfig) -> Dict[str, np.ndarray]:
    """timm ``RexNet`` names -> upstream names (head Linear weight reshaped to a 1x1 conv)."""
    _need_timm_compatible(cfg)
    mods = upstream_modules(cfg)
    table = {tm: (up, kind) for up, tm, kind in mods}
    expected = [f"{up}.{leaf}" for up, _, kind in mods for leaf in _leaves(kind)]
    return _remap(state, table, "conv", "timm", expected)


def upstream_to_timm(state: Mapping[str, np.ndarray], cfg: ReXNetConfig) -> Dict[str, np.ndarray]:
    """Upstream names -> timm ``RexNet`` names (classifier 1x1 conv weight to a Linear ``[out, in]``)."""
    _need_timm_compatible(cfg)
    mods = upstream_modules(cfg)
    table = {up: (tm, kind) for up, tm, kind in mods}
    expected = [f"{tm}.{leaf}" for _, tm, kind in mods for leaf in _leaves(kind)]
    return _remap(state, table, "linear", "upstream", expected)


def upstream_to_paddle(state: Mapping[str, np.ndarray], cfg: ReXNetConfig) -> Dict[str, np.ndarray]:
    """Upstream torch names -> our Paddle names (BN buffers renamed, ``num_batches_tracked`` dropped)."""
    want = set(upstream_keys(cfg))
    out: Dict[str, np.ndarray] = {}
    for key, val in state.items():
        if key not in want:
            raise KeyError(f"upstream key {key!r} does not belong to this ReXNet config")
        prefix, _, leaf = key.rpartition(".")
        if leaf in _OPTIONAL:
            continue
        out[f"{prefix}.{_PADDLE_BN.get(leaf, leaf)}"] = np.asarray(val)
    missing = [k for k in paddle_keys(cfg) if k not in out]
    if missing:
        raise KeyError(f"upstream state lacks the counterpart of {missing[0]!r} ({len(missing)} missing)")
    return out


def paddle_to_upstream(state: Mapping[str, np.ndarray], cfg: ReXNetConfig) -> Dict[str, np.ndarray]:
    """Our Paddle names -> upstream torch names, in upstream order; ``num_batches_tracked`` is set to 0
    (int64) so that a strict ``load_state_dict`` in torch accepts the result."""
    known = set(paddle_keys(cfg))
    bad = [k for k in state if k not in known]
    if bad:
        raise KeyError(f"Paddle key {bad[0]!r} does not belong to this ReXNet config")
    out: Dict[str, np.ndarray] = {}
    for key in upstream_keys(cfg):
        prefix, _, leaf = key.rpartition(".")
        if leaf in _OPTIONAL:
            out[key] = np.array(0, dtype=np.int64)
            continue
        src = f"{prefix}.{_PADDLE_BN.get(leaf, leaf)}"
        if src not in state:
            raise KeyError(f"Paddle state lacks {src!r}")
        out[key] = np.asarray(state[src])
    return out


def _same_keys(state: Mapping[str, np.ndarray], cfg: ReXNetConfig, src: str) -> Dict[str, np.ndarray]:
    _need_rexnet(cfg, "ppim")
    want = paddle_keys(cfg)
    known = set(want)
    for k in state:
        if k not in known:
            raise KeyError(f"{src} key {k!r} does not belong to this ReXNet config")
    for k in want:
        if k not in state:
            raise KeyError(f"{src} state lacks {k!r}")
    return {k: np.asarray(state[k]) for k in want}


def ppim_to_ours(state: Mapping[str, np.ndarray], cfg: ReXNetConfig) -> Dict[str, np.ndarray]:
    """ppim ``ReXNet`` state -> ours: the names are identical; validated and re-ordered."""
    return _same_keys(state, cfg, "ppim")


def ours_to_ppim(state: Mapping[str, np.ndarray], cfg: ReXNetConfig) -> Dict[str, np.ndarray]:
    """Our state -> ppim ``ReXNet`` (build it with the same ``width_mult``/``depth_mult``/``use_se``/
    ``se_ratio``, ``class_dim=num_classes``): the names are identical; validated and re-ordered."""
    return _same_keys(state, cfg, "ours")
