"""Datasets: ImageNet-layout class folders, CIFAR-10/100 python batches, and the embedded digits demo.

Every dataset returns ``(image CHW float32, label int64, index int64)``. Training samples are asked
for with the key ``(index, epoch)``; the augmentation generator is seeded from
``(seed, epoch, index)``, so an epoch's augmentation does not depend on the number of loader
workers or devices and is reproduced exactly when a run resumes.

With ``skip_bad`` an unreadable image comes back as zeros with label -1 (the evaluation counts and
names it) instead of raising ``DataError`` with its path; a class folder without images, which would
otherwise train a class that never occurs, raises ``DataError`` naming the folder, or with ``skip_bad``
warns (``DataWarning``, naming it) and keeps the class, with no samples.

``ImageFolder`` decodes with PIL or OpenCV (``backend``, ``data.backend``; see ``ppcdnv2.data.decode``,
which also scales 16-bit and float images to 8 bits).
"""
from __future__ import annotations

import pickle
import warnings
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import numpy as np

IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


class DataError(ValueError):
    """A dataset that cannot be read; the message names the file or folder."""


class DataWarning(UserWarning):
    """A problem in a dataset that ``skip_bad`` lets pass (e.g. an empty class folder); it names the folder."""


BAD, FAILED = -1, -2  # labels of an unreadable sample: skipped (``skip_bad``), or an error to raise

def _split_key(key) -> Tuple[int, Optional[int]]:
    if isinstance(key, (tuple, list)):
        return int(key[0]), int(key[1])
    return int(key), None


class _Base:
    """Shared indexing, per-sample generators and the skip-bad behaviour."""

    def __init__(self, transform, seed: int = 0, skip_bad: bool = False):
        self.transform, self.seed, self.skip_bad = transform, int(seed), skip_bad
        self.labels: np.ndarray = np.zeros([0], np.int64)
        self.classes: List[str] = []

    def __len__(self):
        return len(self.labels)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def describe(self, index: int) -> str:
        return f"sample {index}"

    def _rng(self, index: int, epoch: Optional[int]):
        return np.random.default_rng([self.seed, 0 if epoch is None else epoch, index])

    def _load(self, index: int):
        raise NotImplementedError

    def _load_at(self, index: int, epoch: Optional[int]):
        """The raw sample for ``(index, epoch)``: ``_load`` unless the sample itself is drawn per epoch."""
        return self._load(index)

    def __getitem__(self, key):
        index, epoch = _split_key(key)
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} samples")
        try:
            image = self.transform(self._load_at(index, epoch), self._rng(index, epoch))
        except DataError:
            if self.skip_bad:
                return np.zeros(self._bad_shape(), np.float32), np.int64(BAD), np.int64(index)
            if getattr(self, "defer_errors", False):  # in a loader worker: let the main process raise it
                return np.zeros(self._bad_shape(), np.float32), np.int64(FAILED), np.int64(index)
            raise
        return image, np.int64(self.labels[index]), np.int64(index)

    def _bad_shape(self):
        size = getattr(self.transform, "crop", None) or getattr(self.transform, "size", None) or 32
        return (3, size, size)

    def subset(self, limit: Optional[int], seed: int = 0) -> "Subset":
        return Subset(self, limit, seed)


class Subset:
    """A fixed random subset (same for every run with the same seed), for quick runs and tests."""

    def __init__(self, base, limit: Optional[int], seed: int = 0):
        n = len(base)
        if limit is None or limit >= n:
            self.indices = np.arange(n)
        else:
            self.indices = np.sort(np.random.RandomState(seed).choice(n, int(limit), replace=False))
        self.base = base
        self.labels = base.labels[self.indices]
        self.classes = base.classes

    def __len__(self):
        return len(self.indices)

    @property
    def num_classes(self):
        return self.base.num_classes

    def describe(self, index):
        return self.base.describe(int(self.indices[index]))

    def __getitem__(self, key):
        index, epoch = _split_key(key)
        image, label, _ = self.base[(int(self.indices[index]), epoch) if epoch is not None else int(self.indices[index])]
        return image, label, np.int64(index)


class ImageFolder(_Base):
    """``root/<class>/<image>``; classes are the sorted sub-folder names (torchvision's ImageFolder order)."""

    def __init__(self, root, transform, classes: Optional[Sequence[str]] = None, seed: int = 0,
                 skip_bad: bool = False, backend: Optional[str] = None, require_samples: bool = True):
        """``require_samples``: every class folder must hold an image (training: a class without samples is
        trained as one that never occurs); evaluation folders may leave classes without images."""
        from .decode import check_backend

        super().__init__(transform, seed, skip_bad)
        # decoding backend: given, else the transform's (EvalTransform/TrainTransform ``backend``), else PIL
        self.backend = check_backend(backend or getattr(transform, "backend", None) or "pil")
        self.root = Path(root)
        if not self.root.is_dir():
            raise DataError(f"{self.root}: image folder not found (expected <root>/<class>/<image> files)")
        found = sorted(d.name for d in self.root.iterdir() if d.is_dir())
        self.classes = list(classes) if classes is not None else found
        if not self.classes:
            raise DataError(f"{self.root}: no class sub-folders")
        index = {c: i for i, c in enumerate(self.classes)}
        unknown = sorted(set(found) - set(index))
        if unknown:
            raise DataError(f"{self.root}: class folders {unknown[:5]} are not among the training classes")
        paths, labels, empty = [], [], []
        for c in found:
            n = len(paths)
            for p in sorted((self.root / c).rglob("*")):
                if p.suffix.lower() in IMG_EXTENSIONS and p.is_file():
                    paths.append(p)
                    labels.append(index[c])
            if len(paths) == n:
                empty.append(self.root / c)
        if not paths:
            raise DataError(f"{self.root}: no images with extensions {IMG_EXTENSIONS}")
        # a class without samples would be trained as a class that never occurs
        if not require_samples:
            empty = []
        if empty and not skip_bad:
            more = (f" (also empty: {', '.join(f.name for f in empty[1:6])}{' ...' if len(empty) > 6 else ''})"
                    if len(empty) > 1 else "")
            raise DataError(f"{empty[0]}: class folder {empty[0].name!r} holds no images (extensions "
                            f"{', '.join(IMG_EXTENSIONS)}){more}; add images, remove the folder, or set "
                            f"data.skip_bad=true to keep the class without samples")
        for folder in empty:
            warnings.warn(f"{folder}: class folder {folder.name!r} holds no images; kept as class "
                          f"{index[folder.name]} without samples (data.skip_bad)", DataWarning, stacklevel=2)
        self.paths, self.labels = paths, np.asarray(labels, np.int64)

    def describe(self, index):
        return str(self.paths[index])

    def _load(self, index):
        """The image as 8-bit RGB: a PIL image (``pil``) or an HWC uint8 array (``cv2``)."""
        from .decode import ImageReadError, read_image

        try:
            return read_image(self.paths[index], self.backend)
        except ImageReadError as e:  # truncated, not an image, unreadable
            raise DataError(str(e)) from None


from ..weights import _NUMPY_GLOBALS as _ARRAY_GLOBALS  # numpy arrays (and dicts), nothing else


class _ArrayOnlyUnpickler(pickle.Unpickler):
    """The CIFAR batches are pickles; rebuild only dicts, lists, bytes and numpy arrays from them."""

    def __init__(self, file, path):
        super().__init__(file, encoding="bytes")
        self._path = path

    def find_class(self, module, name):
        if (module, name) in _ARRAY_GLOBALS:
            return super().find_class(module, name)
        raise DataError(f"{self._path}: refusing to load {module}.{name}; a CIFAR batch holds only arrays and lists")


def _read_cifar_batch(path: Path, label_key: bytes):
    try:
        with open(path, "rb") as f:
            obj = _ArrayOnlyUnpickler(f, path).load()
    except DataError:
        raise
    except Exception as e:
        raise DataError(f"{path}: not a readable CIFAR python batch ({type(e).__name__}: {e})") from None
    if not isinstance(obj, dict):
        raise DataError(f"{path}: expected a dict, got {type(obj).__name__}")
    obj = {k.decode() if isinstance(k, bytes) else k: v for k, v in obj.items()}
    key = label_key.decode()
    if "data" not in obj or key not in obj:
        raise DataError(f"{path}: missing 'data' or {key!r} (keys: {sorted(obj)})")
    data = np.asarray(obj["data"], np.uint8)
    if data.ndim != 2 or data.shape[1] != 3072:
        raise DataError(f"{path}: 'data' has shape {data.shape}, expected [N, 3072]")
    labels = np.asarray(obj[key], np.int64)
    if labels.shape != (data.shape[0],):
        raise DataError(f"{path}: {len(labels)} labels for {data.shape[0]} images")
    return data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), labels


CIFAR_FILES = {
    "cifar10": ("cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"], b"labels", 10),
    "cifar100": ("cifar-100-python", ["train"], ["test"], b"fine_labels", 100),
}


class CIFAR(_Base):
    """CIFAR-10/100 from the standard python batches (``<root>/cifar-10-batches-py/data_batch_1`` ...)."""

    def __init__(self, root, name: str, train: bool, transform, seed: int = 0):
        super().__init__(transform, seed)
        folder, train_files, test_files, label_key, n_classes = CIFAR_FILES[name]
        root = Path(root)
        base = root / folder if (root / folder).is_dir() else root
        files = [base / f for f in (train_files if train else test_files)]
        missing = [str(f) for f in files if not f.is_file()]
        if missing:
            raise DataError(f"{name}: missing {missing[:3]}; give data.root as the folder holding {folder}/ "
                            f"(extract the python version of the dataset there)")
        parts = [_read_cifar_batch(f, label_key) for f in files]
        self.images = np.concatenate([p[0] for p in parts])
        self.labels = np.concatenate([p[1] for p in parts])
        if self.labels.min() < 0 or self.labels.max() >= n_classes:
            raise DataError(f"{base}: labels outside [0, {n_classes})")
        self.classes = [str(i) for i in range(n_classes)]

    def _load(self, index):
        return self.images[index]


def digits_images(size: int = 32) -> Tuple[np.ndarray, np.ndarray]:
    """scikit-learn's 8x8 digits (bundled, no download) as HWC uint8 RGB ``size``x``size`` images."""
    from PIL import Image
    from sklearn.datasets import load_digits

    d = load_digits()
    small = np.clip(np.round(d.images * (255.0 / 16.0)), 0, 255).astype(np.uint8)
    big = np.stack([np.asarray(Image.fromarray(im).resize((size, size), Image.BILINEAR)) for im in small])
    return np.repeat(big[..., None], 3, axis=3), d.target.astype(np.int64)


def digits_split(labels: np.ndarray, val_fraction: float, seed: int = 0) -> Tuple[np.ndarray, np.ndarray]:
    """Stratified train/held-out index split, fixed by ``seed`` (not the training seed)."""
    rng = np.random.RandomState(seed)
    train, val = [], []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        n_val = int(round(len(idx) * val_fraction))
        val.extend(idx[:n_val])
        train.extend(idx[n_val:])
    return np.sort(np.asarray(train, np.int64)), np.sort(np.asarray(val, np.int64))


class Digits(_Base):
    """The embedded demo data: 1797 handwritten digits upsampled to 32x32, 10 classes.

    ``canvas`` > 0 (``data.image_size`` with ``data.digits_size``): a cluttered-MNIST-style variant for the
    GFNet demo, where a downscaled glance cannot read the digit but a full-resolution patch at the right place
    can. Each digit is upsampled to ``size`` px and pasted at a random position of a black ``canvas`` x
    ``canvas`` image, with ``clutter`` fragments (``fragment`` px squares) of other digits of the same split
    around it (never over the digit's box) and Gaussian ``noise`` (std, 0-255 scale). The layout is drawn from
    ``default_rng([seed, epoch, index, 1])`` (epoch 0 when none: validation), a stream apart from the
    augmentation's, so it is fixed per sample for validation, redrawn every training epoch, and reproduced
    exactly on resume; :meth:`compose` returns it with the digit's position.
    """

    _cache = None

    def __init__(self, train: bool, transform, val_fraction: float = 0.2, size: int = 32, seed: int = 0,
                 canvas: int = 0, clutter: int = 0, fragment: int = 0, noise: float = 0.0):
        super().__init__(transform, seed)
        if canvas and not 0 < size <= canvas:
            raise DataError(f"digits: the digit ({size} px) must fit the canvas ({canvas} px)")
        if Digits._cache is None or Digits._cache[0].shape[1] != size:
            Digits._cache = digits_images(size)
        images, labels = Digits._cache
        tr, va = digits_split(labels, val_fraction)
        idx = tr if train else va
        self.images, self.labels = images[idx], labels[idx]
        self.classes = [str(i) for i in range(10)]
        self.canvas, self.clutter, self.noise = int(canvas), int(clutter), float(noise)
        self.fragment = min(int(fragment) or size // 2, size)

    def _load(self, index):
        return self.images[index]

    def _load_at(self, index, epoch):
        return self.compose(index, epoch)[0] if self.canvas else self.images[index]

    def compose(self, index: int, epoch: Optional[int] = None) -> Tuple[np.ndarray, Tuple[int, int]]:
        """The canvas image (HWC uint8) of sample ``index`` in ``epoch`` and the digit's ``(top, left)``."""
        rng = np.random.default_rng([self.seed, 0 if epoch is None else epoch, index, 1])
        c, s, f = self.canvas, self.images.shape[1], self.fragment
        img = np.zeros((c, c), np.float32)
        top, left = (int(v) for v in rng.integers(0, c - s + 1, size=2))
        for _ in range(self.clutter):
            src = self.images[int(rng.integers(len(self.images))), :, :, 0]
            r, q = (int(v) for v in rng.integers(0, s - f + 1, size=2))  # where in the other digit
            for _ in range(10):  # a place off the digit's box (kept free so a patch there reads it cleanly)
                y, x = (int(v) for v in rng.integers(0, c - f + 1, size=2))
                if y + f <= top or y >= top + s or x + f <= left or x >= left + s:
                    np.maximum(img[y:y + f, x:x + f], src[r:r + f, q:q + f], out=img[y:y + f, x:x + f])
                    break
        img[top:top + s, left:left + s] = np.maximum(img[top:top + s, left:left + s], self.images[index, :, :, 0])
        if self.noise > 0:
            img += rng.normal(0.0, self.noise, img.shape).astype(np.float32)
        img = np.clip(np.round(img), 0, 255).astype(np.uint8)
        return np.repeat(img[..., None], 3, axis=2), (top, left)
