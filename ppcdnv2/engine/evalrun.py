"""``tools/eval.py``: accuracy and loss of any weights we read, on the data a config describes.

Weights: a training checkpoint (EMA or raw), our ``.pdparams``/``.safetensors`` of either form, or an
official ``.pth`` (converted on the fly). Training-form weights are evaluated as they are or, with
``--form converted``, condensed first. The configuration comes from ``-c`` (with ``-o`` overrides),
or from the training checkpoint itself.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, Optional, Sequence

from ..weights import WeightsError, atomic_write, has_gpu, load_model
from .build import model_config
from .config import load_config


def _map_folders_to_model_classes(ds, num_classes: int, labels: Optional[str], printer) -> None:
    """A folder of a few classes for a model of more: its sorted folder index would be taken as the model's
    class index (a meaningless top-1). Map each folder by name to the model's class list (``labels``, a file of
    the model's class names or ids in index order; the packaged ImageNet names for 1000 classes), or refuse."""
    import numpy as np

    from ..deploy.classify import load_labels

    names = list(load_labels(labels, num_classes) or [])
    if not names:
        raise WeightsError(f"the folder has {ds.num_classes} class folders but the model predicts {num_classes} "
                           f"classes: give --labels FILE (the model's class names or ids, one per line, in index "
                           f"order) so the folders can be matched to them")
    index = {n: i for i, n in enumerate(names)}
    missing = [c for c in ds.classes if c not in index]
    if missing:
        raise WeightsError(f"class folders {missing[:5]} are not among the model's {num_classes} classes "
                           f"({'--labels ' + str(labels) if labels else 'the packaged ImageNet names'}); name the "
                           f"folders after them" + ("" if labels else " or give --labels FILE (e.g. the 1000 "
                                                                   "synset ids in index order)"))
    base = getattr(ds, "base", ds)
    to_model = np.asarray([index[c] for c in base.classes], np.int64)
    base.labels = to_model[base.labels]
    if base is not ds:
        ds.labels = to_model[ds.labels]
    printer(f"class folders mapped to the model's classes by name ({len(ds.classes)} of {num_classes})")


def run_eval(weights: str, config: Optional[str] = None, overrides: Sequence[str] = (), form: str = "auto",
             which: str = "ema", skip_bad: bool = False, batch_size: Optional[int] = None,
             json_out: Optional[str] = None, progress_bar: bool = True, printer=print,
             labels: Optional[str] = None) -> Dict[str, Any]:
    import paddle

    from ..data import EvalBatchSampler, build_dataset, build_loader
    from ..flops import count_flops
    from .checkpoint import CheckpointError, read_checkpoint
    from .evaluate import evaluate

    base = None
    if not config:
        try:
            base = read_checkpoint(weights).meta["config"]
        except CheckpointError:
            raise WeightsError(f"{weights}: not a training checkpoint, so give the data and model config with -c") from None
    cfg = load_config(config, overrides, base=base)
    if skip_bad:
        cfg["data"]["skip_bad"] = True
    paddle.set_device("gpu" if has_gpu() and cfg["train"]["device"] != "cpu" else "cpu")

    ds = build_dataset(cfg["data"], train=False, seed=cfg["train"]["seed"])
    mcfg = model_config(cfg["model"], num_classes=ds.num_classes)
    from ..registry import family_of

    if not family_of(mcfg).single_output:
        raise WeightsError(f"{family_of(mcfg).title} predicts step by step: evaluating it on a folder (anytime and "
                           f"budgeted top-1) is not available in eval.py yet; use the model's glance_and_focus()")
    if ds.num_classes > mcfg.num_classes:
        raise WeightsError(f"the data has {ds.num_classes} classes but the model only {mcfg.num_classes}")
    if cfg["data"]["dataset"] == "imagenet" and (ds.num_classes != mcfg.num_classes or labels):
        _map_folders_to_model_classes(ds, mcfg.num_classes, labels, printer)
    model, source = load_model(weights, mcfg, form, which)
    model.eval()
    fl = count_flops(mcfg, model.form, input_size=cfg["data"]["image_size"])
    printer(f"{weights}: {source}-form weights evaluated in {model.form} form; "
            f"{fl.flops / 1e6:.2f} MFLOPs at {cfg['data']['image_size']}px, {fl.params / 1e6:.3f} M params")
    loader = build_loader(ds, EvalBatchSampler(len(ds), batch_size or cfg["eval"]["batch_size"]),
                          cfg["data"]["num_workers"])
    res = evaluate(model, loader, ds, desc="eval", progress_bar=progress_bar)
    printer(f"{cfg['data']['dataset']} ({len(ds)} images): {res}")
    for name in res.skipped:
        printer(f"  skipped unreadable image: {name}")
    report = {"weights": str(weights), "source_form": source, "form": model.form, "top1": res.top1,
              "top5": res.top5, "loss": res.loss, "count": res.count, "skipped": res.skipped,
              "mflops": fl.flops / 1e6, "mparams": fl.params / 1e6}
    if json_out:
        atomic_write(json_out, lambda tmp: Path(tmp).write_text(json.dumps(report, indent=2)))
    return report
