"""Data for training and evaluation: datasets, official preprocessing, samplers, loaders."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from .datasets import CIFAR, DataError, DataWarning, Digits, ImageFolder, Subset, digits_images, digits_split
from .decode import BACKENDS, read_image
from .sampler import EvalBatchSampler, TrainBatchSampler
from .transforms import ArrayEvalTransform, ArrayTrainTransform, EvalTransform, TrainTransform

__all__ = ["CIFAR", "DataError", "DataWarning", "Digits", "ImageFolder", "Subset", "EvalBatchSampler",
           "TrainBatchSampler", "EvalTransform", "TrainTransform", "ArrayEvalTransform", "ArrayTrainTransform",
           "build_dataset", "build_loader", "digits_images", "digits_split", "BACKENDS", "read_image"]


def build_dataset(data_cfg: Mapping[str, Any], train: bool, seed: int = 0, classes=None):
    """The training or validation dataset a ``data`` config section describes."""
    name = data_cfg["dataset"]
    mean, std = data_cfg["mean"], data_cfg["std"]
    limit = data_cfg["limit_train"] if train else data_cfg["limit_val"]
    backend = data_cfg.get("backend") or "pil"  # decoding, resizing, augmentation: pil | cv2
    if name == "imagenet":
        root = data_cfg["root"]
        if not root:
            raise DataError("data.root is not set: give the folder holding train/ and val/ "
                            "(e.g. -o data.root=/data/imagenet)")
        split = data_cfg["train_split"] if train else data_cfg["val_split"]
        if train:
            tf = TrainTransform(data_cfg["image_size"], data_cfg["scale"], data_cfg["ratio"],
                                data_cfg["train_interpolation"], data_cfg["hflip"], data_cfg["color_jitter"],
                                data_cfg["auto_augment"], data_cfg["reprob"], mean, std, backend=backend)
        else:
            tf = EvalTransform(data_cfg["resize"], data_cfg["image_size"], data_cfg["interpolation"], mean, std,
                               backend=backend)
        ds = ImageFolder(Path(root) / split if split else Path(root), tf, classes=classes, seed=seed,
                         skip_bad=data_cfg["skip_bad"], backend=backend, require_samples=train)
    elif name in ("cifar10", "cifar100", "digits"):
        if train:
            tf = ArrayTrainTransform(data_cfg["pad_crop"], data_cfg["hflip"], mean, std, data_cfg["reprob"])
        else:
            tf = ArrayEvalTransform(mean, std)
        if name == "digits":
            if data_cfg.get("digits_size"):  # the digit pasted on a cluttered image_size canvas (GFNet demo)
                ds = Digits(train, tf, data_cfg["val_fraction"], size=data_cfg["digits_size"], seed=seed,
                            canvas=data_cfg["image_size"], clutter=data_cfg.get("digits_clutter") or 0,
                            fragment=data_cfg.get("digits_fragment") or 0, noise=data_cfg.get("digits_noise") or 0.0)
            else:
                ds = Digits(train, tf, data_cfg["val_fraction"], size=data_cfg["image_size"], seed=seed)
        else:
            if not data_cfg["root"]:
                raise DataError(f"data.root is not set: give the folder holding the {name} python batches")
            ds = CIFAR(data_cfg["root"], name, train, tf, seed=seed)
    else:
        raise DataError(f"unknown dataset {name!r}")
    return ds.subset(limit, seed=0) if limit else ds


class InProcessLoader:
    """Batches read in the calling thread (``num_workers=0``).

    Paddle's own single-process ``DataLoader`` reads in a background thread that dies silently when
    the dataset raises, leaving the training or evaluation waiting forever; here a bad sample's
    error (which names its file) reaches the caller.
    """

    def __init__(self, dataset, batch_sampler):
        self.dataset, self.batch_sampler = dataset, batch_sampler

    def __len__(self):
        return len(self.batch_sampler)

    def __iter__(self):
        import numpy as np
        import paddle

        for keys in self.batch_sampler:
            samples = [self.dataset[k] for k in keys]
            yield [paddle.to_tensor(np.stack([s[j] for s in samples])) for j in range(len(samples[0]))]


def build_loader(dataset, batch_sampler, num_workers: int = 0):
    """Batches of (images, labels, indices) tensors; worker processes when ``num_workers > 0``."""
    if num_workers <= 0:
        return InProcessLoader(dataset, batch_sampler)
    return WorkerLoader(dataset, batch_sampler, num_workers)


def _one_cv2_thread(worker_id: int) -> None:
    """In a loader worker of the cv2 backend: OpenCV sequential (the workers are the parallelism; a thread
    pool per worker would oversubscribe the cores)."""
    import cv2

    cv2.setNumThreads(1)


class WorkerLoader:
    """Paddle's multi-process ``DataLoader``, with a worker's read error re-raised here naming the file.

    (Paddle reports it only as "Blocking queue is killed"; the worker instead returns the sample marked
    ``FAILED`` and the main process reads it again to raise the real ``DataError``.)
    """

    def __init__(self, dataset, batch_sampler, num_workers: int):
        from paddle.io import DataLoader

        base = getattr(dataset, "base", dataset)
        base.defer_errors = True
        self.dataset = dataset
        init = _one_cv2_thread if getattr(base, "backend", "pil") == "cv2" else None
        self.loader = DataLoader(dataset, batch_sampler=batch_sampler, num_workers=num_workers, return_list=True,
                                 use_shared_memory=True, worker_init_fn=init)

    def __len__(self):
        return len(self.loader)

    def __iter__(self):
        from .datasets import FAILED

        for batch in self.loader:
            failed = (batch[1] == FAILED).numpy()
            if failed.any():
                index = int(batch[2].numpy()[failed][0])
                base = getattr(self.dataset, "base", self.dataset)
                base.defer_errors = False
                try:
                    self.dataset[index]
                finally:
                    base.defer_errors = True
                raise DataError(f"{self.dataset.describe(index)}: cannot read this sample")
            yield batch
