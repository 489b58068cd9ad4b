"""Optimizer, learning-rate schedule and loss of the official recipe.

Upstream (``train.py`` with timm's ``create_optimizer``): SGD, Nesterov momentum 0.9, weight decay
4e-5 on every parameter except 1-D ones (BatchNorm) and biases; learning rate 0.4 for batch 1024,
a linear warm-up from 0.1 over 5 epochs, then a half cosine to 0, both set every iteration; label
smoothing 0.1 (timm's ``LabelSmoothingCrossEntropy``). Paddle's ``Momentum`` with
``use_nesterov=True`` and an L2 weight decay per parameter group does the same update as
``torch.optim.SGD(nesterov=True, weight_decay=...)`` (tested against torch).
"""
from __future__ import annotations

import math
from typing import Any, Dict, List, Mapping, Tuple

import paddle


def param_groups(model, weight_decay: float, no_decay_bn_bias: bool = True) -> List[Dict[str, Any]]:
    """Trainable parameters split into (no decay: 1-D and biases) and (decay: everything else)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.stop_gradient:  # Paddle keeps BatchNorm running statistics as non-trainable parameters
            continue
        if no_decay_bn_bias and (p.ndim <= 1 or name.endswith(".bias")):
            no_decay.append(p)
        else:
            decay.append(p)
    groups = []
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    if decay:
        groups.append({"params": decay, "weight_decay": float(weight_decay)})
    return groups


def build_optimizer(model, opt_cfg: Mapping[str, Any], lr: float):
    if opt_cfg["name"] != "sgd":
        raise ValueError(f"optimizer {opt_cfg['name']!r} is not supported (only sgd, as upstream)")
    return paddle.optimizer.Momentum(
        learning_rate=lr, momentum=float(opt_cfg["momentum"]), use_nesterov=bool(opt_cfg["nesterov"]),
        parameters=param_groups(model, opt_cfg["weight_decay"], opt_cfg["no_decay_bn_bias"]))


def scaled_lrs(opt_cfg: Mapping[str, Any], sched_cfg: Mapping[str, Any], global_batch: int) -> Tuple[float, float]:
    """Peak and warm-up-start learning rates scaled linearly from ``base_batch`` to ``global_batch``."""
    k = global_batch / float(opt_cfg["base_batch"])
    return float(opt_cfg["lr"]) * k, float(sched_cfg["warmup_lr"]) * k


class LRSchedule:
    """Per-iteration learning rate: linear warm-up from ``warmup_lr`` to ``lr``, then cosine to ``min_lr``.

    The value at global iteration ``step`` is a pure function of ``step``, so resuming needs only the step.
    """

    def __init__(self, lr: float, warmup_lr: float, warmup_epochs: int, epochs: int, steps_per_epoch: int,
                 kind: str = "cosine", min_lr: float = 0.0):
        if warmup_epochs and warmup_epochs >= epochs:
            raise ValueError(f"schedule.warmup_epochs={warmup_epochs} must be smaller than train.epochs={epochs}")
        self.lr, self.warmup_lr, self.kind, self.min_lr = lr, warmup_lr, kind, min_lr
        self.warmup_steps = int(warmup_epochs) * steps_per_epoch
        self.total_steps = int(epochs) * steps_per_epoch

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return self.warmup_lr + (self.lr - self.warmup_lr) * step / self.warmup_steps
        if self.kind == "constant":
            return self.lr
        t = (step - self.warmup_steps) / max(1, self.total_steps - self.warmup_steps)
        return self.min_lr + 0.5 * (self.lr - self.min_lr) * (1.0 + math.cos(math.pi * t))


def log_softmax(logits):
    """``x - logsumexp(x)``: Paddle's ``log_softmax``/``cross_entropy`` clip log-probabilities at -64
    (a loss of 64 at most), torch's do not; losses of confidently wrong models must match upstream's."""
    x = logits.astype("float32")
    return x - paddle.logsumexp(x, axis=1, keepdim=True)


def smoothed_cross_entropy(logits, labels, smoothing: float = 0.0, reduction: str = "mean"):
    """``(1 - s) * NLL + s * mean_c(-log p_c)`` in float32 (timm's label smoothing), averaged or summed."""
    logp = log_softmax(logits)
    nll = -paddle.take_along_axis(logp, labels.reshape([-1, 1]).astype("int64"), axis=1).squeeze(1)
    loss = nll if smoothing <= 0 else (1.0 - smoothing) * nll - smoothing * logp.mean(axis=1)
    return loss.sum() if reduction == "sum" else loss.mean()
