"""Torch helpers for the reference models and parity tests of every family: numpy state dicts, a thread
guard, and seeded randomisation of parameters and BatchNorm statistics (default inits hide bugs: zero
gammas, BN statistics of 0/1). Importing this module needs torch; ``ppcdnv2`` itself never imports it.
"""
from __future__ import annotations

import contextlib
import math
from typing import Callable, Dict, Iterable, Optional

import numpy as np

try:
    import torch
    import torch.nn as nn
except ImportError as e:  # pragma: no cover - depends on the environment
    raise ImportError("the ppcdnv2 torch references need PyTorch (test extra: pip install torch==2.13.0)") from e


def state_dict_numpy(model: nn.Module) -> Dict[str, np.ndarray]:
    """The model's state dict as numpy arrays (copies), official key layout."""
    return {k: v.detach().cpu().numpy().copy() for k, v in model.state_dict().items()}


@contextlib.contextmanager
def torch_threads(n: int = 1):
    """Run torch with ``n`` intra-op threads, then restore; on a shared machine OpenMP spinning makes
    more threads than free cores many times slower (measured ~15x on 2 busy cores)."""
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


# --- randomisation ----------------------------------------------------------------------------
def randn(gen: torch.Generator, shape, std: float = 1.0, mean: float = 0.0) -> torch.Tensor:
    return torch.randn(tuple(shape), generator=gen) * std + mean


def uniform(gen: torch.Generator, shape, low: float, high: float) -> torch.Tensor:
    return torch.rand(tuple(shape), generator=gen) * (high - low) + low


@torch.no_grad()
def randomize_weights_(model: nn.Module, gen: torch.Generator, skip: Iterable[nn.Module] = ()) -> None:
    """Fresh random convs (He fan-in), BN affine (gamma 0.5..1.5, beta ±0.25) and linears (±1/sqrt(fan_in)).

    Fan-in scaling keeps pre-BN activations O(1) whatever the mask does; BN statistics are set later
    by ``calibrate_bn_`` so the eval-mode network is well conditioned at any depth.
    """
    skip = {id(m) for m in skip}
    for m in model.modules():
        if id(m) in skip:
            continue
        if isinstance(m, nn.Conv2d):
            fan_in = m.weight[0].numel()
            m.weight.copy_(randn(gen, m.weight.shape, math.sqrt(2.0 / fan_in)))
        elif isinstance(m, nn.BatchNorm2d):
            m.weight.copy_(uniform(gen, m.weight.shape, 0.5, 1.5))
            m.bias.copy_(uniform(gen, m.bias.shape, -0.25, 0.25))
        elif isinstance(m, nn.Linear):
            bound = math.sqrt(3.0 / m.in_features)  # unit-variance outputs for unit-variance inputs
            m.weight.copy_(uniform(gen, m.weight.shape, -bound, bound))
            if m.bias is not None:
                m.bias.copy_(uniform(gen, m.bias.shape, -0.1, 0.1))


@torch.no_grad()
def calibrate_bn_(model: nn.Module, x: torch.Tensor, gen: torch.Generator, forward: Optional[Callable] = None,
                  jitter: float = 0.1):
    """Set every BN's running statistics from the eval-mode activations it sees on ``x``, jittered.

    One eval-mode pass; each BN, when reached, takes the statistics of its actual input, moved by
    mean ± ``jitter``·std and variance × exp(±2·``jitter``), so eval mode differs from train mode
    (both are really tested) while every later BN is fitted to the jittered network it sits in: the
    eval-mode network stays well conditioned at any depth (fitting in train mode and jittering
    afterwards compounds through the SFR residuals and explodes). ``num_batches_tracked`` gets a
    random count, like a checkpoint taken mid-training. Returns the pass's output, which is the
    calibrated eval-mode output on ``x``.
    """
    def fit(m, inputs):
        v = inputs[0].detach()
        mean, var = v.mean((0, 2, 3)), v.var((0, 2, 3))
        std = var.sqrt()
        m.running_mean.copy_(mean + randn(gen, std.shape, jitter) * std)
        m.running_var.copy_(var * torch.exp(randn(gen, std.shape, 2 * jitter)))
        m.num_batches_tracked.fill_(int(torch.randint(1, 10000, (1,), generator=gen)))

    was_training = model.training
    hooks = [m.register_forward_pre_hook(fit) for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    try:
        model.eval()
        out = (forward or model)(x)
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    return out
