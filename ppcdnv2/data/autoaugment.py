"""RandAugment as the official recipe uses it (``--aa rand-m9-mstd0.5``, timm's flavour), with PIL or OpenCV.

Two operations per image from the 15 below, each applied with probability 0.5 at a magnitude drawn
from N(m, mstd) clipped to [0, 10]; geometric operations fill with the dataset mean colour. The
operation set and level-to-argument rules follow timm's RandAugment; the random draws come from the
per-sample numpy generator, so results are reproducible but not bit-identical to timm's.

``RandAugment`` takes a PIL image (the ``pil`` data backend) or an HWC uint8 RGB array (``cv2``). The
array operations (``_op_array``) re-implement PIL's with numpy and OpenCV, not by a round trip through
PIL: the same random draws in the same order (so both backends choose the same operations and
magnitudes for a seed), the same arguments and fill colour, and PIL's arithmetic where it is cheap to
copy (the grey conversion, the LUTs of AutoContrast/Equalize/Posterize/Solarize, ``Image.blend``'s
truncation in the enhancements, the SMOOTH kernel of Sharpness, the affine matrices with PIL's
pixel-centre convention and PIL's rule for which pixels get the fill colour). The point and colour
operations are bit-identical to PIL's; the geometric ones (Rotate, Shear*, Translate*) differ by at
most one grey level (OpenCV's bilinear weights are fixed point with 1/32-pixel positions), on average
about 0.4 levels (``tests/test_data_cv2.py`` checks both).
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
from PIL import Image, ImageEnhance, ImageOps

from ..registry import IMAGENET_MEAN

MAX_LEVEL = 10.0


def _signed(value: float, rng) -> float:
    return -value if rng.random() < 0.5 else value


def _affine(img, matrix, fill):
    return img.transform(img.size, Image.AFFINE, matrix, resample=Image.BILINEAR, fillcolor=fill)


def _solarize_add(img, add, threshold=128):
    lut = [min(255, i + add) if i < threshold else i for i in range(256)]
    return img.point(lut * len(img.getbands()))


def _rotate_matrix(angle: float, w: int, h: int):
    """PIL's ``Image.rotate`` inverse matrix (output → input, continuous coordinates), centre (w/2, h/2)."""
    a = -math.radians(angle)
    m = [round(math.cos(a), 15), round(math.sin(a), 15), 0.0, round(-math.sin(a), 15), round(math.cos(a), 15), 0.0]
    cx, cy = w / 2, h / 2
    m[2] = m[0] * -cx + m[1] * -cy + cx
    m[5] = m[3] * -cx + m[4] * -cy + cy
    return m


def _op(name, img, level, rng, fill):
    if isinstance(img, np.ndarray):
        return _op_array(name, img, level, rng, fill)
    f = level / MAX_LEVEL
    if name == "AutoContrast":
        return ImageOps.autocontrast(img)
    if name == "Equalize":
        return ImageOps.equalize(img)
    if name == "Invert":
        return ImageOps.invert(img)
    if name == "Rotate":
        return img.rotate(_signed(f * 30.0, rng), resample=Image.BILINEAR, fillcolor=fill)
    if name == "Posterize":
        return ImageOps.posterize(img, 4 + int(f * 4))
    if name == "Solarize":
        return ImageOps.solarize(img, int(f * 256))
    if name == "SolarizeAdd":
        return _solarize_add(img, int(f * 110))
    if name in ("Color", "Contrast", "Brightness", "Sharpness"):
        return getattr(ImageEnhance, name)(img).enhance(f * 1.8 + 0.1)
    if name == "ShearX":
        return _affine(img, (1, _signed(f * 0.3, rng), 0, 0, 1, 0), fill)
    if name == "ShearY":
        return _affine(img, (1, 0, 0, _signed(f * 0.3, rng), 1, 0), fill)
    if name == "TranslateXRel":
        return _affine(img, (1, 0, _signed(f * 0.45, rng) * img.size[0], 0, 1, 0), fill)
    if name == "TranslateYRel":
        return _affine(img, (1, 0, 0, 0, 1, _signed(f * 0.45, rng) * img.size[1]), fill)
    raise ValueError(f"unknown RandAugment op {name!r}")


# ---- the same operations on HWC uint8 RGB arrays, with numpy and OpenCV ----

def _grey(arr: np.ndarray) -> np.ndarray:
    """PIL's ``convert("L")``: ITU-R 601-2 luma in 16-bit fixed point, rounded."""
    a = arr.astype(np.int32)
    return ((a[..., 0] * 19595 + a[..., 1] * 38470 + a[..., 2] * 7471 + 0x8000) >> 16).astype(np.uint8)


def _blend(degenerate, arr: np.ndarray, factor: float) -> np.ndarray:
    """PIL's ``Image.blend(degenerate, arr, factor)``: ``d + factor * (a - d)`` clipped and truncated to uint8."""
    d = np.asarray(degenerate, np.float32)
    out = d + np.float32(factor) * (arr.astype(np.float32) - d)
    return np.clip(out, 0.0, 255.0).astype(np.uint8)


def _apply_lut(arr: np.ndarray, luts) -> np.ndarray:
    """One 256-entry table per channel (or one for all)."""
    luts = np.asarray(luts, np.uint8).reshape(-1, 256)
    if len(luts) == 1:
        return luts[0][arr]
    out = np.empty_like(arr)
    for c in range(arr.shape[2]):
        out[..., c] = luts[c][arr[..., c]]
    return out


def _channel_hists(arr: np.ndarray):
    return [np.bincount(arr[..., c].ravel(), minlength=256) for c in range(arr.shape[2])]


def _autocontrast_array(arr: np.ndarray) -> np.ndarray:
    luts = []
    for h in _channel_hists(arr):  # ImageOps.autocontrast(cutoff=0): per channel, lo/hi = darkest/lightest value
        nz = np.flatnonzero(h)
        lo, hi = int(nz[0]), int(nz[-1])
        if hi <= lo:
            luts.append(np.arange(256))
        else:
            scale = 255.0 / (hi - lo)
            offset = -lo * scale
            luts.append(np.clip([int(ix * scale + offset) for ix in range(256)], 0, 255))
    return _apply_lut(arr, luts)


def _equalize_array(arr: np.ndarray) -> np.ndarray:
    luts = []
    for h in _channel_hists(arr):  # ImageOps.equalize
        histo = h[h > 0]
        step = (int(histo.sum()) - int(histo[-1])) // 255 if len(histo) > 1 else 0
        if not step:
            luts.append(np.arange(256))
            continue
        n = step // 2 + np.concatenate([[0], np.cumsum(h[:-1])])
        luts.append(np.minimum(n // step, 255))
    return _apply_lut(arr, luts)


def _smooth_array(arr: np.ndarray) -> np.ndarray:
    """PIL's ``ImageFilter.SMOOTH`` (3x3 kernel 1 1 1 / 1 5 1 / 1 1 1, divided by 13), outer pixels kept."""
    from .decode import import_cv2

    cv2 = import_cv2()
    kernel = np.array([[1, 1, 1], [1, 5, 1], [1, 1, 1]], np.float32) / np.float32(13)
    out = cv2.filter2D(arr, -1, kernel, borderType=cv2.BORDER_REPLICATE)  # uint8 out, rounded
    out[0], out[-1], out[:, 0], out[:, -1] = arr[0], arr[-1], arr[:, 0], arr[:, -1]
    return out


def enhance_array(name: str, arr: np.ndarray, factor: float) -> np.ndarray:
    """``ImageEnhance.<name>(img).enhance(factor)`` for Color, Contrast, Brightness, Sharpness on an array."""
    if name == "Brightness":
        return _blend(0.0, arr, factor)
    if name == "Color":
        return _blend(_grey(arr)[..., None], arr, factor)
    if name == "Contrast":
        return _blend(float(int(_grey(arr).mean() + 0.5)), arr, factor)
    if name == "Sharpness":
        return _blend(_smooth_array(arr), arr, factor)
    raise ValueError(f"unknown enhancement {name!r}")


def _affine_array(arr: np.ndarray, matrix, fill) -> np.ndarray:
    """PIL's ``transform(size, AFFINE, matrix, BILINEAR, fillcolor=fill)`` with ``cv2.warpAffine``.

    PIL's matrix maps output to input positions with pixel centres at +0.5; OpenCV's (with
    ``WARP_INVERSE_MAP``) has them at integers: the translation gains ``A @ (0.5, 0.5) - 0.5``. PIL
    fills an output pixel whose source position lies outside the image and otherwise interpolates
    with the edge pixels repeated; OpenCV's constant border would blend the fill colour into the
    outermost half pixel, so the warp repeats the edge and the fill is set where PIL sets it.
    """
    from .decode import import_cv2

    cv2 = import_cv2()
    a, b, c, d, e, f = (float(v) for v in matrix)
    m = np.array([[a, b, c + 0.5 * (a + b) - 0.5], [d, e, f + 0.5 * (d + e) - 0.5]], np.float64)
    h, w = arr.shape[:2]
    out = cv2.warpAffine(arr, m, (w, h), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                         borderMode=cv2.BORDER_REPLICATE)
    xs = np.arange(w, dtype=np.float64)[None, :] + 0.5
    ys = np.arange(h, dtype=np.float64)[:, None] + 0.5
    u = a * xs + b * ys + c  # source positions, PIL's continuous coordinates
    v = d * xs + e * ys + f
    outside = (u < 0) | (u >= w) | (v < 0) | (v >= h)
    out[outside] = np.asarray(fill, np.uint8)
    return out


def _op_array(name, arr, level, rng, fill):
    """``_op`` on an HWC uint8 RGB array: the same draws from ``rng`` and the same arguments."""
    f = level / MAX_LEVEL
    h, w = arr.shape[:2]
    if name == "AutoContrast":
        return _autocontrast_array(arr)
    if name == "Equalize":
        return _equalize_array(arr)
    if name == "Invert":
        return 255 - arr
    if name == "Rotate":
        angle = _signed(f * 30.0, rng)
        if angle % 360.0 == 0:  # PIL's fast path: an exact copy
            return arr.copy()
        return _affine_array(arr, _rotate_matrix(angle, w, h), fill)
    if name == "Posterize":
        bits = 4 + int(f * 4)
        return arr & np.uint8((0xFF << (8 - bits)) & 0xFF)
    if name == "Solarize":
        threshold = int(f * 256)
        return np.where(arr < threshold, arr, 255 - arr).astype(np.uint8)
    if name == "SolarizeAdd":
        add, threshold = int(f * 110), 128
        return _apply_lut(arr, [min(255, i + add) if i < threshold else i for i in range(256)])
    if name in ("Color", "Contrast", "Brightness", "Sharpness"):
        return enhance_array(name, arr, f * 1.8 + 0.1)
    if name == "ShearX":
        return _affine_array(arr, (1, _signed(f * 0.3, rng), 0, 0, 1, 0), fill)
    if name == "ShearY":
        return _affine_array(arr, (1, 0, 0, _signed(f * 0.3, rng), 1, 0), fill)
    if name == "TranslateXRel":
        return _affine_array(arr, (1, 0, _signed(f * 0.45, rng) * w, 0, 1, 0), fill)
    if name == "TranslateYRel":
        return _affine_array(arr, (1, 0, 0, 0, 1, _signed(f * 0.45, rng) * h), fill)
    raise ValueError(f"unknown RandAugment op {name!r}")


OPS = ("AutoContrast", "Equalize", "Invert", "Rotate", "Posterize", "Solarize", "SolarizeAdd", "Color",
       "Contrast", "Brightness", "Sharpness", "ShearX", "ShearY", "TranslateXRel", "TranslateYRel")


class RandAugment:
    def __init__(self, num_ops: int = 2, magnitude: float = 9.0, magnitude_std: float = 0.0, prob: float = 0.5,
                 mean: Sequence[float] = IMAGENET_MEAN):
        self.num_ops, self.magnitude, self.magnitude_std, self.prob = num_ops, magnitude, magnitude_std, prob
        self.fill = tuple(int(round(255 * m)) for m in mean)

    @classmethod
    def from_string(cls, spec: str, mean=IMAGENET_MEAN) -> "RandAugment":
        """``rand-m9-mstd0.5`` (timm's syntax): ``m`` magnitude, ``n`` ops, ``mstd`` magnitude noise, ``p`` prob."""
        parts = str(spec).split("-")
        if parts[0] != "rand":
            raise ValueError(f"auto_augment {spec!r}: only RandAugment ('rand-m9-mstd0.5') is supported")
        kw = {}
        for p in parts[1:]:
            for key, name, conv in (("mstd", "magnitude_std", float), ("m", "magnitude", float),
                                    ("n", "num_ops", int), ("p", "prob", float)):
                if p.startswith(key):
                    try:
                        kw[name] = conv(p[len(key):])
                    except ValueError:
                        raise ValueError(f"auto_augment {spec!r}: bad part {p!r}") from None
                    break
            else:
                raise ValueError(f"auto_augment {spec!r}: unknown part {p!r} (known: m, n, mstd, p)")
        return cls(mean=mean, **kw)

    def __call__(self, img, rng: np.random.Generator):
        """Augments a PIL image (PIL operations) or an HWC uint8 RGB array (numpy/OpenCV operations)."""
        for i in rng.choice(len(OPS), self.num_ops, replace=True):
            if rng.random() > self.prob:
                continue
            level = self.magnitude
            if self.magnitude_std > 0:
                level = float(np.clip(rng.normal(level, self.magnitude_std), 0.0, MAX_LEVEL))
            img = _op(OPS[i], img, level, rng, self.fill)
        return img
