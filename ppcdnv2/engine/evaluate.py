"""Top-1/top-5 accuracy and cross-entropy over a dataset, on one device or summed over many."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional

import numpy as np
import paddle

from .optim import smoothed_cross_entropy


@dataclass
class EvalResult:
    loss: float
    top1: float  # percent
    top5: float  # percent (top-k with k = min(5, classes))
    count: int
    skipped: List[str] = field(default_factory=list)  # unreadable images left out (``skip_bad``)
    predictions: Optional[np.ndarray] = None  # argmax per sample, dataset order (single device only)

    def as_dict(self, prefix: str = "") -> Dict[str, float]:
        return {f"{prefix}loss": self.loss, f"{prefix}top1": self.top1, f"{prefix}top5": self.top5}

    def __str__(self):
        s = f"top-1 {self.top1:.2f}%  top-5 {self.top5:.2f}%  loss {self.loss:.4f}  ({self.count} images)"
        if self.skipped:
            s += f"  skipped {len(self.skipped)} unreadable"
        return s


def topk_correct(logits, labels, ks=(1, 5)) -> List[int]:
    k_max = min(max(ks), logits.shape[1])
    top = paddle.topk(logits, k_max, axis=1)[1]
    hit = (top == labels.reshape([-1, 1]).astype(top.dtype)).astype("int64")
    return [int(hit[:, :min(k, k_max)].sum()) for k in ks]


@paddle.no_grad()
def evaluate(model, loader, dataset=None, world_size: int = 1, predictions: bool = False,
             desc: str = "eval", progress_bar: bool = True) -> EvalResult:
    """Plain cross-entropy (no smoothing) and accuracy, as upstream's ``validate``; eval mode."""
    from tqdm import tqdm

    was_training = model.training
    model.eval()
    sums = np.zeros(4, np.float64)  # loss sum, top1, top5, count
    bad: List[int] = []
    preds = {} if predictions else None
    for images, labels, index in tqdm(loader, desc=desc, leave=False, disable=not progress_bar, dynamic_ncols=True):
        ok = labels >= 0
        if not bool(ok.all()):
            bad.extend(index[~ok].numpy().tolist())
            if not bool(ok.any()):
                continue
            images, labels, index = images[ok], labels[ok], index[ok]
        logits = model(images).astype("float32")
        loss = smoothed_cross_entropy(logits, labels, 0.0, reduction="sum")  # unclipped, unlike F.cross_entropy
        c1, c5 = topk_correct(logits, labels)
        sums += [float(loss), c1, c5, labels.shape[0]]
        if preds is not None:
            preds.update(zip(index.numpy().tolist(), logits.argmax(1).numpy().tolist()))
    if world_size > 1:
        import paddle.distributed as dist

        t = paddle.to_tensor(sums)
        dist.all_reduce(t)
        sums = t.numpy()
    if was_training:
        model.train()
    n = int(sums[3])
    if n == 0:
        raise ValueError("evaluation saw no readable images")
    names = [dataset.describe(i) for i in bad] if dataset is not None else [str(i) for i in bad]
    pred = np.asarray([preds[i] for i in sorted(preds)], np.int64) if preds is not None else None
    return EvalResult(sums[0] / n, 100.0 * sums[1] / n, 100.0 * sums[2] / n, n, names, pred)
