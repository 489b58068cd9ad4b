"""Multiply-adds of a Paddle model measured by running it: forward hooks on its convolutions and linears.

For architectures whose published counts come from such a hook counter (GFNet's ``model_flops``,
``policy_flops``, ``fc_flops``: conv, linear and GRU layers only), this reproduces them from the model itself,
at any input size, where an analytic counter per backbone would be one more thing to keep in step.
One multiply-add counts one; biases, normalisation, activations and pooling are not counted.
"""
from __future__ import annotations

from typing import Callable, Dict, Optional

import numpy as np


def conv_macs(layer, out_shape) -> int:
    """MACs of one ``nn.Conv2D`` call for one sample of output ``[C_out, H, W]``."""
    w = layer.weight.shape  # [C_out, C_in / groups, kh, kw]
    return int(np.prod(w)) * int(out_shape[-2]) * int(out_shape[-1])


def count_macs(model, *inputs, per_sample: bool = True, run: Optional[Callable] = None) -> Dict[str, int]:
    """Run ``model`` (or ``run()``) once on ``inputs`` with hooks on every ``Conv2D`` and ``Linear`` sublayer;
    returns ``{"conv": ..., "linear": ..., "total": ...}`` multiply-adds (per sample of the batch by default)."""
    import paddle
    import paddle.nn as nn

    counts = {"conv": 0, "linear": 0}
    batch = [1]

    def on_conv(layer, inp, out):
        counts["conv"] += conv_macs(layer, out.shape) * int(out.shape[0])

    def on_linear(layer, inp, out):
        w = layer.weight.shape  # Paddle: [in, out]
        counts["linear"] += int(w[0]) * int(w[1]) * int(np.prod(out.shape[:-1]))

    hooks = []
    for layer in model.sublayers(include_self=True):
        if isinstance(layer, nn.Conv2D):
            hooks.append(layer.register_forward_post_hook(on_conv))
        elif isinstance(layer, nn.Linear):
            hooks.append(layer.register_forward_post_hook(on_linear))
    try:
        with paddle.no_grad():
            if inputs:
                batch[0] = int(inputs[0].shape[0])
            (run or model)(*inputs)
    finally:
        for h in hooks:
            h.remove()
    if per_sample:
        counts = {k: v // batch[0] for k, v in counts.items()}
    counts["total"] = counts["conv"] + counts["linear"]
    return counts


def gru_macs(input_size: int, hidden_size: int) -> int:
    """MACs of one GRU step for one sample: three gates, each an input and a hidden matrix product."""
    return 3 * (input_size * hidden_size + hidden_size * hidden_size)
