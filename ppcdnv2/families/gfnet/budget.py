"""Budgeted batch classification of GFNet (upstream ``inference.py``), in numpy, with upstream's float32
arithmetic so that the stored thresholds, accuracies and expected multiply-adds are reproduced exactly.

* :func:`exit_distribution` -- ``main()``'s exit proportions of budget ``p`` (1..39):
  ``exp(log(p / 20) * [1, ..., T])`` normalised, rounded to float32 after every operation.
* :func:`find_thresholds` -- ``dynamic_find_threshold``: per step ``k < T - 1``, among the samples not yet
  exited and in descending order of their step-``k`` max probability, the ``out_n``-th one's max probability
  is the threshold (``out_n = floor(n * probs[k])`` with the product in float32; 1e8 when fewer samples
  remain or ``out_n`` is 0); then every sample with max probability ``>=`` the threshold exits; the last
  threshold is -1e8.
* :func:`evaluate_budget` -- ``dynamic_evaluate``: each sample exits at its first step with max probability
  ``>=`` the threshold (float32 values compared as stored); top-1 in percent of all samples and expected
  multiply-adds ``sum_k (exits_k / n) * flops[k]`` accumulated in float32 (as upstream's tensors do).

Upstream quirks kept: a sample that never reaches its threshold (only possible when the last threshold is
not -1e8) is counted neither as correct nor in the expected cost, but still in ``n``; the walk of
``dynamic_find_threshold`` counts a sample as exited when it passed an earlier threshold, whatever happens
later. Samples are ranked with a stable sort (upstream's ``sort`` does not promise an order among ties;
the fixtures are tie-free).
"""
from __future__ import annotations

import math
from typing import List, NamedTuple, Optional, Sequence, Tuple, Union

import numpy as np

from .config import N_BUDGETS

__all__ = ["exit_distribution", "find_thresholds", "evaluate_budget", "budget_curve", "anytime_accuracy",
           "max_and_argmax", "StepMaxima"]

_BIG = np.float32(1e8)


def exit_distribution(p: float, T: int) -> np.ndarray:
    """Exit proportions [T] float32 of budget ``p`` as upstream ``main()`` computes them.

    Every step is rounded to float32 as torch does; ``log`` and ``exp`` are evaluated in float64 and rounded
    once (correctly rounded float32, the same on every machine), where torch's float32 kernels may be off
    by an ulp: the result can differ from torch's by a few ulp (at most 3 on the fixtures), far below what
    could move ``floor(n * probs)``. The normalising sum adds in torch's order for short vectors (four
    lanes, element ``i`` into lane ``i % 4``, then the lanes left to right).
    """
    _p = np.float32(p * 1.0 / 20)
    log_p = np.float32(np.log(np.float64(_p)))
    scaled = (log_p * np.arange(1, int(T) + 1, dtype=np.float32)).astype(np.float32)
    probs = np.exp(scaled.astype(np.float64)).astype(np.float32)
    lanes = [np.float32(0)] * 4
    for i, v in enumerate(probs):
        lanes[i % 4] = np.float32(lanes[i % 4] + v)
    total = np.float32(np.float32(np.float32(lanes[0] + lanes[1]) + lanes[2]) + lanes[3])
    return (probs / total).astype(np.float32)


class StepMaxima(NamedTuple):
    """All the budget functions read of a softmax [T, N, C]: per step and sample its max probability
    (float32, as stored) and that class. 5 steps of 50,000 validation images take 3 MB instead of 1 GB;
    every function here accepts it in place of the softmax."""

    max_probs: np.ndarray  # [T, N] float32
    classes: np.ndarray  # [T, N] int64


def max_and_argmax(softmax: Union[np.ndarray, StepMaxima]) -> Tuple[np.ndarray, np.ndarray]:
    """Per step and sample: the max probability (as stored, float32) and its class."""
    if isinstance(softmax, StepMaxima):
        return np.asarray(softmax.max_probs), np.asarray(softmax.classes)
    s = np.asarray(softmax)
    if s.ndim != 3:
        raise ValueError(f"softmax must be [T, N, C], got shape {list(s.shape)}")
    return s.max(axis=2), s.argmax(axis=2)


def _probs_for(p, T: int) -> np.ndarray:
    if np.ndim(p) == 0:
        return exit_distribution(float(p), T)
    probs = np.asarray(p, dtype=np.float32).reshape(-1)
    if probs.shape[0] < T - 1:
        raise ValueError(f"need at least {T - 1} exit proportions, got {probs.shape[0]}")
    return probs


def find_thresholds(train_softmax: np.ndarray, p: Union[int, float, Sequence[float]]) -> np.ndarray:
    """Upstream ``dynamic_find_threshold`` on ``train_softmax`` [T, N, C] for budget ``p`` (1..39; or the
    exit proportions themselves, a float32 sequence of length >= T - 1). Returns float32 [T]."""
    max_preds, _ = max_and_argmax(train_softmax)
    n_stage, n_sample = max_preds.shape
    probs = _probs_for(p, n_stage)
    thresholds = np.full([n_stage], _BIG, np.float32)
    filtered = np.zeros([n_sample], bool)
    for k in range(n_stage - 1):
        out_n = math.floor(np.float32(n_sample) * np.float32(probs[k]))
        order = np.argsort(-max_preds[k], kind="stable")
        remaining = order[~filtered[order]]
        if 1 <= out_n <= remaining.shape[0]:
            thresholds[k] = max_preds[k][remaining[out_n - 1]]
        filtered |= max_preds[k] >= thresholds[k]
    thresholds[n_stage - 1] = -_BIG
    return thresholds


def evaluate_budget(val_softmax: np.ndarray, val_targets: np.ndarray, thresholds: Sequence[float],
                    flops: Sequence[float]) -> Tuple[float, float]:
    """Upstream ``dynamic_evaluate``: ``(top-1 in percent, expected multiply-adds)`` with per-step
    ``thresholds`` [T] (float32) and ``flops`` [T] (cost of reaching each step's prediction)."""
    max_preds, argmax_preds = max_and_argmax(val_softmax)
    n_stage, n_sample = max_preds.shape
    thr = np.asarray(thresholds, dtype=np.float32).reshape(-1)
    fl = [float(f) for f in np.asarray(flops, dtype=np.float64).reshape(-1)]
    if thr.shape[0] < n_stage or len(fl) < n_stage:
        raise ValueError(f"need {n_stage} thresholds and flops, got {thr.shape[0]} and {len(fl)}")
    targets = np.asarray(val_targets).reshape(-1).astype(np.int64)
    if targets.shape[0] != n_sample:
        raise ValueError(f"{n_sample} samples but {targets.shape[0]} targets")
    passed = max_preds >= thr[:n_stage, None]  # float32 against float32
    exits = np.where(passed.any(axis=0), passed.argmax(axis=0), -1)
    exited = exits >= 0
    correct = np.zeros([n_sample], bool)
    correct[exited] = argmax_preds[exits[exited], np.nonzero(exited)[0]] == targets[exited]
    acc = int(correct.sum()) * 100.0 / n_sample
    expected = np.float32(0)
    for k in range(n_stage):
        t = np.float32(np.float32(1.0 * int((exits == k).sum())) / np.float32(n_sample))
        expected = np.float32(expected + np.float32(t * np.float32(fl[k])))
    return acc, float(expected)


def budget_curve(train_softmax: np.ndarray, val_softmax: np.ndarray, val_targets: np.ndarray,
                 flops: Sequence[float], thresholds: Optional[np.ndarray] = None
                 ) -> Tuple[np.ndarray, List[float], List[float]]:
    """``main()`` eval mode 2 (or 1 with stored ``thresholds`` [39, T]): ``(thresholds [39, T] float32,
    expected multiply-adds per budget, top-1 per budget)`` for p = 1..39."""
    T = max_and_argmax(val_softmax)[0].shape[0]
    if thresholds is None:
        if train_softmax is None:
            raise ValueError("give train_softmax (to find thresholds) or stored thresholds")
        thresholds = np.stack([find_thresholds(train_softmax, p) for p in range(1, N_BUDGETS + 1)])
    thresholds = np.asarray(thresholds, np.float32).reshape(N_BUDGETS, T)
    accs, costs = [], []
    for p in range(N_BUDGETS):
        a, c = evaluate_budget(val_softmax, val_targets, thresholds[p], flops)
        accs.append(a)
        costs.append(c)
    return thresholds, costs, accs


def anytime_accuracy(softmax: np.ndarray, targets: np.ndarray) -> List[float]:
    """Top-1 (percent) of every step's prediction."""
    _, arg = max_and_argmax(softmax)
    t = np.asarray(targets).reshape(1, -1)
    return [float(v) for v in (arg == t).mean(axis=1) * 100.0]
