"""Images → top-k labels with probabilities, for any predictor of ``ppcdnv2.deploy.predictor``.

Preprocessing is upstream's evaluation transform (``ppcdnv2.data.transforms.EvalTransform``:
shorter side to 256, bicubic for A/B and bilinear for C, center crop 224, ImageNet mean/std), with PIL
by default or with OpenCV: ``backend="cv2"`` (an argument of ``classify``/``eval_transform``/``load_image``),
else the ``backend`` of the export's preprocessing where it records one, else ``"pil"``. Images of 16 bits
(or float) per sample are scaled to 8 bits (``ppcdnv2.data.decode``), not clipped.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Iterable, Iterator, List, Optional, Sequence, Tuple

import numpy as np

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".ppm", ".gif")
_CLASSES_FILE = Path(__file__).with_name("imagenet_classes.txt")


@lru_cache(maxsize=None)
def _read_labels(path: str) -> Tuple[str, ...]:
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError as e:
        raise FileNotFoundError(f"cannot read labels file {path}: {e}") from None
    return tuple(line.strip() for line in lines if line.strip() and not line.startswith("#"))


def imagenet_classes() -> Tuple[str, ...]:
    """The 1000 ImageNet-1k class names shipped with the package, index order."""
    names = _read_labels(str(_CLASSES_FILE))
    if len(names) != 1000:
        raise RuntimeError(f"{_CLASSES_FILE} holds {len(names)} names, expected 1000")
    return names


def load_labels(path=None, num_classes: Optional[int] = None) -> Optional[Tuple[str, ...]]:
    """Names from a file (one per line, '#' comments); without a file the ImageNet names for 1000 classes."""
    if path is None:
        return imagenet_classes() if num_classes == 1000 else None
    names = _read_labels(str(path))
    if num_classes is not None and len(names) != num_classes:
        raise ValueError(f"labels file {path} has {len(names)} names but the model has {num_classes} classes")
    return names


def iter_images(inputs: Iterable) -> Iterator[Path]:
    """Files as given, folders expanded (recursively, sorted) to their image files."""
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            found = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise FileNotFoundError(f"no images ({', '.join(IMAGE_SUFFIXES)}) under folder {p}")
            yield from found
        elif p.is_file():
            yield p
        else:
            raise FileNotFoundError(f"no such image file or folder: {p}")


def preprocess_backend(preprocess=None, backend: Optional[str] = None) -> str:
    """The image backend: ``backend`` if given, else the preprocessing's ``backend`` field if it has one, else pil."""
    return backend or getattr(preprocess, "backend", None) or "pil"


def eval_transform(preprocess, backend: Optional[str] = None):
    from ..data.transforms import EvalTransform

    return EvalTransform(preprocess.resize, preprocess.crop, preprocess.interpolation,
                         preprocess.mean, preprocess.std, backend=preprocess_backend(preprocess, backend))


def load_image(path, transform, backend: Optional[str] = None) -> np.ndarray:
    """The file decoded with ``backend`` (default: the transform's, else PIL) and preprocessed by ``transform``."""
    from ..data.decode import ImageReadError, read_image

    try:
        img = read_image(path, backend or getattr(transform, "backend", None) or "pil")
    except ImageReadError as e:
        raise ValueError(f"cannot read image {path}: {e.reason}") from None
    return transform(img)


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


@dataclass
class Prediction:
    path: str
    top: List[Tuple[int, str, float]]  # (class index, name, probability), best first

    def to_dict(self):
        return {"image": self.path,
                "top": [{"class": i, "label": name, "prob": p} for i, name, p in self.top]}


def topk(logits: np.ndarray, k: int = 5, labels: Optional[Sequence[str]] = None) -> List[List[Tuple[int, str, float]]]:
    """Per row: the ``k`` most probable classes as (index, name, softmax probability), ranked by the logits
    (probabilities of confident predictions underflow to 0 and would lose the order of ranks 2..k)."""
    logits = np.asarray(logits, dtype=np.float64)
    probs = softmax(logits)
    k = min(k, probs.shape[1])
    order = np.argsort(-logits, axis=1, kind="stable")[:, :k]
    return [[(int(i), labels[i] if labels is not None else str(int(i)), float(row[i])) for i in idx]
            for row, idx in zip(probs, order)]


def image_batches(paths: Sequence[Path], transform, batch_size: int, on_error=None, bar=None
                  ) -> Iterator[Tuple[List[Path], np.ndarray]]:
    """``(paths, preprocessed batch)`` of the readable images, ``batch_size`` files at a time. An unreadable
    file goes to ``on_error(path, message)`` (and counts on ``bar``) and is left out; without ``on_error`` it
    raises ``ValueError``. The caller counts the returned images on ``bar``."""
    for start in range(0, len(paths), batch_size):
        chunk, arrays = [], []
        for p in paths[start:start + batch_size]:
            try:
                arrays.append(load_image(p, transform))
                chunk.append(p)
            except ValueError as e:
                if on_error is None:
                    raise
                on_error(p, str(e))
                if bar is not None:
                    bar.update(1)
        if chunk:
            yield chunk, np.stack(arrays)


def classify(predictor, images: Iterable, k: int = 5, batch_size: int = 8, labels=None,
             preprocess=None, progress: bool = False, backend: Optional[str] = None,
             on_error=None) -> List[Prediction]:
    """Top-``k`` predictions for image files/folders, ``batch_size`` images per forward pass.

    ``backend``: ``"pil"`` or ``"cv2"`` for decoding and resizing; default the preprocessing's, else PIL.
    ``on_error(path, message)``: called for each unreadable image, which is then left out (the others are
    still classified); without it the first unreadable image raises ``ValueError``.
    """
    from .export import Preprocess

    meta = getattr(predictor, "meta", None)
    preprocess = preprocess or (meta.preprocess if meta else Preprocess())
    transform = eval_transform(preprocess, backend)
    paths = list(iter_images(images))
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(paths), unit="img", desc="classify")
    results = []
    for chunk, x in image_batches(paths, transform, batch_size, on_error, bar):
        logits = predictor(x)
        if labels is not None and len(labels) != logits.shape[1]:
            raise ValueError(f"{len(labels)} labels given but the model has {logits.shape[1]} classes")
        if labels is None and (meta is None or meta.labels == "imagenet"):
            labels = load_labels(None, logits.shape[1])  # ImageNet names for 1000 classes, else indexes
        results += [Prediction(str(p), top) for p, top in zip(chunk, topk(logits, k, labels))]
        if bar is not None:
            bar.update(len(chunk))
    if bar is not None:
        bar.close()
    return results
