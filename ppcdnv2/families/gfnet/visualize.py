"""Pictures of what a GFNet looked at: the glance (the whole image at P x P, what step 1 sees) beside the
image with the patches of steps 2.. drawn where the policy put them, numbered, and the step it exited at.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import numpy as np

__all__ = ["glance_focus_figure", "save_glance_focus", "display_image"]


def display_image(x: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """A normalised CHW float image back to HWC uint8 for drawing."""
    img = np.asarray(x, np.float32).transpose(1, 2, 0) * np.asarray(std, np.float32) + np.asarray(mean, np.float32)
    return (np.clip(img, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def glance_focus_figure(image: np.ndarray, glance: np.ndarray, coords: np.ndarray, patch_size: int, steps: int,
                        exit_step: int, title: str, mmacs: Optional[float] = None):
    """``image`` [W, W, 3] uint8 (the network's input), ``glance`` [P, P, 3] uint8, ``coords`` [k, 2] (row,
    column) of the patches taken before the exit (``k = exit_step``, 0-based), on a bare ``Figure``."""
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle

    fig = Figure(figsize=(9.0, 4.6))
    left, right = fig.subplots(1, 2, gridspec_kw={"width_ratios": [1, 1]})
    left.imshow(glance, interpolation="nearest")
    left.set_title(f"step 1: glance ({patch_size}x{patch_size} of the whole image)", fontsize=9)
    right.imshow(image)
    for t, (row, col) in enumerate(np.asarray(coords).reshape(-1, 2), start=2):
        color = f"C{(t - 2) % 10}"
        right.add_patch(Rectangle((col - 0.5, row - 0.5), patch_size, patch_size, fill=False, lw=2, ec=color))
        right.text(col + 3, row + 3, str(t), color="white", fontsize=10, fontweight="bold", va="top",
                   bbox=dict(facecolor=color, alpha=0.8, pad=1, lw=0))
    cost = f", {mmacs:.0f} M multiply-adds" if mmacs is not None and np.isfinite(mmacs) else ""
    right.set_title(f"patches of steps 2..{exit_step + 1}; exit at step {exit_step + 1} of {steps}{cost}"
                    if exit_step > 0 else f"exit at step 1 of {steps} (no patch needed){cost}", fontsize=9)
    for ax in (left, right):
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def save_glance_focus(path, *args, **kwargs) -> Path:
    """:func:`glance_focus_figure` written as a PNG, atomically."""
    from ...weights import atomic_write

    fig = glance_focus_figure(*args, **kwargs)
    return atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=90, format="png"))
