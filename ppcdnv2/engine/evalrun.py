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

import numpy as np

from ..weights import WeightsError, atomic_write, has_gpu, load_model
from .build import model_config, resolve_family
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
             labels: Optional[str] = None, thresholds: Optional[str] = None, train_images: Optional[int] = None,
             plot: Optional[str] = None) -> Dict[str, Any]:
    """Evaluate ``weights``; for a step-wise model (GFNet) see :func:`run_stepwise_eval`, which alone reads
    ``thresholds``, ``train_images`` and ``plot``."""
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

    family = resolve_family(cfg["model"])
    if not family.single_output:
        return run_stepwise_eval(weights, cfg, which, batch_size, json_out, progress_bar, printer, labels,
                                 thresholds or "auto", train_images, plot)
    if thresholds or train_images or plot:
        raise WeightsError(f"--thresholds, --train-images and --plot are for step-wise models (GFNet); "
                           f"{family.title} gives one prediction per image")
    ds = build_dataset(cfg["data"], train=False, seed=cfg["train"]["seed"])
    mcfg = model_config(cfg["model"], num_classes=ds.num_classes)
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


DEFAULT_THRESHOLD_IMAGES = 200_000  # upstream inference.py finds the thresholds on 200,000 training images


def run_stepwise_eval(weights: str, cfg: Dict[str, Any], which: str = "ema", batch_size: Optional[int] = None,
                      json_out: Optional[str] = None, progress_bar: bool = True, printer=print,
                      labels: Optional[str] = None, thresholds: str = "auto", train_images: Optional[int] = None,
                      plot: Optional[str] = None) -> Dict[str, Any]:
    """GFNet as upstream ``inference.py`` evaluates it: every step's top-1 on ``data.val_split``, then the
    39 budgets with ``thresholds`` = ``stored`` (the weights', mode 1), ``train`` (found on up to
    ``train_images`` images of ``data.train_split`` under upstream's training augmentation, mode 2) or
    ``auto`` (stored when the weights carry them). The evaluation preprocessing is the configuration's own
    (resize to ``W / crop_pct``, centre crop ``W``): the patch positions depend on ``W``."""
    from ..data import EvalBatchSampler, build_dataset, build_loader
    from ..families.gfnet.evaluation import collect_step_maxima, evaluate_gfnet, step_mmacs

    if thresholds not in ("auto", "stored", "train"):
        raise WeightsError(f"thresholds must be auto, stored or train, got {thresholds!r}")
    if train_images is not None and train_images < 1:
        raise WeightsError(f"--train-images must be >= 1, got {train_images}")
    data = dict(cfg["data"])
    folders = data["dataset"] == "imagenet"
    if not folders and data["dataset"] != "digits":
        raise WeightsError(f"GFNet is evaluated on ImageNet-layout folders (data.dataset: imagenet) or the digits "
                           f"demo, not {data['dataset']!r}")
    mcfg = model_config(cfg["model"])
    data.update(resize=mcfg.resize_size, image_size=mcfg.image_size, interpolation=mcfg.dataset_interpolation)
    seed = cfg["train"]["seed"]
    ds = build_dataset(data, train=False, seed=seed)
    if not folders:  # the digits demo (drawn at W): the model has the data's classes, as its training
        mcfg = model_config(cfg["model"], ds.num_classes)
    if ds.num_classes > mcfg.num_classes:
        raise WeightsError(f"the data has {ds.num_classes} classes but the model only {mcfg.num_classes}")
    if folders and (ds.num_classes != mcfg.num_classes or labels):
        _map_folders_to_model_classes(ds, mcfg.num_classes, labels, printer)
    model, _ = load_model(weights, mcfg, "auto", which)
    model.eval()
    mmacs = " / ".join(f"{v:.4g}" for v in step_mmacs(model))  # 4 digits: the demo's steps cost 1.3 / 3.0 / 4.7 M
    prep = (f"resize {mcfg.resize_size}, {mcfg.dataset_interpolation}" if folders
            else "the digits demo, no resize")
    printer(f"{weights}: GFNet, {mcfg.T} steps of {mcfg.patch_size}px on {mcfg.image_size}px images "
            f"({prep}); M multiply-adds to reach each step: {mmacs}")
    if thresholds == "auto":
        thresholds = "stored" if np.isfinite(model.thresholds.numpy()[:, :-1]).all() else "train"
    bs = batch_size or cfg["eval"]["batch_size"]
    val = collect_step_maxima(model, build_loader(ds, EvalBatchSampler(len(ds), bs), data["num_workers"]),
                              "eval", progress_bar, ds)
    train = None
    if thresholds == "train":
        # upstream: RandomResizedCrop(W) with the configuration's interpolation and a horizontal flip
        tdata = dict(data, scale=[0.08, 1.0], ratio=[3 / 4, 4 / 3], train_interpolation=mcfg.dataset_interpolation,
                     hflip=0.5, color_jitter=0.0, auto_augment=None, reprob=0.0,
                     limit_train=train_images or DEFAULT_THRESHOLD_IMAGES)
        tds = build_dataset(tdata, train=True, seed=seed, classes=getattr(ds, "base", ds).classes)
        if folders and (ds.num_classes != mcfg.num_classes or labels):
            _map_folders_to_model_classes(tds, mcfg.num_classes, labels, lambda *_: None)
        printer(f"finding the thresholds on {len(tds)} training images ({data['train_split']}/)")
        train, _, _ = collect_step_maxima(
            model, build_loader(tds, EvalBatchSampler(len(tds), bs), data["num_workers"]), "thresholds",
            progress_bar, tds)
    ev = evaluate_gfnet(model, (val[0], val[1]), train, name=cfg["model"].get("name"), skipped=val[2])
    printer(ev.table())
    for name in ev.skipped:
        printer(f"  skipped unreadable image: {name}")
    report = ev.to_dict()
    report.update(weights=str(weights))
    if plot:
        printer(f"plot: {ev.plot(plot)}")
    if json_out:
        atomic_write(json_out, lambda tmp: Path(tmp).write_text(json.dumps(report, indent=2, allow_nan=False)))
    return report
