"""Pictures of what a GFNet looked at: the glance (the whole image at P x P, what step 1 sees) beside the
image with the patches of steps 2.. drawn where the policy put them, numbered, and the step it exited at;
and of a training run: held-out top-1 of every step over the epochs of the three stages.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, List, Mapping, Optional, Sequence

import numpy as np

__all__ = ["glance_focus_figure", "save_glance_focus", "display_image", "training_figure", "save_training_curves"]


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


STAGE_NAMES = {1: "stage 1\nrandom patches", 2: "stage 2\nPPO", 3: "stage 3\npolicy's patches"}


def training_figure(history: List[Mapping[str, Any]]):
    """A GFNet run's ``log.csv`` rows as a figure: left, the held-out top-1 of every step per epoch (one line
    per step, so the gain of each patch shows as the gap between lines), the stages shaded; right, the training
    loss of stages 1/3 and the mean PPO reward of stage 2. None without rows."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    rows = [r for r in history if r.get("val_step_top1") not in (None, "")]
    if not rows:
        return None
    epochs = [int(r["epoch"]) for r in rows]
    per_step = [[float(v) for v in str(r["val_step_top1"]).split()] for r in rows]
    steps = max(len(v) for v in per_step)
    fig = Figure(figsize=(12, 4.0))
    top1, loss = fig.subplots(1, 2, gridspec_kw={"width_ratios": [3, 2]})
    for t in range(steps):
        pts = [(e, v[t]) for e, v in zip(epochs, per_step) if len(v) > t]
        top1.plot([p[0] for p in pts], [p[1] for p in pts], marker=".", color=f"C{t}",
                  label="step 1 (glance)" if t == 0 else f"step {t + 1}")
    for stage in sorted({int(r["stage"]) for r in rows}):
        span = [e for e, r in zip(epochs, rows) if int(r["stage"]) == stage]
        for ax in (top1, loss):
            ax.axvspan(min(span) - 0.5, max(span) + 0.5, color=f"C{stage + 6}", alpha=0.08, lw=0)
        top1.text((min(span) + max(span)) / 2, 0.98, STAGE_NAMES.get(stage, f"stage {stage}"), ha="center",
                  va="top", fontsize=8, transform=top1.get_xaxis_transform())
    top1.set_title("held-out top-1 (%) of every step")
    top1.legend(fontsize=8, loc="lower right")
    top1.set_ylim(top=top1.get_ylim()[1] + 0.14 * (top1.get_ylim()[1] - top1.get_ylim()[0]))  # room for the labels
    trained = [(e, float(r["train_loss"])) for e, r in zip(epochs, rows) if r.get("train_loss") not in (None, "")]
    if trained:
        loss.plot([p[0] for p in trained], [p[1] for p in trained], "o", color="C0", label="training loss (stages 1, 3)")
    loss.set_title("training loss / PPO reward")
    rewards = [(e, float(r["reward"])) for e, r in zip(epochs, rows) if r.get("reward") not in (None, "")]
    if rewards:
        twin = loss.twinx()
        twin.plot([p[0] for p in rewards], [p[1] for p in rewards], "s-", color="C3", label="mean PPO reward (stage 2)")
        twin.legend(fontsize=8, loc="upper right")
    if trained:
        loss.legend(fontsize=8, loc="upper left")
    for ax in (top1, loss):
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def save_training_curves(history: List[Mapping[str, Any]], path) -> Optional[Path]:
    """:func:`training_figure` written as a PNG, atomically (None without rows)."""
    from ...weights import atomic_write

    fig = training_figure(history)
    if fig is None:
        return None
    return atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=90, format="png"))
