"""A PyTorch GFNet written by us in upstream's module layout (blackfeather-wang/GFNet-Pytorch ``network.py``,
``utils.py``, ``inference.py``), for parity tests, benchmarks and the converter's ``--verify``.

Same state-dict keys, shapes and arithmetic as upstream:

* :class:`Full_layer` -- ``rnn`` = ``nn.GRU(feature_num, hidden)`` (time-major, one step per call, hidden
  kept in ``self.hidden`` and restarted from zeros) + ``fc``; or the cascade ``fc_2`` .. ``fc_5`` on the
  concatenated features (no prediction at the restart step);
* :class:`ActorCritic` -- ``state_encoder`` (conv: Conv2d 1x1 no bias, ReLU, Flatten, Linear, ReLU; or
  linear: Linear(state_dim, 2048), ReLU, Linear(2048, H), ReLU), ``gru`` = ``nn.GRU(H, H)``, ``actor`` =
  [Linear(H, 2), Sigmoid], ``critic`` = [Linear(H, 1)]; :meth:`ActorCritic.act` returns the actor's mean
  (upstream's inference discards the Gaussian sample it draws; we draw none);
* :func:`get_prime` / :func:`get_patch` -- upstream's glance and per-image crop;
* :class:`GFNetReference` -- both backbones, ``fc``, ``policy``, and the same ``glance_and_focus`` /
  ``predict`` API as :class:`ppcdnv2.families.gfnet.model.GFNet` (results hold torch tensors).

Backbones are pluggable: ``backbones=(prime, local)`` with ``forward(x) -> (vector, feature_map)`` and
``classify(vector)``; by default :func:`..build_reference_backbone` (upstream keys without ``module.``).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Mapping, Optional, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..config import CASCADE_MAX_STEPS, N_BUDGETS, PRESETS, GFNetConfig

__all__ = ["Full_layer", "ActorCritic", "GFNetReference", "get_prime", "get_patch", "patch_coords",
           "ReferenceResult", "ReferencePrediction"]


def get_prime(images: torch.Tensor, patch_size: int, interpolation: str = "bicubic") -> torch.Tensor:
    """The glance: resize to ``patch_size`` squared with ``align_corners=True``."""
    return F.interpolate(images, size=[patch_size, patch_size], mode=interpolation, align_corners=True)


def patch_coords(action: torch.Tensor, image_size: int, patch_size: int) -> torch.Tensor:
    """``floor(action * (W - P))`` (float32) as int32; [:, 0] row offset, [:, 1] column offset."""
    return torch.floor(action * (image_size - patch_size)).int()


def get_patch(images: torch.Tensor, action: torch.Tensor, patch_size: int,
              coords: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Per image ``images[i, :, r:r+P, c:c+P]``, ``(r, c)`` from ``floor(action * (W - P))`` with ``W`` the
    height axis for both (as upstream); ``coords`` may be given instead of recomputed."""
    if coords is None:
        coords = patch_coords(action, images.size(2), patch_size)
    crops = [images[i:i + 1, :, int(r):int(r) + patch_size, int(c):int(c) + patch_size]
             for i, (r, c) in enumerate(coords.tolist())]
    return torch.cat(crops, 0)


class Full_layer(nn.Module):
    """Upstream's per-step classifier: GRU + Linear, or the cascade of Linear layers."""

    def __init__(self, feature_num: int, hidden_state_dim: Optional[int] = 1024, fc_rnn: bool = True,
                 class_num: int = 1000):
        super().__init__()
        self.feature_num, self.hidden_state_dim, self.fc_rnn = feature_num, hidden_state_dim, fc_rnn
        self.class_num = class_num
        self.hidden = None
        if fc_rnn:
            self.rnn = nn.GRU(feature_num, hidden_state_dim)
            self.fc = nn.Linear(hidden_state_dim, class_num)
        else:
            for k in range(2, CASCADE_MAX_STEPS + 1):
                setattr(self, f"fc_{k}", nn.Linear(k * feature_num, class_num))

    def forward(self, x: torch.Tensor, restart: bool = False) -> Optional[torch.Tensor]:
        if self.fc_rnn:
            h0 = torch.zeros(1, x.size(0), self.hidden_state_dim, dtype=x.dtype) if restart else self.hidden
            out, self.hidden = self.rnn(x.unsqueeze(0), h0)
            return self.fc(out[0])
        self.hidden = x if restart else torch.cat([self.hidden, x], 1)
        k = self.hidden.size(1) // self.feature_num
        if k == 1:
            return None
        if k > CASCADE_MAX_STEPS:
            raise ValueError(f"the cascade classifier stops at fc_{CASCADE_MAX_STEPS}")
        return getattr(self, f"fc_{k}")(self.hidden)

    def select(self, index: torch.Tensor) -> None:
        """Keep only the batch rows ``index`` of the carried state (early exit)."""
        if self.hidden is not None:
            self.hidden = self.hidden.index_select(1 if self.fc_rnn else 0, index)


class ActorCritic(nn.Module):
    """Upstream's policy network (inference part: the actor's mean, the critic on the GRU output)."""

    def __init__(self, feature_dim: int, state_dim: int, hidden_state_dim: int = 1024, policy_conv: bool = True,
                 action_std: float = 0.1):
        super().__init__()
        if policy_conv:
            self.state_encoder = nn.Sequential(
                nn.Conv2d(feature_dim, 32, kernel_size=1, stride=1, padding=0, bias=False), nn.ReLU(), nn.Flatten(),
                nn.Linear(int(state_dim * 32 / feature_dim), hidden_state_dim), nn.ReLU())
        else:
            self.state_encoder = nn.Sequential(nn.Linear(state_dim, 2048), nn.ReLU(),
                                               nn.Linear(2048, hidden_state_dim), nn.ReLU())
        self.gru = nn.GRU(hidden_state_dim, hidden_state_dim, batch_first=False)
        self.actor = nn.Sequential(nn.Linear(hidden_state_dim, 2), nn.Sigmoid())
        self.critic = nn.Sequential(nn.Linear(hidden_state_dim, 1))
        self.action_std = action_std  # upstream's exploration std (a plain float; not in the state dict)
        self.hidden_state_dim, self.policy_conv, self.feature_dim = hidden_state_dim, policy_conv, feature_dim

    def act(self, state: torch.Tensor, hidden: Optional[torch.Tensor] = None
            ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(action mean [B, 2], GRU output [B, H], new hidden [1, B, H])``; ``hidden=None`` restarts."""
        if hidden is None:
            hidden = torch.zeros(1, state.size(0), self.hidden_state_dim, dtype=state.dtype)
        s = self.state_encoder(state if self.policy_conv else state.flatten(1))
        out, hidden = self.gru(s.unsqueeze(0), hidden)
        return self.actor(out[0]), out[0], hidden


@dataclass
class ReferenceResult:
    logits: torch.Tensor
    actions: torch.Tensor
    coords: torch.Tensor
    features: torch.Tensor
    fmaps: List[torch.Tensor]
    policy_hidden: torch.Tensor
    values: torch.Tensor
    prime: torch.Tensor

    @property
    def softmax(self) -> torch.Tensor:
        return F.softmax(self.logits, dim=-1)


@dataclass
class ReferencePrediction:
    classes: np.ndarray
    probs: np.ndarray
    exit_step: np.ndarray
    flops: np.ndarray
    logits: np.ndarray
    coords: List[np.ndarray] = field(default_factory=list)


def _config(cfg) -> GFNetConfig:
    if isinstance(cfg, GFNetConfig):
        return cfg
    if isinstance(cfg, str):
        key = cfg[len("gfnet_"):] if cfg.startswith("gfnet_") else cfg
        return PRESETS[key]
    return GFNetConfig.from_dict(cfg)


class GFNetReference(nn.Module):
    """Torch twin of :class:`ppcdnv2.families.gfnet.model.GFNet` (upstream's inference loop)."""

    def __init__(self, cfg: Union[str, GFNetConfig, Mapping] = "resnet50_p96_t5",
                 backbones: Optional[Tuple[nn.Module, nn.Module]] = None):
        super().__init__()
        self.cfg = cfg = _config(cfg)
        if backbones is None:
            from . import build_reference_backbone

            backbones = (build_reference_backbone(cfg.backbone), build_reference_backbone(cfg.backbone))
        self.model_prime, self.model = backbones
        self.fc = Full_layer(cfg.feature_num, cfg.fc_hidden, cfg.fc_rnn, cfg.num_classes)
        self.policy = ActorCritic(cfg.fmap_channels, cfg.state_dim, cfg.policy_hidden_dim, cfg.policy_conv)
        self.thresholds = torch.full([N_BUDGETS, cfg.T], float("nan"))
        self.flops = [float("nan")] * cfg.T

    @torch.no_grad()
    def load_components(self, *, model_prime=None, model=None, fc=None, policy=None, thresholds=None,
                        flops=None, strict: bool = True) -> "GFNetReference":
        """Load upstream checkpoint components (numpy or torch state dicts, ``module.`` allowed)."""
        for name, state in (("model_prime", model_prime), ("model", model), ("fc", fc), ("policy", policy)):
            if state is None:
                continue
            sd = {(k[len("module."):] if k.startswith("module.") else k): torch.as_tensor(np.asarray(v))
                  for k, v in state.items()}
            getattr(self, name).load_state_dict(sd, strict=strict)
        if thresholds is not None:
            self.thresholds = torch.as_tensor(np.asarray(thresholds, np.float32)).reshape(N_BUDGETS, self.cfg.T)
        if flops is not None:
            self.flops = [float(f) for f in flops]
        return self

    def _glance(self, x):
        prime = get_prime(x, self.cfg.patch_size, self.cfg.prime_interpolation)
        vec, fmap = self.model_prime(prime)
        fmap = fmap.detach()
        logits = self.fc(vec, restart=True)
        if self.cfg.step0 == "backbone":
            logits = self.model_prime.classify(vec)
        return prime, vec, fmap, logits

    def _focus(self, x, fmap, hidden):
        action, out, hidden = self.policy.act(fmap, hidden)
        coords = patch_coords(action, x.size(2), self.cfg.patch_size)
        vec, fmap = self.model(get_patch(x, action, self.cfg.patch_size, coords))
        logits = self.fc(vec, restart=False)
        return action, coords, out, hidden, vec, fmap.detach(), logits

    def _steps(self, steps):
        steps = self.cfg.T if steps is None else int(steps)
        if steps < 1 or (not self.cfg.fc_rnn and steps > CASCADE_MAX_STEPS):
            raise ValueError(f"bad number of steps {steps}")
        return steps

    @torch.no_grad()
    def glance_and_focus(self, x: torch.Tensor, steps: Optional[int] = None) -> ReferenceResult:
        steps = self._steps(steps)
        prime, vec, fmap, logits = self._glance(x)
        acc = dict(logits=[logits], actions=[], coords=[], features=[vec], fmaps=[fmap], policy_hidden=[],
                   values=[])
        hidden = None
        for _ in range(1, steps):
            action, coords, out, hidden, vec, fmap, logits = self._focus(x, fmap, hidden)
            for k, v in (("actions", action), ("coords", coords), ("policy_hidden", out),
                         ("values", self.policy.critic(out)[:, 0]), ("logits", logits), ("features", vec),
                         ("fmaps", fmap)):
                acc[k].append(v)
        b, h = x.size(0), self.cfg.policy_hidden_dim
        stack = lambda vs, shape, dt: torch.stack(vs) if vs else torch.zeros(shape, dtype=dt)
        return ReferenceResult(
            logits=torch.stack(acc["logits"]), actions=stack(acc["actions"], [0, b, 2], torch.float32),
            coords=stack(acc["coords"], [0, b, 2], torch.int32), features=torch.stack(acc["features"]),
            fmaps=acc["fmaps"], policy_hidden=stack(acc["policy_hidden"], [0, b, h], torch.float32),
            values=stack(acc["values"], [0, b], torch.float32), prime=prime)

    def forward(self, x, steps=None):
        return self.glance_and_focus(x, steps).logits

    @torch.no_grad()
    def predict(self, x: torch.Tensor, budget: Optional[int] = None, thresholds=None,
                steps: Optional[int] = None) -> ReferencePrediction:
        """Same rule as :meth:`GFNet.predict`: exit at the first step with max softmax >= threshold (the last
        step always exits); only images not yet exited run on."""
        steps = self._steps(steps)
        if budget is not None and thresholds is not None:
            raise ValueError("give budget or thresholds, not both")
        if budget is not None:
            thr = self.thresholds[int(budget) - 1].numpy()
            if np.isnan(thr).any():
                raise ValueError("no stored thresholds")
        elif thresholds is not None:
            thr = np.asarray(thresholds, np.float32).reshape(-1)
        else:
            thr = np.full([steps], np.inf, np.float32)
        thr = thr[:steps].astype(np.float32)
        n = x.size(0)
        classes, probs = np.zeros([n], np.int64), np.zeros([n], np.float32)
        exit_step = np.full([n], -1, np.int64)
        logits_out = np.zeros([n, self.cfg.num_classes], np.float32)
        coords_hist: List[list] = [[] for _ in range(n)]
        active = np.arange(n)

        def settle(step, logits):
            nonlocal active
            sm = F.softmax(logits, dim=1)
            pmax, arg = sm.max(dim=1)
            pmax, arg = pmax.numpy(), arg.numpy()
            done = np.ones_like(pmax, bool) if step == steps - 1 else pmax >= thr[step]
            ids = active[done]
            classes[ids], probs[ids], exit_step[ids] = arg[done], pmax[done], step
            logits_out[ids] = logits.numpy()[done]
            keep = np.nonzero(~done)[0]
            active = active[keep]
            return keep

        _, _, fmap, logits = self._glance(x)
        keep = settle(0, logits)
        hidden = None
        for step in range(1, steps):
            if active.size == 0:
                break
            if keep.size != fmap.size(0):
                idx = torch.as_tensor(keep)
                x, fmap = x.index_select(0, idx), fmap.index_select(0, idx)
                hidden = None if hidden is None else hidden.index_select(1, idx)
                self.fc.select(idx)
            _, coords, _, hidden, _, fmap, logits = self._focus(x, fmap, hidden)
            for i, c in zip(active, coords.numpy()):
                coords_hist[i].append(c)
            keep = settle(step, logits)
        table = np.asarray(self.flops, np.float64)
        fl = np.where(exit_step >= 0, table[np.clip(exit_step, 0, None)], np.nan)
        return ReferencePrediction(classes, probs, exit_step, fl, logits_out,
                                   [np.asarray(c, np.int32).reshape(-1, 2) for c in coords_hist])
