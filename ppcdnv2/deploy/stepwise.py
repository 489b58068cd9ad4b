"""``tools/infer.py`` for step-wise models (GFNet): each image is classified with early exit
(``model.predict``) and reported with the step it exited at, the multiply-adds it spent and the patch
positions; ``draw_dir`` gets one picture per image of the glance and the patches.

Such models are not exported (their crops sit where the model computes), so they run as the Paddle model
from a weights file.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Tuple

import numpy as np

from .classify import eval_transform, image_batches, iter_images, load_labels, topk


@dataclass
class StepwisePrediction:
    path: str
    top: List[Tuple[int, str, float]]  # at the exit step: (class index, name, probability), best first
    exit_step: int  # 1-based
    steps: int
    mmacs: Optional[float]  # multiply-adds spent (millions); None when the weights carry no record
    patches: List[Tuple[int, int]]  # (row, column) of the patch of each step 2..exit_step
    picture: Optional[str] = None

    def to_dict(self):
        return {"image": self.path, "top": [{"class": i, "label": name, "prob": p} for i, name, p in self.top],
                "exit_step": self.exit_step, "steps": self.steps, "mmacs": self.mmacs,
                "patches": [{"row": r, "column": c} for r, c in self.patches], "picture": self.picture}


def load_stepwise_model(name: str, weights):
    """The model ``name`` (a registered step-wise model) holding ``weights`` (any file we read), eval mode."""
    from ..registry import model_entry
    from ..weights import load_model

    entry = model_entry(name)
    path = Path(weights)
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    return load_model(path, entry.family.preset(entry.preset), "auto")[0].eval()


def classify_stepwise(model, images, k: int = 5, batch_size: int = 8, budget: Optional[int] = None,
                      labels=None, draw_dir=None, backend: Optional[str] = None, on_error=None,
                      progress: bool = False) -> List[StepwisePrediction]:
    """Early-exit predictions for image files/folders: at ``budget`` (1..39, the weights' thresholds), or every
    step when ``None`` (the last step's prediction). ``on_error(path, message)`` as in ``classify``."""
    import paddle

    from .export import Preprocess
    from ..families.gfnet.model import get_prime
    from ..families.gfnet.visualize import display_image, save_glance_focus

    pre = Preprocess.for_model(model)
    transform = eval_transform(pre, backend)
    cfg = model.cfg
    labels = labels if labels is not None else load_labels(None, cfg.num_classes)
    if labels is not None and len(labels) != cfg.num_classes:
        raise ValueError(f"{len(labels)} labels given but the model has {cfg.num_classes} classes")
    paths = list(iter_images(images))
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(paths), unit="img", desc="classify")
    out: List[StepwisePrediction] = []
    for chunk, batch in image_batches(paths, transform, batch_size, on_error, bar):
        x = paddle.to_tensor(batch)
        r = model.predict(x, budget=budget)
        glances = get_prime(x, cfg.patch_size, cfg.prime_interpolation).numpy() if draw_dir else None
        tops = topk(r.logits, k, labels)
        for i, p in enumerate(chunk):
            exit_step = int(r.exit_step[i])
            mmacs = float(r.flops[i]) if np.isfinite(r.flops[i]) else None
            pred = StepwisePrediction(str(p), tops[i], exit_step + 1, cfg.T, mmacs,
                                      [(int(a), int(b)) for a, b in r.coords[i]])
            if draw_dir:
                _, name, prob = tops[i][0]
                target = Path(draw_dir) / f"{Path(p).stem}_gfnet.png"
                save_glance_focus(target, display_image(batch[i], pre.mean, pre.std),
                                  display_image(glances[i], pre.mean, pre.std), r.coords[i], cfg.patch_size,
                                  cfg.T, exit_step, f"{Path(p).name}: {name} ({prob:.3f})", mmacs)
                pred.picture = str(target)
            out.append(pred)
        if bar is not None:
            bar.update(len(chunk))
    if bar is not None:
        bar.close()
    return out
