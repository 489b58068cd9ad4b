"""PyTorch building blocks shared by the reference models (CondenseNetV2 and CondenseNet V1).

The module layout (and therefore the state-dict keys) follows the official PyTorch code, so a
reference model loads official checkpoints with ``strict=True``. Importing this module needs torch;
``ppcdnv2`` itself never imports it.
"""
from __future__ import annotations

import contextlib
import math
from typing import Callable, Dict, Iterable, Optional, Tuple

import numpy as np

try:
    import torch
    import torch.nn as nn
except ImportError as e:  # pragma: no cover - depends on the environment
    raise ImportError("the ppcdnv2 torch reference needs PyTorch (test extra: pip install torch==2.13.0)") from e


class HS(nn.Module):
    """Hard-swish written as upstream does, ``x * relu6(x + 3) / 6`` (the ReLU6 is a child, as upstream)."""

    def __init__(self):
        super().__init__()
        self.relu6 = nn.ReLU6()

    def forward(self, x):
        return x * self.relu6(x + 3) / 6


def make_activation(name: str) -> nn.Module:
    if name == "ReLU":
        return nn.ReLU()
    if name == "HS":
        return HS()
    raise ValueError(f"unknown activation {name!r}; expected 'ReLU' or 'HS'")


class SELayer(nn.Module):
    """Squeeze-and-excitation with bias-free linears (keys ``fc.0.weight``/``fc.2.weight``)."""

    def __init__(self, inplanes: int, reduction: int = 16):
        super().__init__()
        self.avg_pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Sequential(
            nn.Linear(inplanes, inplanes // reduction, bias=False),
            nn.ReLU(),
            nn.Linear(inplanes // reduction, inplanes, bias=False),
            nn.Sigmoid(),
        )

    def forward(self, x):
        n, c = x.shape[:2]
        return x * self.fc(self.avg_pool(x).view(n, c)).view(n, c, 1, 1)


class Conv(nn.Sequential):
    """BN → activation → convolution (keys ``norm.*``, ``conv.weight``)."""

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, groups=1, activation="ReLU"):
        super().__init__()
        self.add_module("norm", nn.BatchNorm2d(in_channels))
        self.add_module("activation", make_activation(activation))
        self.add_module("conv", nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=padding,
                                          groups=groups, bias=False))


class Transition(nn.Module):
    """Upstream's transition between dense blocks: a 2x2 average pool."""

    def __init__(self):
        super().__init__()
        self.pool = nn.AvgPool2d(kernel_size=2, stride=2)

    def forward(self, x):
        return self.pool(x)


def dense_trunk(cfg, make_layer: Callable[[int, int, int], nn.Module]) -> Tuple[nn.Sequential, int]:
    """Upstream's ``features`` of both families: stem conv, dense blocks of ``make_layer(block, in_channels,
    growth)`` with transitions between them, BN → ReLU → final average pool; and its output channels."""
    features = nn.Sequential()
    channels = 2 * cfg.growth[0]
    features.add_module("init_conv", nn.Conv2d(3, channels, 3, stride=cfg.init_stride, padding=1, bias=False))
    for i, (depth, growth) in enumerate(zip(cfg.stages, cfg.growth)):
        block = nn.Sequential()
        for j in range(depth):
            block.add_module(f"denselayer_{j + 1}", make_layer(i, channels + j * growth, growth))
        features.add_module(f"denseblock_{i + 1}", block)
        channels += depth * growth
        if i != len(cfg.stages) - 1:
            features.add_module(f"transition_{i + 1}", Transition())
    features.add_module("norm_last", nn.BatchNorm2d(channels))
    features.add_module("relu_last", nn.ReLU())
    features.add_module("pool_last", nn.AvgPool2d(cfg.pool_size))
    return features, channels


def shuffle(x, groups: int):
    """Group-major → channel-major (upstream ``ShuffleLayer``): channel g*C/G + k goes to k*G + g."""
    n, c, h, w = x.shape
    return x.view(n, groups, c // groups, h, w).transpose(1, 2).reshape(n, c, h, w)


def shuffle_trans(x, groups: int):
    """Inverse of ``shuffle`` (upstream ``ShuffleLayerTrans``): channels g, g+G, ... become group g."""
    n, c, h, w = x.shape
    return x.view(n, c // groups, groups, h, w).transpose(1, 2).reshape(n, c, h, w)


def init_like_upstream_(model: nn.Module) -> None:
    """Upstream's ``_initialize``: kaiming-normal (fan_out) convs, every BN to 1/0; linears keep torch's default."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.constant_(m.weight, 1)
            nn.init.constant_(m.bias, 0)


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
