"""Image transforms with PIL and numpy, CHW float32 out.

Evaluation follows the official ``convert_and_eval.py`` exactly: torchvision's
``Resize(256, BICUBIC | BILINEAR) → CenterCrop(224) → ToTensor → Normalize`` re-done with the same
PIL calls and the same float32 arithmetic (shorter side to ``resize`` with the longer side truncated
to int, crop offsets rounded half-to-even as Python's ``round``, /255, then (x - mean) / std), so the
tensors are equal to torchvision's, not merely close.

Training randomness comes from a ``numpy.random.Generator`` passed in per sample (see
``ppcdnv2.data.datasets``), never from global state, so augmentation is reproducible for any
number of loader workers or devices and after ``--resume``.

Two backends (``data.backend``), chosen per transform with ``backend=``: ``pil`` (default; the images
are PIL images and every step is the PIL call above) and ``cv2`` (HWC uint8 RGB arrays, resized with
``cv2.resize`` ``INTER_CUBIC`` / ``INTER_LINEAR``, the augmentations re-done with numpy/OpenCV in
``ppcdnv2.data.autoaugment``). Both give the same output sizes (the shorter-side rule, the crop offsets
and the random crop boxes are computed by the same code) and draw the same random numbers in the same
order, so a seed picks the same crops, flips and RandAugment operations in both. The pixels differ:
PIL's bicubic is Keys' kernel with a = -0.5 and, when shrinking, widened by the scale factor (an
antialiasing filter); OpenCV's is a = -0.75 on a fixed 4x4 support, and neither of its filters
antialiases, so shrinking a large photo aliases. Measured on scikit-image's astronaut, chelsea, coffee
and rocket (shorter side 256, center crop 224; ``tests/test_data_cv2.py``, ``benchmarks/preprocess.py``):
mean |PIL - cv2| per photo 0.017-0.042 in normalised units for bicubic (0.025 averaged; about 1.5 grey
levels), 0.014-0.034 for bilinear; single values up to 1.5 (≈ 85 grey levels) on sharp edges; the more
a photo is shrunk (astronaut: 512 → 256), the larger the difference. ``cv2.INTER_AREA`` would be closer
to PIL when shrinking (0.006-0.018) but is not the interpolation the recipe names. The official
evaluation uses PIL, so the ``pil`` backend is the one that reproduces published accuracies.

A transform accepts either a PIL image (any mode) or an array (any depth; see
``ppcdnv2.data.decode``) and converts it to its backend's form.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import numpy as np
from PIL import Image, ImageEnhance

from ..registry import IMAGENET_MEAN, IMAGENET_STD
from .decode import as_rgb_array, as_rgb_pil, check_backend, import_cv2

INTERPOLATIONS = {"bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC, "nearest": Image.NEAREST}
CV2_INTERPOLATIONS = {"bilinear": "INTER_LINEAR", "bicubic": "INTER_CUBIC", "nearest": "INTER_NEAREST_EXACT"}


def _interp(name):
    try:
        return INTERPOLATIONS[name]
    except KeyError:
        raise ValueError(f"unknown interpolation {name!r}; expected one of {sorted(INTERPOLATIONS)}") from None


def _cv2_interp(name):
    _interp(name)
    return getattr(import_cv2(), CV2_INTERPOLATIONS[name])


def _size(img):
    """(width, height) of a PIL image or an HWC array."""
    return (img.shape[1], img.shape[0]) if isinstance(img, np.ndarray) else img.size


def shorter_side_size(w: int, h: int, size: int):
    """Shorter side to ``size``, aspect kept, longer side ``int(size * long / short)`` (torchvision's rule)."""
    if w <= h:
        return size, int(size * h / w)
    return int(size * w / h), size


def resize_shorter(img, size: int, interpolation: str = "bilinear"):
    """A PIL image (resized by PIL) or an HWC array (by ``cv2.resize``) with its shorter side ``size``."""
    w, h = _size(img)
    new_w, new_h = shorter_side_size(w, h, size)
    if (new_w, new_h) == (w, h):
        return img
    if isinstance(img, np.ndarray):
        return import_cv2().resize(img, (new_w, new_h), interpolation=_cv2_interp(interpolation))
    return img.resize((new_w, new_h), _interp(interpolation))


def center_crop(img, size: int):
    """Center ``size`` x ``size`` crop (offsets rounded as torchvision's), padding with black if smaller."""
    w, h = _size(img)
    if isinstance(img, np.ndarray):
        if w < size or h < size:
            canvas = np.zeros((max(h, size), max(w, size)) + img.shape[2:], img.dtype)
            top, left = (max(h, size) - h) // 2, (max(w, size) - w) // 2
            canvas[top:top + h, left:left + w] = img
            img, (w, h) = canvas, (canvas.shape[1], canvas.shape[0])
        top = int(round((h - size) / 2.0))
        left = int(round((w - size) / 2.0))
        return img[top:top + size, left:left + size]
    if w < size or h < size:  # pad with black like torchvision, then crop
        canvas = Image.new(img.mode, (max(w, size), max(h, size)))
        canvas.paste(img, ((max(w, size) - w) // 2, (max(h, size) - h) // 2))
        img, (w, h) = canvas, canvas.size
    top = int(round((h - size) / 2.0))
    left = int(round((w - size) / 2.0))
    return img.crop((left, top, left + size, top + size))


def to_chw_float(img, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """HWC uint8 (PIL image or array) → CHW float32, /255 then (x - mean) / std in float32."""
    arr = np.asarray(img, dtype=np.uint8)
    if arr.ndim == 2:
        arr = np.repeat(arr[:, :, None], 3, axis=2)
    x = arr.transpose(2, 0, 1).astype(np.float32) / np.float32(255)
    m = np.asarray(mean, np.float32)[:, None, None]
    s = np.asarray(std, np.float32)[:, None, None]
    return (x - m) / s


def _as_backend(img, backend: str):
    return as_rgb_array(img) if backend == "cv2" else as_rgb_pil(img)


class EvalTransform:
    """Official evaluation preprocessing: resize shorter side, center crop, [0, 1], normalise.

    ``backend="pil"`` (default) is the official pipeline exactly; ``"cv2"`` does the same steps with OpenCV.
    """

    def __init__(self, resize: int = 256, crop: int = 224, interpolation: str = "bicubic",
                 mean=IMAGENET_MEAN, std=IMAGENET_STD, backend: str = "pil"):
        _interp(interpolation)
        self.resize, self.crop, self.interpolation = resize, crop, interpolation
        self.mean, self.std = tuple(mean), tuple(std)
        self.backend = check_backend(backend)

    def __call__(self, img, rng=None) -> np.ndarray:
        img = _as_backend(img, self.backend)
        img = center_crop(resize_shorter(img, self.resize, self.interpolation), self.crop)
        return to_chw_float(img, self.mean, self.std)


def random_resized_crop_box(w: int, h: int, rng: np.random.Generator, scale=(0.08, 1.0),
                            ratio=(3 / 4, 4 / 3)):
    """(left, top, width, height) of an Inception-style random crop (10 tries, then a center crop)."""
    area = w * h
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(*log_ratio))
        cw = int(round(math.sqrt(target * aspect)))
        ch = int(round(math.sqrt(target / aspect)))
        if 0 < cw <= w and 0 < ch <= h:
            return int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1)), cw, ch
    in_ratio = w / h
    if in_ratio < min(ratio):
        cw, ch = w, int(round(w / min(ratio)))
    elif in_ratio > max(ratio):
        ch, cw = h, int(round(h * max(ratio)))
    else:
        cw, ch = w, h
    return (w - cw) // 2, (h - ch) // 2, cw, ch


def _color_jitter(img, strength: float, rng: np.random.Generator):
    """Brightness, contrast and saturation in random order, factors uniform in [1 - s, 1 + s] (PIL or array)."""
    from .autoaugment import enhance_array

    ops = ["Brightness", "Contrast", "Color"]
    for i in rng.permutation(len(ops)):
        factor = float(rng.uniform(max(0.0, 1 - strength), 1 + strength))
        if isinstance(img, np.ndarray):
            img = enhance_array(ops[i], img, factor)
        else:
            img = getattr(ImageEnhance, ops[i])(img).enhance(factor)
    return img


def random_erase(x: np.ndarray, rng: np.random.Generator, prob: float, scale=(0.02, 1 / 3),
                 ratio=(0.3, 3.3)) -> np.ndarray:
    """Random erasing, per-pixel normal noise in a random box (timm's ``remode='pixel'``), on the normalised tensor."""
    if prob <= 0 or rng.random() >= prob:
        return x
    c, h, w = x.shape
    area = h * w
    for _ in range(10):
        target = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(math.log(ratio[0]), math.log(ratio[1])))
        eh = int(round(math.sqrt(target * aspect)))
        ew = int(round(math.sqrt(target / aspect)))
        if 0 < ew < w and 0 < eh < h:
            top, left = int(rng.integers(0, h - eh + 1)), int(rng.integers(0, w - ew + 1))
            x = x.copy()
            x[:, top:top + eh, left:left + ew] = rng.standard_normal((c, eh, ew), dtype=np.float32)
            return x
    return x


class TrainTransform:
    """ImageNet-style training augmentation: random-resized crop, flip, RandAugment or colour jitter, erasing."""

    def __init__(self, size: int = 224, scale=(0.08, 1.0), ratio=(0.75, 4 / 3), interpolation: str = "random",
                 hflip: float = 0.5, color_jitter: float = 0.0, auto_augment: Optional[str] = None,
                 reprob: float = 0.0, mean=IMAGENET_MEAN, std=IMAGENET_STD, backend: str = "pil"):
        from .autoaugment import RandAugment

        if interpolation != "random":
            _interp(interpolation)
        self.size, self.scale, self.ratio = size, tuple(scale), tuple(ratio)
        self.interpolation, self.hflip, self.color_jitter = interpolation, hflip, color_jitter
        self.rand_augment = RandAugment.from_string(auto_augment, mean) if auto_augment else None
        self.reprob, self.mean, self.std = reprob, tuple(mean), tuple(std)
        self.backend = check_backend(backend)

    def __call__(self, img, rng: np.random.Generator) -> np.ndarray:
        img = _as_backend(img, self.backend)
        w, h = _size(img)
        left, top, cw, ch = random_resized_crop_box(w, h, rng, self.scale, self.ratio)
        interp = self.interpolation
        if interp == "random":
            interp = ("bilinear", "bicubic")[int(rng.integers(0, 2))]
        flip = self.hflip > 0 and rng.random() < self.hflip
        if self.backend == "cv2":
            cv2 = import_cv2()
            img = cv2.resize(img[top:top + ch, left:left + cw], (self.size, self.size),
                             interpolation=_cv2_interp(interp))
            if flip:
                img = cv2.flip(img, 1)
        else:
            img = img.resize((self.size, self.size), _interp(interp), box=(left, top, left + cw, top + ch))
            if flip:
                img = img.transpose(Image.FLIP_LEFT_RIGHT)
        if self.rand_augment is not None:
            img = self.rand_augment(img, rng)
        elif self.color_jitter > 0:
            img = _color_jitter(img, self.color_jitter, rng)
        return random_erase(to_chw_float(img, self.mean, self.std), rng, self.reprob)


class ArrayTrainTransform:
    """Small-image training augmentation on HWC uint8 arrays (CIFAR, digits): pad-and-crop, flip."""

    def __init__(self, pad: int = 4, hflip: float = 0.5, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5),
                 reprob: float = 0.0):
        self.pad, self.hflip, self.mean, self.std, self.reprob = pad, hflip, tuple(mean), tuple(std), reprob

    def __call__(self, arr: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        h, w = arr.shape[:2]
        if self.pad > 0:
            padded = np.pad(arr, ((self.pad, self.pad), (self.pad, self.pad), (0, 0)))
            top, left = int(rng.integers(0, 2 * self.pad + 1)), int(rng.integers(0, 2 * self.pad + 1))
            arr = padded[top:top + h, left:left + w]
        if self.hflip > 0 and rng.random() < self.hflip:
            arr = arr[:, ::-1]
        return random_erase(to_chw_float(np.ascontiguousarray(arr), self.mean, self.std), rng, self.reprob)


class ArrayEvalTransform:
    def __init__(self, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5)):
        self.mean, self.std = tuple(mean), tuple(std)

    def __call__(self, arr: np.ndarray, rng=None) -> np.ndarray:
        return to_chw_float(arr, self.mean, self.std)
