"""Analytic multiply-adds and parameter counts of a ReXNet, from its config alone (no framework).

Counting convention (the one that reproduces the published figures of clovaai/rexnet, to the digit
published and, for parameters, exactly the ``numel`` sum of the upstream model's ``parameters()``):

* MACs: every convolution counts ``C_out * C_in / groups * k * k * H_out * W_out``; the SE block's two
  1x1 convs act on a 1x1 map and count their weights (``2 * dw * se``); the classifier 1x1 conv(s) count
  their weights. Biases, BatchNorm, activations, pooling, the SE rescale and the residual add are free.
* Params: trainable parameters only -- conv weights, conv biases (SE and classifier), BatchNorm gamma and
  beta. BatchNorm running statistics are buffers and are not counted (ReXNet-1.0x: 4,796,873).

Why analytic: the tests pin the published numbers without torch or Paddle, and each term is visible in
:func:`breakdown`.
"""
from __future__ import annotations

from typing import Dict, Tuple, Union

from .config import PRESETS, ReXNetConfig, channel_plan

__all__ = ["count", "breakdown", "summary"]

Size = Union[int, Tuple[int, int]]


def _out(n: int, k: int, s: int, p: int) -> int:
    return (n + 2 * p - k) // s + 1


def breakdown(cfg: ReXNetConfig, input_size: Size = 224) -> Dict[str, Dict[str, int]]:
    """MACs and params per part: ``stem``, ``block{i}``, ``pen``, ``head`` (each a dict macs/params)."""
    h, w = (input_size, input_size) if isinstance(input_size, int) else tuple(input_size)
    plan = channel_plan(cfg)
    parts: Dict[str, Dict[str, int]] = {}

    def conv(part, cin, cout, k=1, s=1, groups=1, bn=True, bias=False):
        nonlocal h, w
        p = k // 2
        h, w = _out(h, k, s, p), _out(w, k, s, p)
        weights = cout * (cin // groups) * k * k
        d = parts.setdefault(part, {"macs": 0, "params": 0})
        d["macs"] += weights * h * w
        d["params"] += weights + (cout if bias else 0) + (2 * cout if bn else 0)

    def fc(part, cin, cout, bn=False):
        # a 1x1 conv on a pooled (1x1) map: weights are the MACs
        d = parts.setdefault(part, {"macs": 0, "params": 0})
        d["macs"] += cin * cout
        d["params"] += cin * cout + cout + (2 * cout if bn else 0)

    conv("stem", 3, plan.stem_ch, k=3, s=2)
    for i, b in enumerate(plan.blocks):
        name = f"block{i}"
        if b.t != 1:
            conv(name, b.in_ch, b.dw_ch)
        conv(name, b.dw_ch, b.dw_ch, k=b.kernel, s=b.stride, groups=b.dw_ch)
        if b.use_se:
            fc(name, b.dw_ch, b.se_ch, bn=True)
            fc(name, b.se_ch, b.dw_ch)
        conv(name, b.dw_ch, b.out_ch)
    conv("pen", plan.blocks[-1].out_ch, plan.pen_ch)
    if cfg.num_classes > 0 or plan.head_hidden:
        parts["head"] = {"macs": 0, "params": 0}
    if plan.head_hidden:
        fc("head", plan.pen_ch, plan.head_hidden, bn=True)
        if cfg.num_classes > 0:
            fc("head", plan.head_hidden, cfg.num_classes)
    elif cfg.num_classes > 0:
        fc("head", plan.pen_ch, cfg.num_classes)
    return parts


def count(cfg: ReXNetConfig, input_size: Size = 224) -> Tuple[int, int]:
    """``(macs, params)`` of the whole network (see the module docstring for what is counted)."""
    parts = breakdown(cfg, input_size)
    return sum(d["macs"] for d in parts.values()), sum(d["params"] for d in parts.values())


def summary(cfg: ReXNetConfig, input_size: Size = 224) -> str:
    """``"398.4M/4.80M"``: MACs to 0.1 M and params to 0.01 M, as the published tables round them."""
    macs, params = count(cfg, input_size)
    return f"{macs / 1e6:.1f}M/{params / 1e6:.2f}M"


if __name__ == "__main__":  # pragma: no cover - a convenience table
    for name, c in PRESETS.items():
        print(f"{name:18s} {summary(c)}")
