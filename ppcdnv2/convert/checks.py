"""Checks shared by every family: a state dict against the shapes an architecture expects."""
from __future__ import annotations

from typing import Dict, Iterable, List, Mapping, Tuple

import numpy as np

from ..weights import WeightsError

Shapes = Dict[str, List[Tuple[int, ...]]]  # key -> acceptable shapes

# Keys a torch checkpoint may lack without harm (BatchNorm counters appeared in torch 0.4.1).
OPTIONAL_SUFFIXES = ("num_batches_tracked",)


class ArchMismatchError(WeightsError):
    """A state dict that does not fit the architecture named in the message."""


def shape_table(state: Mapping[str, np.ndarray]) -> Dict[str, Tuple[int, ...]]:
    return {k: tuple(np.shape(v)) for k, v in state.items()}


def shape_problems(expected: Shapes, state: Mapping[str, np.ndarray]) -> List[str]:
    """Human-readable disagreements between ``state`` and ``expected``, in the model's key order."""
    got = shape_table(state)
    problems = []
    for key, shapes in expected.items():
        if key not in got:
            if not key.endswith(OPTIONAL_SUFFIXES):
                problems.append(f"missing key {key!r}")
        elif got[key] not in shapes:
            want = " or ".join(str(s) for s in shapes)
            problems.append(f"{key}: checkpoint {got[key]}, expected {want}")
    problems += [f"unexpected key {k!r} {got[k]}" for k in got if k not in expected]
    return problems


def check_shapes(expected: Shapes, state: Mapping[str, np.ndarray], label: str, where: str, n: int = 3):
    """Raise :class:`ArchMismatchError` naming ``label`` and the first ``n`` disagreeing keys/shapes."""
    problems = shape_problems(expected, state)
    if problems:
        more = f" (+{len(problems) - n} more)" if len(problems) > n else ""
        raise ArchMismatchError(f"{where} does not match {label}: " + "; ".join(problems[:n]) + more)


def max_abs_diff(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape:
        raise ValueError(f"outputs differ in shape: {a.shape} vs {b.shape}")
    return float(np.abs(a - b).max()) if a.size else 0.0


def first_keys(keys: Iterable[str], n: int = 4) -> str:
    keys = list(keys)
    return ", ".join(keys[:n]) + (f", ... ({len(keys)} keys)" if len(keys) > n else "")

