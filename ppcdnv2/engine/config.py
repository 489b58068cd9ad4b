"""Run configuration: YAML files in sections, ``_base_`` inheritance and ``-o key=value`` overrides.

Why a fixed schema: every key a config may set is listed in ``DEFAULTS``, so a typo in a YAML file
or an override (``train.epoch=5``) fails loudly instead of silently training with the default.
Override values are parsed with ``yaml.safe_load`` (``-o train.epochs=5`` gives an int,
``-o data.mean=[0.5,0.5,0.5]`` a list); nothing typed on the command line is ever ``eval``-ed.
"""
from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any, Dict, Iterable, Mapping, Optional

import yaml

SECTIONS = ("model", "data", "optimizer", "schedule", "train", "eval", "export", "gfnet", "debug")

from ..registry import IMAGENET_MEAN, IMAGENET_STD

# Every key a config may set, with its default (the official ImageNet recipe for CondenseNetV2-A; the
# CondenseNet V1 recipes are configs/condensenet*.yaml).
DEFAULTS: Dict[str, Dict[str, Any]] = {
    "model": {
        # a registered preset of either family (cdnv2_a/b/c, condensenet74_c4_g4, condensenet_cifar86, ...;
        # ppcdnv2.list_models()) or null for a fully custom ``arch``
        "name": "cdnv2_a",
        # condensenetv2 | condensenet (V1): the config class of ``arch``; null: model.name's family, or
        # condensenetv2 without a name
        "family": None,
        # config fields overriding the preset (CondenseNetV2Config or CondenseNetConfig: stages, growth,
        # stem, ...); merged key by key over the base config's; ``arch: null`` clears them first
        "arch": {},
        "num_classes": None,  # null: the preset's (1000) or the dataset's class count
        "pretrained": None,  # weights to start from: our .pdparams/.safetensors or an official .pth
    },
    "data": {
        "dataset": "imagenet",  # imagenet (class folders) | cifar10 | cifar100 | digits
        "root": None,  # imagenet: folder with train/ and val/; cifar: folder with the python batches
        "train_split": "train",
        "val_split": "val",
        "num_workers": 4,
        "image_size": 224,  # training crop and evaluation crop
        "resize": 256,  # evaluation: shorter side resized to this, then center crop image_size
        "interpolation": "bicubic",  # evaluation resize: bicubic (A/B) or bilinear (C), as upstream
        "train_interpolation": "random",  # random-resized-crop: bilinear | bicubic | random (either)
        "scale": [0.08, 1.0],  # random-resized-crop area range
        "ratio": [0.75, 1.3333333333333333],
        "hflip": 0.5,
        "pad_crop": 0,  # CIFAR-style augmentation: pad by this and random-crop back (0: off)
        "color_jitter": 0.0,  # brightness/contrast/saturation strength when auto_augment is off
        "auto_augment": None,  # "rand-m9-mstd0.5" (upstream) or null
        "reprob": 0.0,  # random erasing probability (upstream: 0.2, per-pixel normal noise)
        "mean": list(IMAGENET_MEAN),
        "std": list(IMAGENET_STD),
        "val_fraction": 0.2,  # digits: held-out share (stratified, fixed seed)
        # digits: 0 = each digit fills the image (upsampled to image_size); N > 0 = upsampled to N px and pasted
        # at a random position (per sample; per epoch when training) of a black image_size canvas, so that a
        # downscaled GFNet glance cannot read it but a full-resolution patch at the right place can
        "digits_size": 0,
        "digits_clutter": 0,  # with digits_size: fragments of other digits scattered around it (cluttered MNIST)
        "digits_fragment": 0,  # their side in px (0: digits_size // 2)
        "digits_noise": 0.0,  # with digits_size: std of per-pixel Gaussian noise added (0-255 scale)
        "limit_train": None,  # use a fixed random subset of this many training images (quick runs)
        "limit_val": None,
        "skip_bad": False,  # unreadable images / empty class folders: false = fail naming them, true = skip (warn)
        # image decoding, resizing and augmentation of class-folder datasets: pil (the official evaluation's,
        # reproduces published accuracies) | cv2 (OpenCV: faster; bicubic/bilinear differ slightly from PIL's)
        "backend": "pil",
    },
    "optimizer": {
        "name": "sgd",
        "lr": 0.4,  # for a global batch of ``base_batch``, scaled linearly with train.batch_size
        "base_batch": 1024,
        "momentum": 0.9,
        "nesterov": True,
        "weight_decay": 4.0e-5,
        "no_decay_bn_bias": True,  # no weight decay on 1-D parameters (BatchNorm) and biases, as upstream
    },
    "schedule": {
        "type": "cosine",  # cosine | constant; set per iteration
        "warmup_epochs": 5,
        "warmup_lr": 0.1,  # start of the linear warm-up, scaled like ``lr``
        "min_lr": 0.0,
    },
    "train": {
        "epochs": 350,
        "batch_size": 1024,  # global batch, split evenly over devices and micro-batches
        "micro_batches": 1,  # gradient accumulation: each device runs its share in this many pieces
        "seed": 42,
        "label_smoothing": 0.1,
        "lasso": 0.0,  # weight of CondenseNet's group-lasso term on the LGC weights (0: off)
        "ema": True,
        "ema_decay": 0.9998,
        "amp": False,  # float16 autocast + loss scaling; GPU only (ignored with a warning on CPU)
        "device": "auto",  # auto | cpu | gpu
        "output": "output/cdnv2_a",
        "eval_every": 1,  # evaluate every N epochs (and always after the last)
        "save_every_iters": 0,  # also checkpoint every N iterations inside an epoch (0: epoch ends only)
        "keep_checkpoints": False,  # keep one checkpoint per epoch besides checkpoint_last
        "log_interval": 10,  # tqdm refresh, iterations
        "progress_bar": True,
        "visualdl": "auto",  # auto (if installed) | true | false
        "cpu_threads": None,  # threads for CPU math; null leaves Paddle's default
    },
    "eval": {
        "batch_size": 256,
        "weights": "ema",  # which weights the end-of-training evaluation/condensation uses: ema | model
    },
    "export": {
        "condense": True,  # condense at the end and save the deployment-form weights
        "format": "pdparams",  # pdparams | safetensors
    },
    # GFNet only (model.name gfnet_*; ppcdnv2.families.gfnet.engine): the three training stages of upstream
    # train.py. Other keys it reads: train.batch_size/micro_batches/amp/seed/output/device/lasso/save_every_iters,
    # eval.batch_size, export.condense, data.* (the images are the configuration's W: data.image_size/resize/
    # interpolation are replaced by it). optimizer.*, schedule.*, train.epochs/ema/label_smoothing do not apply.
    "gfnet": {
        "stages": [1, 2, 3],  # which stages, in order; each starts from the previous one's final weights
        # stage-1 start (or a run's first stage): a whole GFNet file (ours, a checkpoint, a released .pth.tar), or
        # backbone weights loaded into both encoders (torchvision / pycls / geffnet .pth, CondenseNetV2 files)
        "pretrained": None,
        "find_thresholds_on": 200000,  # training images to find the 39 x T exit thresholds on (0: none stored)
        # overrides of the configuration's upstream hyperparameters (GFNetTrainConfig); null: upstream's value
        # (GF-CondenseNetV2: MobileNetV3's setup without its drop rates)
        "kind": None,  # resnet | densenet | regnet | mobilenetv3 | efficientnet: whose recipe
        "backbone_lr": None,  # both encoders' base learning rate (cosine per epoch, no warm-up)
        "backbone_lr_stage3": None,  # ... in stage 3 if it should differ (upstream: backbone_lr again)
        "fc_lr_stage1": None,  # the classifier's base learning rate in stage 1 (upstream 0.1)
        "fc_lr_stage3": None,  # ... in stage 3 (upstream 0.01)
        "weight_decay": None,
        "momentum": None,
        "nesterov": None,
        "dsn_ratio": None,  # weight of the backbones' own heads' loss (deep supervision)
        "epochs_stage1": None,
        "epochs_stage2": None,  # upstream 15
        "epochs_stage3": None,
        "train_model_prime": None,  # train the glance encoder in stages 1/3 (false: frozen, eval mode)
        "dropout": None,  # on the local encoder's vector (MobileNetV3 / EfficientNet recipes)
        "drop_connect": None,
        "ppo_lr": None,  # stage 2: Adam's learning rate for the policy
        "gamma": None,
        "ppo_epochs": None,
        "clip_eps": None,
        "value_coef": None,
        "entropy_coef": None,
        "action_std": None,
    },
    "debug": {  # for the tests; not needed in normal use
        "exit_after_iters": None,  # hard-exit (os._exit) after this many iterations of the run
        "kill_in_checkpoint": None,  # SIGKILL the process halfway through writing the N-th checkpoint
        "dump_grads": None,  # folder: write each rank's gradients after the first backward, then exit
    },
}


class ConfigError(ValueError):
    """A config file or override that cannot be used; the message names the file or key."""


# PyYAML (YAML 1.1) reads "4e-5" as a string; a number is meant wherever such a value is written
_SCIENTIFIC = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+$")


def _coerce(value):
    if isinstance(value, str) and _SCIENTIFIC.match(value.strip()):
        return float(value)
    if isinstance(value, list):
        return [_coerce(v) for v in value]
    return value


def _merge(base: Dict[str, Any], update: Mapping[str, Any], where: str, path: str = "") -> None:
    for key, value in update.items():
        full = f"{path}{key}"
        if key not in base:
            raise ConfigError(f"{where}: unknown key {full!r}; known keys here: {sorted(base)}")
        if isinstance(base[key], dict) and key != "arch":
            if not isinstance(value, Mapping):
                raise ConfigError(f"{where}: {full!r} must be a mapping, got {type(value).__name__}")
            _merge(base[key], value, where, full + ".")
        elif key == "arch":
            if value is None:  # start over (e.g. another family's fields than the base config's)
                base[key] = {}
                continue
            if not isinstance(value, Mapping):
                raise ConfigError(f"{where}: {full!r} must be a mapping of model config fields")
            base[key] = {**base[key], **{k: _coerce(v) for k, v in value.items()}}
        else:
            base[key] = _coerce(value)


def _read_yaml(path: Path, seen=()) -> Dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    if path.resolve() in seen:
        raise ConfigError(f"{path}: circular _base_ inheritance")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({e})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of sections, got {type(data).__name__}")
    base = data.pop("_base_", None)
    if base is None:
        return data
    merged: Dict[str, Any] = {}
    for b in [base] if isinstance(base, str) else base:
        parent = _read_yaml((path.parent / b), seen + (path.resolve(),))
        _deep_update(merged, parent)
    _deep_update(merged, data)
    return merged


def _deep_update(dst: Dict[str, Any], src: Mapping[str, Any]) -> None:
    for k, v in src.items():
        if isinstance(v, Mapping) and isinstance(dst.get(k), dict) and k != "arch":
            _deep_update(dst[k], v)
        elif isinstance(v, Mapping) and isinstance(dst.get(k), dict):
            dst[k] = {**dst[k], **dict(v)}
        else:
            dst[k] = copy.deepcopy(v)


def parse_override(text: str) -> tuple:
    """``"train.epochs=5"`` → ``(["train", "epochs"], 5)``; the value is YAML (safe_load), never eval'd."""
    if "=" not in text:
        raise ConfigError(f"override {text!r}: expected section.key=value")
    key, raw = text.split("=", 1)
    keys = [k for k in key.strip().split(".")]
    if len(keys) < 2 or not all(keys):
        raise ConfigError(f"override {text!r}: the key must be section.key (e.g. train.epochs=5)")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as e:
        raise ConfigError(f"override {text!r}: value is not valid YAML ({e})") from None
    return keys, _coerce(value)


def load_config(path: Optional[str] = None, overrides: Iterable[str] = (),
                base: Optional[Mapping[str, Any]] = None) -> Dict[str, Any]:
    """Defaults ← ``base`` (e.g. a checkpoint's config) ← YAML file (with its ``_base_`` chain) ← overrides."""
    cfg = copy.deepcopy(DEFAULTS)
    if base is not None:
        _merge(cfg, base, "stored config")
    if path:
        _merge(cfg, _read_yaml(Path(path)), str(path))
    for text in overrides:
        keys, value = parse_override(text)
        nested: Dict[str, Any] = {}
        cur = nested
        for k in keys[:-1]:
            cur = cur.setdefault(k, {})
        cur[keys[-1]] = value
        _merge(cfg, nested, f"override {text!r}")
    validate(cfg)
    return cfg


_CHOICES = {
    ("data", "dataset"): ("imagenet", "cifar10", "cifar100", "digits"),
    ("data", "interpolation"): ("bilinear", "bicubic"),
    ("data", "train_interpolation"): ("bilinear", "bicubic", "random"),
    ("data", "backend"): ("pil", "cv2"),
    ("optimizer", "name"): ("sgd",),
    ("schedule", "type"): ("cosine", "constant"),
    ("train", "device"): ("auto", "cpu", "gpu"),
    ("eval", "weights"): ("ema", "model"),
    ("export", "format"): ("pdparams", "safetensors"),
}


def validate(cfg: Mapping[str, Any]) -> None:
    from ..registry import families

    if cfg["model"]["family"] is not None and cfg["model"]["family"] not in families():
        raise ConfigError(f"model.family = {cfg['model']['family']!r}; expected one of {[None, *families()]}")
    for (sec, key), choices in _CHOICES.items():
        if cfg[sec][key] not in choices:
            raise ConfigError(f"{sec}.{key} = {cfg[sec][key]!r}; expected one of {list(choices)}")
    positive = [("train", "epochs"), ("train", "batch_size"), ("train", "micro_batches"), ("eval", "batch_size"),
                ("optimizer", "base_batch"), ("data", "image_size")]
    for sec, key in positive:
        v = cfg[sec][key]
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise ConfigError(f"{sec}.{key} must be a positive integer, got {v!r}")
    for sec, key in [("optimizer", "lr"), ("optimizer", "weight_decay"), ("train", "label_smoothing"),
                     ("train", "lasso"), ("train", "ema_decay"), ("schedule", "warmup_lr")]:
        if not isinstance(cfg[sec][key], (int, float)) or isinstance(cfg[sec][key], bool) or cfg[sec][key] < 0:
            raise ConfigError(f"{sec}.{key} must be a non-negative number, got {cfg[sec][key]!r}")
    if not 0 <= cfg["train"]["ema_decay"] < 1:
        raise ConfigError(f"train.ema_decay must be in [0, 1), got {cfg['train']['ema_decay']}")
    if cfg["model"]["name"] is None and not cfg["model"]["arch"]:
        raise ConfigError("model.name is null: give the full architecture in model.arch")
    if cfg["data"]["backend"] == "cv2":
        import importlib.util

        if importlib.util.find_spec("cv2") is None:
            raise ConfigError("data.backend = 'cv2' needs OpenCV: pip install opencv-python-headless")
    if not isinstance(cfg["data"]["skip_bad"], bool):
        raise ConfigError(f"data.skip_bad must be true or false, got {cfg['data']['skip_bad']!r}")
    for key in ("mean", "std"):
        v = cfg["data"][key]
        if not (isinstance(v, (list, tuple)) and len(v) == 3 and all(isinstance(x, (int, float)) for x in v)):
            raise ConfigError(f"data.{key} must be a list of 3 numbers, got {v!r}")


def dump_config(cfg: Mapping[str, Any]) -> str:
    return yaml.safe_dump(dict(cfg), sort_keys=False, default_flow_style=None)


def config_diff(a: Mapping[str, Any], b: Mapping[str, Any], prefix: str = "") -> Dict[str, tuple]:
    """Keys whose values differ between two configs: ``{"train.epochs": (a, b)}``."""
    out = {}
    for k in sorted(set(a) | set(b)):
        va, vb = a.get(k), b.get(k)
        if isinstance(va, Mapping) and isinstance(vb, Mapping) and k != "arch":
            out.update(config_diff(va, vb, f"{prefix}{k}."))
        elif va != vb:
            out[f"{prefix}{k}"] = (va, vb)
    return out
