"""GFNet on a labelled image set, as upstream ``inference.py`` evaluates it: the top-1 of every step's
prediction (anytime classification), then budgeted batch classification for the 39 budgets, with the
thresholds stored in the weights or found on training images; a table, the paper's plot (top-1 against
mean multiply-adds) and a JSON-ready record. ``tools/eval.py`` calls :func:`evaluate_gfnet`.

Only each step's max probability and its class are kept per image (:class:`StepMaxima`): that is all
the threshold rule reads, and it keeps 200,000 training images of a 5-step model in 6 MB.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from .budget import StepMaxima, anytime_accuracy, budget_curve
from .config import N_BUDGETS

__all__ = ["GFNetEvaluation", "collect_step_maxima", "evaluate_gfnet", "step_mmacs", "budget_figure"]


def collect_step_maxima(model, loader, desc: str = "eval", progress_bar: bool = True, dataset=None
                        ) -> Tuple[StepMaxima, np.ndarray, List[str]]:
    """Run every step on every batch (eval mode): ``(StepMaxima [T, N], targets [N], unreadable images)``;
    samples the loader marks unreadable (label < 0, ``skip_bad``) are left out and named."""
    import paddle
    import paddle.nn.functional as F
    from tqdm import tqdm

    model.eval()
    maxes, classes, targets, bad = [], [], [], []
    with paddle.no_grad():
        for images, labels, index in tqdm(loader, desc=desc, leave=False, disable=not progress_bar,
                                          dynamic_ncols=True):
            ok = labels >= 0
            if not bool(ok.all()):
                bad.extend(index[~ok].numpy().tolist())
                if not bool(ok.any()):
                    continue
                images, labels = images[ok], labels[ok]
            softmax = F.softmax(model(images).astype("float32"), axis=-1)  # [T, B, C]
            maxes.append(paddle.max(softmax, axis=-1).numpy())
            classes.append(paddle.argmax(softmax, axis=-1).numpy().astype(np.int64))
            targets.append(labels.numpy().astype(np.int64))
    if not targets:
        raise ValueError(f"{desc}: no readable images")
    names = [dataset.describe(i) for i in bad] if dataset is not None else [str(i) for i in bad]
    return StepMaxima(np.concatenate(maxes, axis=1), np.concatenate(classes, axis=1)), np.concatenate(targets), names


def step_mmacs(model) -> List[float]:
    """Millions of multiply-adds to reach each step's prediction: the weights' own ``flops`` record, or our
    counter's (equal to upstream's for every released configuration) when the weights carry none."""
    stored = model.flops.numpy()
    if np.isfinite(stored).all():
        return [float(v) for v in stored]
    from .family import cumulative_macs

    return [v / 1e6 for v in cumulative_macs(model.cfg)]


def _finite_or_none(values) -> Optional[List[float]]:
    values = np.asarray(values, np.float64)
    return [float(v) for v in values.reshape(-1)] if np.isfinite(values).all() else None


@dataclass
class GFNetEvaluation:
    """What :func:`evaluate_gfnet` measured; ``recorded_*`` are the weights' own evaluation record (a
    released checkpoint's ``anytime_classification`` / ``budgeted_batch_classification``, on the full
    ImageNet validation set), ``None`` when the weights carry none."""

    model: str
    count: int
    step_top1: List[float]  # percent, per step
    step_mmacs: List[float]  # millions of multiply-adds to reach each step
    thresholds: np.ndarray  # [39, T] float32
    threshold_source: str  # "stored" | "train"
    threshold_images: int  # training images the thresholds were found on (0: stored)
    budget_top1: List[float]  # per budget p = 1..39
    budget_mmacs: List[float]  # expected multiply-adds per image (millions), per budget
    recorded_step_top1: Optional[List[float]] = None
    recorded_budget_top1: Optional[List[float]] = None
    recorded_budget_mmacs: Optional[List[float]] = None
    skipped: List[str] = field(default_factory=list)

    @property
    def steps(self) -> int:
        return len(self.step_top1)

    def table(self) -> str:
        """The anytime table and the budget table, as text."""
        rec = self.recorded_step_top1
        lines = [f"anytime classification, {self.model}, {self.count} images:",
                 "  step  M multiply-adds  top-1 %" + ("  (weights' record)" if rec else "")]
        for t in range(self.steps):
            lines.append(f"  {t + 1:>4}  {self.step_mmacs[t]:>15.1f}  {self.step_top1[t]:>7.2f}"
                         + (f"  ({rec[t]:.2f})" if rec else ""))
        source = ("the thresholds stored in the weights" if self.threshold_source == "stored" else
                  f"thresholds found on {self.threshold_images} training images")
        rec_b = self.recorded_budget_top1 is not None and self.recorded_budget_mmacs is not None
        lines += [f"budgeted batch classification ({source}):",
                  "  budget  mean M multiply-adds  top-1 %" + ("  (weights' record: M, top-1 %)" if rec_b else "")]
        for p in range(N_BUDGETS):
            lines.append(f"  {p + 1:>6}  {self.budget_mmacs[p]:>20.1f}  {self.budget_top1[p]:>7.2f}"
                         + (f"  ({self.recorded_budget_mmacs[p]:.1f}, {self.recorded_budget_top1[p]:.2f})"
                            if rec_b else ""))
        return "\n".join(lines)

    def to_dict(self) -> Dict[str, Any]:
        return {"model": self.model, "count": self.count, "skipped": self.skipped,
                "anytime": [{"step": t + 1, "mmacs": self.step_mmacs[t], "top1": self.step_top1[t]}
                            for t in range(self.steps)],
                "threshold_source": self.threshold_source, "threshold_images": self.threshold_images,
                "budgets": [{"budget": p + 1, "mmacs": self.budget_mmacs[p], "top1": self.budget_top1[p],
                             "thresholds": [_json_float(v) for v in self.thresholds[p]]}
                            for p in range(N_BUDGETS)],
                "record": {"anytime_top1": self.recorded_step_top1, "budget_top1": self.recorded_budget_top1,
                           "budget_mmacs": self.recorded_budget_mmacs}}

    def plot(self, path) -> Path:
        """The figure of :func:`budget_figure` as a PNG, written atomically."""
        from ...weights import atomic_write

        fig = budget_figure(self)
        return atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=100, format="png"))


def _json_float(v: float) -> Optional[float]:
    v = float(v)
    return v if math.isfinite(v) else None


def budget_figure(ev: GFNetEvaluation):
    """Top-1 against mean multiply-adds: the budget curve, every step's anytime point, and the weights' own
    record when they carry one (the paper's figure). A bare ``Figure``: no pyplot state is touched."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 4.4))
    ax = fig.subplots()
    order = np.argsort(ev.budget_mmacs, kind="stable")
    ax.plot(np.asarray(ev.budget_mmacs)[order], np.asarray(ev.budget_top1)[order], marker=".", color="C0",
            label=f"budgeted, {'stored' if ev.threshold_source == 'stored' else 'found'} thresholds")
    ax.plot(ev.step_mmacs, ev.step_top1, "s--", color="C1", label="every image to step t (anytime)")
    for t, (x, y) in enumerate(zip(ev.step_mmacs, ev.step_top1)):
        ax.annotate(f"t={t + 1}", (x, y), textcoords="offset points", xytext=(3, 5), fontsize=8, color="C1")
    if ev.recorded_budget_top1 is not None and ev.recorded_budget_mmacs is not None:
        ax.plot(ev.recorded_budget_mmacs, ev.recorded_budget_top1, ":", color="0.5",
                label="the weights' own record")
    ax.set_xlabel("mean multiply-adds per image (millions)")
    ax.set_ylabel("top-1 accuracy (%)")
    ax.set_title(f"{ev.model}: {ev.count} images", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    return fig


def evaluate_gfnet(model, val: Tuple[StepMaxima, np.ndarray], train: Optional[StepMaxima] = None,
                   name: Optional[str] = None, skipped: Optional[List[str]] = None) -> GFNetEvaluation:
    """Anytime and budgeted top-1 from the collected ``val`` (:func:`collect_step_maxima`); thresholds found on
    ``train`` (upstream ``inference.py`` mode 2) when given, else the model's stored ones (mode 1)."""
    maxima, targets = val
    flops = step_mmacs(model)
    if train is None:
        stored = model.thresholds.numpy()
        if not np.isfinite(stored[:, :-1]).all():
            raise ValueError("these weights carry no thresholds (not a released GFNet checkpoint): find them on "
                             "training images (tools/eval.py --thresholds train)")
        thresholds, costs, accs = budget_curve(None, maxima, targets, flops, thresholds=stored)
        source, n_train = "stored", 0
    else:
        thresholds, costs, accs = budget_curve(train, maxima, targets, flops)
        source, n_train = "train", int(train.max_probs.shape[1])
    recorded = model.budgeted_batch_classification.numpy()
    return GFNetEvaluation(
        model=name or f"gfnet_{_preset_name(model.cfg)}", count=int(targets.shape[0]),
        step_top1=anytime_accuracy(maxima, targets), step_mmacs=flops, thresholds=thresholds,
        threshold_source=source, threshold_images=n_train, budget_top1=list(accs), budget_mmacs=list(costs),
        recorded_step_top1=_finite_or_none(model.anytime_classification.numpy()),
        recorded_budget_top1=_finite_or_none(recorded[1]), recorded_budget_mmacs=_finite_or_none(recorded[0]),
        skipped=list(skipped or []))


def _preset_name(cfg) -> str:
    from .config import PRESETS

    for key, preset in PRESETS.items():
        if preset == cfg:
            return key
    return cfg.backbone
