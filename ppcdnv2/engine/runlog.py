"""Run logs: a CSV row per epoch, optional VisualDL scalars, and a training-curve PNG.

The whole history lives in the checkpoint, so after ``--resume`` the CSV and the plot are rewritten
from it and continue seamlessly.
"""
from __future__ import annotations

import csv
import io
import warnings
from pathlib import Path
from typing import Any, List, Mapping, Optional

from ..weights import atomic_write

COLUMNS = ["epoch", "step", "lr", "train_loss", "train_top1", "val_loss", "val_top1", "val_top5",
           "ema_val_loss", "ema_val_top1", "ema_val_top5", "epoch_seconds", "images_per_second"]


def write_csv(history: List[Mapping[str, Any]], path, columns: Optional[List[str]] = None) -> None:
    """One row per epoch under ``columns`` (default :data:`COLUMNS`); keys outside them are left out."""
    columns = columns or COLUMNS
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore")
    w.writeheader()
    for row in history:
        w.writerow({k: ("" if row.get(k) is None else row.get(k)) for k in columns})
    atomic_write(path, lambda tmp: Path(tmp).write_text(buf.getvalue()))


def plot_history(history: List[Mapping[str, Any]], path) -> Optional[Path]:
    """Loss, top-1 and learning rate per epoch, as a PNG (see :func:`history_figure`)."""
    fig = history_figure(history)
    if fig is None:
        return None

    def save(tmp):
        fig.savefig(tmp, dpi=90, format="png")

    return atomic_write(path, save)


def history_figure(history: List[Mapping[str, Any]]):
    """The figure of :func:`plot_history`, drawn on a bare ``Figure`` (no pyplot), so the process's backend
    is left alone: inline plots in a notebook keep working after training. Loss on a log scale, whole epochs."""
    try:
        from matplotlib.figure import Figure
    except ImportError:  # pragma: no cover - matplotlib is a listed requirement
        warnings.warn("matplotlib is not installed: no training-curve plot")
        return None
    if not history:
        return None
    ep = [r["epoch"] for r in history]

    def series(key):
        pts = [(e, r.get(key)) for e, r in zip(ep, history) if r.get(key) is not None]
        return [p[0] for p in pts], [p[1] for p in pts]

    fig = Figure(figsize=(13, 3.6))
    axes = fig.subplots(1, 3)
    for key, label in (("train_loss", "train"), ("val_loss", "val"), ("ema_val_loss", "val (EMA)")):
        axes[0].plot(*series(key), marker=".", label=label)
    losses = [v for key in ("train_loss", "val_loss", "ema_val_loss") for v in series(key)[1]]
    if losses and min(losses) > 0:  # a log scale keeps one early spike from flattening the rest
        axes[0].set_yscale("log")
    axes[0].set_title("loss (log scale)" if axes[0].get_yscale() == "log" else "loss")
    for key, label in (("train_top1", "train"), ("val_top1", "val"), ("ema_val_top1", "val (EMA)")):
        axes[1].plot(*series(key), marker=".", label=label)
    axes[1].set_title("top-1 accuracy (%)")
    axes[2].plot(*series("lr"), marker=".")
    axes[2].set_title("learning rate (end of epoch)")
    from matplotlib.ticker import MaxNLocator

    for ax in axes:
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole numbers
        ax.grid(alpha=0.3)
    axes[0].legend()
    axes[1].legend()
    fig.tight_layout()
    return fig


class VisualDLWriter:
    """Scalars to VisualDL when it is installed (``train.visualdl: auto``) or required (``true``)."""

    def __init__(self, logdir, mode="auto"):
        self.writer = None
        if mode is False or mode == "false":
            return
        try:
            from visualdl import LogWriter
        except ImportError:
            if mode is True or mode == "true":
                raise ImportError("train.visualdl is true but visualdl is not installed (pip install visualdl)")
            return
        self.writer = LogWriter(logdir=str(logdir))

    def log(self, row: Mapping[str, Any]) -> None:
        if self.writer is None:
            return
        for k, v in row.items():
            if k not in ("epoch", "step") and isinstance(v, (int, float)):
                self.writer.add_scalar(tag=k, step=int(row["epoch"]), value=float(v))

    def close(self):
        if self.writer is not None:
            self.writer.close()
