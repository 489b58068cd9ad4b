"""RandAugment as the official recipe uses it (``--aa rand-m9-mstd0.5``, timm's flavour), with PIL.

Two operations per image from the 15 below, each applied with probability 0.5 at a magnitude drawn
from N(m, mstd) clipped to [0, 10]; geometric operations fill with the dataset mean colour. The
operation set and level-to-argument rules follow timm's RandAugment; the random draws come from the
per-sample numpy generator, so results are reproducible but not bit-identical to timm's.
"""
from __future__ import annotations

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


def _op(name, img, level, rng, fill):
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

    def __call__(self, img: Image.Image, rng: np.random.Generator) -> Image.Image:
        for i in rng.choice(len(OPS), self.num_ops, replace=True):
            if rng.random() > self.prob:
                continue
            level = self.magnitude
            if self.magnitude_std > 0:
                level = float(np.clip(rng.normal(level, self.magnitude_std), 0.0, MAX_LEVEL))
            img = _op(OPS[i], img, level, rng, self.fill)
        return img
