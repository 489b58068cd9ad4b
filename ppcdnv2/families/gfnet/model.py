"""Glance-and-Focus networks (GFNet) in Paddle: the recurrent classifier, the patch policy, the glance and
patch operators, and the sequential inference loop of upstream ``inference.generate_logits`` with early exit.

Module names and parameter names follow upstream (``network.py``), so an official state dict maps with the
generic renames of :mod:`ppcdnv2.convert.keymap` only (Linear weights transposed; BatchNorm statistics
renamed inside the backbones):

* ``fc`` = :class:`FullLayer`: ``rnn`` (GRU) + ``fc`` (Linear) or the cascade ``fc_2`` .. ``fc_5``;
* ``policy`` = :class:`ActorCritic`: ``state_encoder`` (``0``..``4``), ``gru``, ``actor.0``, ``critic.0``;
* ``model_prime`` / ``model``: the glance and the local backbones (upstream ``module.`` prefix stripped).

GRUs: ``paddle.nn.GRU`` computes the same function as torch's GRU (gate blocks reset, update, new and
``n = tanh(W_in x + b_in + r * (W_hn h + b_hn))``; checked numerically), but its state dict lists every
parameter twice (``weight_ih_l0`` and the alias ``0.cell.weight_ih``), which a strict loader reports as
missing keys. :class:`GRUStep` is therefore a one-step, single-layer GRU written out with torch's parameter
names and layout (``weight_ih_l0`` [3H, in], ``weight_hh_l0`` [3H, H], ``bias_ih_l0``, ``bias_hh_l0`` [3H]):
upstream's ``rnn.*`` / ``gru.*`` tensors load unchanged, with no rename and no transpose.

Inference is deterministic: actions are the actor's mean ``sigmoid(Linear(h))`` (upstream ``act`` draws a
Gaussian sample and discards it; nothing is sampled here).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import List, Mapping, Optional, Tuple, Union

import numpy as np
import paddle
import paddle.nn.functional as F
from paddle import nn

from .config import CASCADE_MAX_STEPS, N_BUDGETS, PRESETS, GFNetConfig

__all__ = ["GRUStep", "FullLayer", "ActorCritic", "GFNet", "GlanceFocusResult", "PredictResult", "get_prime",
           "patch_coords", "crop_patches", "get_patch", "resolve_config"]


# -- glance and patches -------------------------------------------------------------------------------
def get_prime(x: paddle.Tensor, patch_size: int, mode: str = "bicubic") -> paddle.Tensor:
    """The glance: the whole image resized to ``patch_size`` squared, ``align_corners=True`` as upstream."""
    return F.interpolate(x, size=[patch_size, patch_size], mode=mode, align_corners=True)


def patch_coords(action: paddle.Tensor, image_size: int, patch_size: int) -> paddle.Tensor:
    """``floor(action * (W - P))`` in float32, as int32 [B, 2]: column 0 the row (height) offset, column 1
    the column (width) offset."""
    scaled = paddle.cast(action, "float32") * float(image_size - patch_size)
    return paddle.cast(paddle.floor(scaled), "int32")


def crop_patches(x: paddle.Tensor, coords: paddle.Tensor, patch_size: int) -> paddle.Tensor:
    """``x[i, :, r:r+P, c:c+P]`` for every image ``i`` with ``(r, c) = coords[i]`` (an exact copy).

    Offsets must lie in ``[0, H - P]`` x ``[0, W - P]`` (upstream does not clamp; a sigmoid action always
    does); anything else raises.
    """
    b, c, h, w = x.shape
    p = int(patch_size)
    cn = np.asarray(coords.numpy() if isinstance(coords, paddle.Tensor) else coords).astype(np.int64)
    if cn.shape != (b, 2):
        raise ValueError(f"coords must be [{b}, 2], got {list(cn.shape)}")
    if cn.size and (cn.min() < 0 or (cn[:, 0] > h - p).any() or (cn[:, 1] > w - p).any()):
        raise ValueError(f"patch offsets outside the image ({h}x{w}, patch {p}): {cn.tolist()}")
    ar = np.arange(p, dtype=np.int64)
    rows = paddle.to_tensor((cn[:, 0:1] + ar).reshape(b, 1, p, 1))
    cols = paddle.to_tensor((cn[:, 1:2] + ar).reshape(b, 1, 1, p))
    out = paddle.take_along_axis(x, rows.expand([b, c, p, w]), axis=2)
    return paddle.take_along_axis(out, cols.expand([b, c, p, p]), axis=3)


def get_patch(x: paddle.Tensor, action: paddle.Tensor, patch_size: int) -> paddle.Tensor:
    """Upstream ``get_patch``: crop at ``floor(action * (W - P))``; ``W`` is the height axis (``x.shape[2]``)
    for both offsets, as upstream."""
    return crop_patches(x, patch_coords(action, x.shape[2], patch_size), patch_size)


# -- recurrent pieces --------------------------------------------------------------------------------
class GRUStep(nn.Layer):
    """One time step of a single-layer GRU, torch's arithmetic and parameter names.

    ``r = s(W_ir x + b_ir + W_hr h + b_hr)``, ``z = s(W_iz x + b_iz + W_hz h + b_hz)``,
    ``n = tanh(W_in x + b_in + r * (W_hn h + b_hn))``, ``h' = (1 - z) * n + z * h``; ``h=None`` is zeros.
    """

    def __init__(self, input_size: int, hidden_size: int):
        super().__init__()
        self.input_size, self.hidden_size = int(input_size), int(hidden_size)
        k = 1.0 / math.sqrt(self.hidden_size)  # torch's default init
        init = lambda: paddle.ParamAttr(initializer=nn.initializer.Uniform(-k, k))
        g = 3 * self.hidden_size
        self.weight_ih_l0 = self.create_parameter([g, self.input_size], attr=init())
        self.weight_hh_l0 = self.create_parameter([g, self.hidden_size], attr=init())
        self.bias_ih_l0 = self.create_parameter([g], attr=init(), is_bias=True)
        self.bias_hh_l0 = self.create_parameter([g], attr=init(), is_bias=True)

    def forward(self, x: paddle.Tensor, h: Optional[paddle.Tensor] = None) -> paddle.Tensor:
        gi = paddle.matmul(x, self.weight_ih_l0, transpose_y=True) + self.bias_ih_l0
        if h is None:
            gh = self.bias_hh_l0.unsqueeze(0)
            h = paddle.zeros([x.shape[0], self.hidden_size], x.dtype)
        else:
            gh = paddle.matmul(h, self.weight_hh_l0, transpose_y=True) + self.bias_hh_l0
        i_r, i_z, i_n = paddle.split(gi, 3, axis=1)
        h_r, h_z, h_n = paddle.split(gh, 3, axis=1)
        r = F.sigmoid(i_r + h_r)
        z = F.sigmoid(i_z + h_z)
        n = paddle.tanh(i_n + r * h_n)
        return n + z * (h - n)

    def extra_repr(self) -> str:
        return f"{self.input_size}, {self.hidden_size}"


class FullLayer(nn.Layer):
    """Upstream ``Full_layer``: the per-step classifier, as a function of an explicit state.

    ``fc_rnn=True``: ``rnn`` = GRU(feature_num, hidden) then ``fc`` = Linear(hidden, classes); the state is
    the GRU hidden ``[B, hidden]`` (``None`` = restart from zeros). ``fc_rnn=False``: the cascade, ``fc_k`` =
    Linear(k * feature_num, classes) for k = 2..5 (all four built, as upstream stores them); the state is
    the concatenation ``[f_0, ..., f_t]`` and step 0 has no prediction (``None``).
    """

    def __init__(self, feature_num: int, hidden_dim: Optional[int] = 1024, fc_rnn: bool = True,
                 num_classes: int = 1000):
        super().__init__()
        self.feature_num, self.hidden_dim, self.fc_rnn = int(feature_num), hidden_dim, bool(fc_rnn)
        self.num_classes = int(num_classes)
        if self.fc_rnn:
            self.rnn = GRUStep(self.feature_num, hidden_dim)
            self.fc = nn.Linear(hidden_dim, self.num_classes)
        else:
            for k in range(2, CASCADE_MAX_STEPS + 1):
                setattr(self, f"fc_{k}", nn.Linear(k * self.feature_num, self.num_classes))

    def forward(self, x: paddle.Tensor, state: Optional[paddle.Tensor] = None
                ) -> Tuple[Optional[paddle.Tensor], paddle.Tensor]:
        """``(logits or None, new state)`` for features ``x`` [B, feature_num]; ``state=None`` restarts."""
        if self.fc_rnn:
            h = self.rnn(x, state)
            return self.fc(h), h
        state = x if state is None else paddle.concat([state, x], axis=1)
        k = state.shape[1] // self.feature_num
        if k == 1:
            return None, state
        if k > CASCADE_MAX_STEPS:
            raise ValueError(f"the cascade classifier stops at step {CASCADE_MAX_STEPS - 1} (fc_{CASCADE_MAX_STEPS})")
        return getattr(self, f"fc_{k}")(state), state


class ActorCritic(nn.Layer):
    """Upstream ``ActorCritic`` at inference: state encoder, GRU, actor mean and critic.

    ``policy_conv=True`` (MobileNetV3, EfficientNet, RegNet): Conv2D(C, 32, 1, no bias), ReLU, Flatten,
    Linear(32 * k * k, H), ReLU. ``policy_conv=False`` (ResNet, DenseNet): Linear(state_dim, 2048), ReLU,
    Linear(2048, H), ReLU on the feature map flattened in (C, h, w) order. Then GRU(H, H); actor
    ``sigmoid(Linear(H, 2))``; critic ``Linear(H, 1)`` (stored, unused by inference).
    """

    def __init__(self, feature_dim: int, state_dim: int, hidden_state_dim: int = 1024, policy_conv: bool = True,
                 action_std: float = 0.1):
        super().__init__()
        self.feature_dim, self.state_dim = int(feature_dim), int(state_dim)
        self.hidden_state_dim, self.policy_conv = int(hidden_state_dim), bool(policy_conv)
        self.action_std = float(action_std)  # upstream's exploration std (training only; not a tensor here)
        if self.policy_conv:
            self.state_encoder = nn.Sequential(
                nn.Conv2D(self.feature_dim, 32, 1, 1, 0, bias_attr=False), nn.ReLU(), nn.Flatten(),
                nn.Linear(int(self.state_dim * 32 / self.feature_dim), self.hidden_state_dim), nn.ReLU())
        else:
            self.state_encoder = nn.Sequential(
                nn.Linear(self.state_dim, 2048), nn.ReLU(), nn.Linear(2048, self.hidden_state_dim), nn.ReLU())
        self.gru = GRUStep(self.hidden_state_dim, self.hidden_state_dim)
        self.actor = nn.Sequential(nn.Linear(self.hidden_state_dim, 2), nn.Sigmoid())
        self.critic = nn.Sequential(nn.Linear(self.hidden_state_dim, 1))

    def forward(self, fmap: paddle.Tensor, hidden: Optional[paddle.Tensor] = None
                ) -> Tuple[paddle.Tensor, paddle.Tensor]:
        """``(action mean [B, 2], new hidden [B, H])`` from the previous step's feature map; ``hidden=None``
        restarts from zeros (upstream resets it at step 1)."""
        state = fmap if self.policy_conv else paddle.flatten(fmap, 1)
        h = self.gru(self.state_encoder(state), hidden)
        return self.actor(h), h

    act = forward

    def value(self, hidden: paddle.Tensor) -> paddle.Tensor:
        """The critic on the GRU output, [B]."""
        return self.critic(hidden)[:, 0]


# -- results ------------------------------------------------------------------------------------------
@dataclass
class GlanceFocusResult:
    """Every step of one :meth:`GFNet.glance_and_focus` call (time-major, as upstream)."""

    logits: paddle.Tensor  # [T, B, classes]
    actions: paddle.Tensor  # [T-1, B, 2] actor means
    coords: paddle.Tensor  # [T-1, B, 2] int32 (row, column) offsets
    features: paddle.Tensor  # [T, B, feature_num]
    fmaps: List[paddle.Tensor]  # T maps [B, C, k, k]
    policy_hidden: paddle.Tensor  # [T-1, B, H]
    values: paddle.Tensor  # [T-1, B] critic
    prime: paddle.Tensor  # [B, 3, P, P] the glance image

    @property
    def softmax(self) -> paddle.Tensor:
        return F.softmax(self.logits, axis=-1)

    @property
    def steps(self) -> int:
        return int(self.logits.shape[0])


@dataclass
class PredictResult:
    """Early-exit prediction of :meth:`GFNet.predict`, per image (numpy)."""

    classes: np.ndarray  # [B] int64 argmax at the exit step
    probs: np.ndarray  # [B] float32 its softmax probability (the max)
    exit_step: np.ndarray  # [B] int64, 0-based
    flops: np.ndarray  # [B] float64 multiply-adds (millions) spent: flops[exit_step] (NaN when unknown)
    logits: np.ndarray  # [B, classes] float32 logits at the exit step
    coords: List[np.ndarray] = field(default_factory=list)  # per image: [exit_step, 2] int32 patch offsets


def resolve_config(cfg: Union[str, GFNetConfig, Mapping]) -> GFNetConfig:
    """A preset name (with or without ``gfnet_``), a config, or a dict of fields."""
    if isinstance(cfg, GFNetConfig):
        return cfg
    if isinstance(cfg, str):
        key = cfg[len("gfnet_"):] if cfg.startswith("gfnet_") else cfg
        if key not in PRESETS:
            raise KeyError(f"unknown GFNet configuration {cfg!r}; known: {', '.join(PRESETS)}")
        return PRESETS[key]
    return GFNetConfig.from_dict(cfg)


def _gather(t: Optional[paddle.Tensor], idx: paddle.Tensor) -> Optional[paddle.Tensor]:
    return None if t is None else paddle.gather(t, idx, axis=0)


# -- the network --------------------------------------------------------------------------------------
class GFNet(nn.Layer):
    """A Glance-and-Focus network: ``model_prime`` (glance encoder), ``model`` (local encoder), ``fc``
    (:class:`FullLayer`), ``policy`` (:class:`ActorCritic`), plus the checkpoint's budget data as
    persistable buffers: ``thresholds`` [39, T] float32 (upstream ``dynamic_threshold``; NaN until set) and
    ``flops`` [T] float64 (multiply-adds in millions to reach each step's prediction; NaN until set), and
    the released file's evaluation record: ``component_flops`` [3] (upstream ``model_flops``,
    ``policy_flops``, ``fc_flops``), ``anytime_classification`` [T] (top-1 % per step) and
    ``budgeted_batch_classification`` [2, 39] (expected multiply-adds, top-1 % per budget).

    ``backbones=(prime, local)`` plugs in any two layers with the backbone interface (``forward(x) ->
    (vector, feature_map)``, ``classify(vector)``); by default both are ``build_backbone(cfg.backbone)``,
    in ``form`` ("converted": both encoders condensed, for the CondenseNetV2 backbones).
    """

    def __init__(self, cfg: Union[str, GFNetConfig, Mapping] = "resnet50_p96_t5",
                 backbones: Optional[Tuple[nn.Layer, nn.Layer]] = None, form: str = "train"):
        super().__init__()
        self.cfg = cfg = resolve_config(cfg)
        self.form = form
        if backbones is None:
            from .backbones import build_backbone

            backbones = tuple(build_backbone(cfg.backbone, cfg.num_classes, form, cfg.backbone_arch) for _ in range(2))
        prime, local = backbones
        for b in (prime, local):
            for attr, want in (("feature_num", cfg.feature_num), ("fmap_channels", cfg.fmap_channels)):
                got = getattr(b, attr, want)
                if got != want:
                    raise ValueError(f"backbone {type(b).__name__}.{attr} = {got}, the config needs {want}")
        self.model_prime = prime
        self.model = local
        self.fc = FullLayer(cfg.feature_num, cfg.fc_hidden, cfg.fc_rnn, cfg.num_classes)
        self.policy = ActorCritic(cfg.fmap_channels, cfg.state_dim, cfg.policy_hidden_dim, cfg.policy_conv)
        self.register_buffer("thresholds", paddle.full([N_BUDGETS, cfg.T], float("nan"), "float32"))
        self.register_buffer("flops", paddle.full([cfg.T], float("nan"), "float64"))
        # the checkpoint's own evaluation record, kept so a converted file loses nothing (NaN until set)
        self.register_buffer("component_flops", paddle.full([3], float("nan"), "float64"))
        self.register_buffer("anytime_classification", paddle.full([cfg.T], float("nan"), "float64"))
        self.register_buffer("budgeted_batch_classification", paddle.full([2, N_BUDGETS], float("nan"), "float64"))

    @classmethod
    def from_parts(cls, cfg, prime: nn.Layer, local: nn.Layer, form: str = "train") -> "GFNet":
        return cls(cfg, backbones=(prime, local), form=form)

    # -- weights and budget data ------------------------------------------------------------------
    def set_budget_data(self, thresholds=None, flops=None, component_flops=None, anytime_classification=None,
                        budgeted_batch_classification=None) -> None:
        """Set ``thresholds`` ([39, T], kept as float32 bit for bit), ``flops`` ([T]) and/or the evaluation
        record (see the class docstring); what is ``None`` is left as it is."""
        for name, value in (("component_flops", component_flops), ("anytime_classification", anytime_classification),
                            ("budgeted_batch_classification", budgeted_batch_classification)):
            if value is not None:
                buf = getattr(self, name)
                v = np.asarray(value, dtype=np.float64)
                if v.size != int(np.prod(buf.shape)):
                    raise ValueError(f"{name} must have shape {list(buf.shape)}, got {list(v.shape)}")
                buf.set_value(v.reshape(buf.shape))
        if thresholds is not None:
            t = np.asarray(thresholds.numpy() if isinstance(thresholds, paddle.Tensor) else thresholds)
            if t.shape != tuple(self.thresholds.shape):
                raise ValueError(f"thresholds must be {list(self.thresholds.shape)}, got {list(t.shape)}")
            if t.dtype != np.float32:
                raise ValueError(f"thresholds must be float32 (upstream's dynamic_threshold), got {t.dtype}")
            self.thresholds.set_value(t)
        if flops is not None:
            f = np.asarray(flops, dtype=np.float64).reshape(-1)
            if f.shape != tuple(self.flops.shape):
                raise ValueError(f"flops must have {self.cfg.T} entries, got {f.shape[0]}")
            self.flops.set_value(f)

    def load_components(self, *, model_prime=None, model=None, fc=None, policy=None, thresholds=None,
                        flops=None, strict: bool = True) -> "GFNet":
        """Load upstream checkpoint components (torch-layout numpy state dicts, ``module.`` allowed) into the
        matching sub-layers, strictly by default; any component left ``None`` is not touched."""
        from ...convert.keymap import torch_to_paddle_state
        from ...weights import load_state_dict

        for name, state in (("model_prime", model_prime), ("model", model), ("fc", fc), ("policy", policy)):
            if state is not None:
                layer = getattr(self, name)
                load_state_dict(layer, torch_to_paddle_state(state, layer), strict=strict, where=name)
        self.set_budget_data(thresholds, flops)
        return self

    # -- inference --------------------------------------------------------------------------------
    def _steps(self, steps: Optional[int]) -> int:
        steps = self.cfg.T if steps is None else int(steps)
        if steps < 1:
            raise ValueError(f"steps must be >= 1, got {steps}")
        if not self.cfg.fc_rnn and steps > CASCADE_MAX_STEPS:
            raise ValueError(f"the cascade classifier runs at most {CASCADE_MAX_STEPS} steps, got {steps}")
        return steps

    def _glance(self, x):
        prime = get_prime(x, self.cfg.patch_size, self.cfg.prime_interpolation)
        vec, fmap = self.model_prime(prime)
        logits, fc_state = self.fc(vec, None)
        if self.cfg.step0 == "backbone":
            logits = self.model_prime.classify(vec)
        return prime, vec, fmap.detach(), logits, fc_state

    def _focus(self, x, fmap, hidden, fc_state):
        action, hidden = self.policy(fmap, hidden)
        coords = patch_coords(action, x.shape[2], self.cfg.patch_size)
        vec, fmap = self.model(crop_patches(x, coords, self.cfg.patch_size))
        logits, fc_state = self.fc(vec, fc_state)
        return action, coords, hidden, vec, fmap.detach(), logits, fc_state

    def glance_and_focus(self, x: paddle.Tensor, steps: Optional[int] = None) -> GlanceFocusResult:
        """Upstream ``generate_logits`` on one batch: the glance, then ``steps - 1`` policy-chosen patches
        (default ``T``); every step's logits, actions, coordinates, features and feature maps."""
        steps = self._steps(steps)
        prime, vec, fmap, logits, fc_state = self._glance(x)
        out = dict(logits=[logits], actions=[], coords=[], features=[vec], fmaps=[fmap], policy_hidden=[],
                   values=[])
        hidden = None
        for _ in range(1, steps):
            action, coords, hidden, vec, fmap, logits, fc_state = self._focus(x, fmap, hidden, fc_state)
            for k, v in (("actions", action), ("coords", coords), ("policy_hidden", hidden),
                         ("values", self.policy.value(hidden)), ("logits", logits), ("features", vec),
                         ("fmaps", fmap)):
                out[k].append(v)
        stack = lambda vs, shape, dt: paddle.stack(vs) if vs else paddle.zeros(shape, dt)
        b = x.shape[0]
        h = self.cfg.policy_hidden_dim
        return GlanceFocusResult(
            logits=paddle.stack(out["logits"]), actions=stack(out["actions"], [0, b, 2], "float32"),
            coords=stack(out["coords"], [0, b, 2], "int32"), features=paddle.stack(out["features"]),
            fmaps=out["fmaps"], policy_hidden=stack(out["policy_hidden"], [0, b, h], "float32"),
            values=stack(out["values"], [0, b], "float32"), prime=prime)

    def forward(self, x: paddle.Tensor, steps: Optional[int] = None) -> paddle.Tensor:
        """Logits of every step, [T, B, classes] (see :meth:`glance_and_focus` for the rest)."""
        return self.glance_and_focus(x, steps).logits

    def exit_thresholds(self, budget: Optional[int] = None, thresholds=None, steps: Optional[int] = None
                        ) -> np.ndarray:
        """The float32 per-step thresholds of :meth:`predict` (see there)."""
        steps = self._steps(steps)
        if budget is not None and thresholds is not None:
            raise ValueError("give budget or thresholds, not both")
        if budget is not None:
            if isinstance(budget, bool) or int(budget) != budget or not 1 <= budget <= N_BUDGETS:
                raise ValueError(f"budget must be an int in 1..{N_BUDGETS}, got {budget!r}")
            thr = self.thresholds.numpy()[int(budget) - 1]
            if np.isnan(thr).any():
                raise ValueError("this model has no stored thresholds (load a GFNet checkpoint or pass thresholds=)")
        elif thresholds is not None:
            thr = np.asarray(thresholds.numpy() if isinstance(thresholds, paddle.Tensor) else thresholds)
            thr = thr.astype(np.float32).reshape(-1)
        else:
            thr = np.full([steps], np.inf, np.float32)
        if thr.shape[0] < steps:
            raise ValueError(f"need {steps} thresholds, got {thr.shape[0]}")
        return thr[:steps].astype(np.float32)

    @paddle.no_grad()
    def predict(self, x: paddle.Tensor, budget: Optional[int] = None, thresholds=None,
                steps: Optional[int] = None) -> PredictResult:
        """Budgeted early-exit prediction, upstream ``dynamic_evaluate``'s rule per image: exit at the first
        step ``t`` whose max softmax probability is ``>= thresholds[t]`` (float32 comparison).

        ``budget=p`` (1..39) uses the stored ``self.thresholds[p - 1]``; ``thresholds`` gives them ([T]);
        neither runs every step. The last step always exits (upstream's stored last threshold is -1e8).
        Only the images not yet exited run the next step (their GRU, cascade and policy states are
        gathered along). ``flops`` of an image is ``self.flops[exit_step]``.
        """
        steps = self._steps(steps)
        thr = self.exit_thresholds(budget, thresholds, steps)
        n = x.shape[0]
        flops_table = self.flops.numpy()
        classes = np.zeros([n], np.int64)
        probs = np.zeros([n], np.float32)
        exit_step = np.full([n], -1, np.int64)
        logits_out = np.zeros([n, self.cfg.num_classes], np.float32)
        coords_hist: List[List[np.ndarray]] = [[] for _ in range(n)]
        active = np.arange(n)

        def settle(step, logits):
            nonlocal active
            sm = F.softmax(logits, axis=1)
            pmax = paddle.max(sm, axis=1).numpy()
            arg = paddle.argmax(sm, axis=1).numpy()
            done = np.ones_like(pmax, bool) if step == steps - 1 else pmax >= thr[step]
            ids = active[done]
            classes[ids], probs[ids], exit_step[ids] = arg[done], pmax[done], step
            logits_out[ids] = logits.numpy()[done]
            keep = np.nonzero(~done)[0]
            active = active[keep]
            return keep

        prime, vec, fmap, logits, fc_state = self._glance(x)
        keep = settle(0, logits)
        hidden = None
        for step in range(1, steps):
            if active.size == 0:
                break
            if keep.size != (fmap.shape[0]):
                idx = paddle.to_tensor(keep)
                x, fmap, hidden, fc_state = (_gather(t, idx) for t in (x, fmap, hidden, fc_state))
            _, coords, hidden, vec, fmap, logits, fc_state = self._focus(x, fmap, hidden, fc_state)
            for i, c in zip(active, coords.numpy()):
                coords_hist[i].append(c)
            keep = settle(step, logits)
        fl = np.where(exit_step >= 0, flops_table[np.clip(exit_step, 0, None)], np.nan)
        return PredictResult(classes, probs, exit_step, fl.astype(np.float64), logits_out,
                             [np.asarray(c, np.int32).reshape(-1, 2) for c in coords_hist])
