"""Opt-in int8 export: onnxruntime static quantisation of an exported float32 ONNX, with calibration images.

``quantize_onnx`` runs ``onnxruntime.quantization.quantize_static`` (QDQ format by default: int8 weights per
output channel, uint8 activations with ranges from the calibration images, MinMax) on the float32 file and
writes a separate file (``tools/export.py --quantize int8`` writes ``<OUT>.int8.onnx``; the float32
``<OUT>.onnx`` is never replaced). The file says it is quantised: its ONNX ``metadata_props`` and its
``.meta.json`` carry a ``quantization`` record (scheme, calibration source and image count).

Calibration sources (``calibration_batch``): a folder of images (decoded and preprocessed exactly as
``tools/infer.py`` does, with the model's evaluation preprocessing), ``"skimage"`` (scikit-image's bundled
sample photos: astronaut, coffee, chelsea, rocket, ...), ``"digits"`` (scikit-learn's handwritten digits,
the demo's data, at the preprocessing's crop size), or ``"noise"`` (N(0, 1) images: only for models whose
weights are random, like the benchmark's).

Whether int8 pays off depends on the engine and the model: measured in ``benchmarks/benchmark.py`` as the
``ours-onnx-int8`` engine (on CondenseNetV2-C under onnxruntime 1.32 on an AMD EPYC with AVX512-VNNI it is
slower than float32: its grouped convolutions and the many per-channel Gather/BatchNorm/Concat ops between
them run in float32 around extra Quantize/Dequantize and layout transposes).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np

#: scikit-image's bundled colour photos (no download), the default real-photo set
SKIMAGE_PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field", "immunohistochemistry",
                  "colorwheel", "stereo_motorcycle", "retina", "logo")
#: grey-level scikit-image samples (used as RGB) that extend the set when more images are asked for
SKIMAGE_GREY = ("camera", "coins", "moon", "brick", "grass", "gravel", "cell", "clock", "page", "text")
QUANT_META_KEY = "ppcdnv2.quantization"
SCHEMES = ("int8",)


def skimage_photos(names: Sequence[str] = SKIMAGE_PHOTOS) -> List[np.ndarray]:
    """HWC uint8 RGB arrays of scikit-image sample images (bundled with scikit-image, no download)."""
    try:
        import skimage.data as data
    except ImportError:
        raise RuntimeError("calibration 'skimage' needs scikit-image: pip install scikit-image") from None
    out = []
    for name in names:
        a = getattr(data, name)()
        a = a[0] if isinstance(a, tuple) else a  # stereo_motorcycle: (left, right, disparity)
        a = np.asarray(a)
        if a.dtype == bool:
            a = a.astype(np.uint8) * 255
        if a.ndim == 2:
            a = np.repeat(a[..., None], 3, axis=2)
        out.append(np.ascontiguousarray(a[..., :3].astype(np.uint8)))
    return out


def _preprocess_arrays(arrays, preprocess) -> np.ndarray:
    from PIL import Image

    from .classify import eval_transform

    transform = eval_transform(preprocess)
    return np.stack([transform(Image.fromarray(a)) for a in arrays]).astype(np.float32)


def calibration_batch(source, preprocess, limit: Optional[int] = 64, seed: int = 0) -> np.ndarray:
    """float32 [N, 3, crop, crop] calibration images from ``source`` (see the module docstring), preprocessed
    with ``preprocess`` (an ``ExportMeta.preprocess``); at most ``limit`` of them."""
    source = str(source)
    crop = int(preprocess.crop)
    if source == "noise":
        n = limit or 16
        return np.random.default_rng(seed).standard_normal((n, 3, crop, crop)).astype(np.float32)
    if source == "skimage":
        names = SKIMAGE_PHOTOS + SKIMAGE_GREY
        return _preprocess_arrays(skimage_photos(names[: limit or len(names)]), preprocess)
    if source == "digits":
        from ..data import digits_images

        images, _ = digits_images(crop)
        pick = np.random.default_rng(seed).permutation(len(images))[: limit or len(images)]
        x = images[np.sort(pick)].astype(np.float32) / 255.0
        x = (x - np.asarray(preprocess.mean, np.float32)) / np.asarray(preprocess.std, np.float32)
        return np.ascontiguousarray(x.transpose(0, 3, 1, 2)).astype(np.float32)
    path = Path(source)
    if not path.is_dir():
        raise ValueError(f"calibration source {source!r}: not a folder of images, nor 'skimage', 'digits' or 'noise'")
    from .classify import eval_transform, iter_images, load_image

    transform = eval_transform(preprocess)
    files = list(iter_images([path]))[: limit or None]
    return np.stack([load_image(f, transform) for f in files]).astype(np.float32)


class _Reader:
    """``CalibrationDataReader`` over a float32 batch, ``batch`` images per call."""

    def __init__(self, name: str, x: np.ndarray, batch: int = 8):
        self.name, self.x, self.batch, self.pos = name, x, batch, 0

    def get_next(self):
        if self.pos >= len(self.x):
            return None
        chunk = self.x[self.pos:self.pos + self.batch]
        self.pos += self.batch
        return {self.name: chunk}

    def rewind(self):
        self.pos = 0


def quantize_onnx(src, dst, calibration: np.ndarray, calibration_source: str = "array",
                  quant_format: str = "qdq", per_channel: bool = True) -> Dict[str, object]:
    """int8 static quantisation of the float32 ONNX ``src`` into ``dst`` (written atomically); returns the
    ``quantization`` record written into the file's metadata."""
    try:
        import onnx
        import onnxruntime  # noqa: F401
        from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    except ImportError:
        raise RuntimeError("int8 export needs onnxruntime (with onnxruntime.quantization) and onnx") from None
    from ..weights import atomic_write

    if calibration.ndim != 4 or len(calibration) == 0:
        raise ValueError(f"calibration images must be a non-empty [N, 3, H, W] batch, got {calibration.shape}")
    if quant_format not in ("qdq", "qoperator"):
        raise ValueError(f"quant_format must be 'qdq' or 'qoperator', got {quant_format!r}")
    src, dst = Path(src), Path(dst)
    if src.resolve() == dst.resolve():
        raise ValueError(f"{dst}: the quantised model must not replace its float32 source")
    model = onnx.load(str(src))
    input_name = model.graph.input[0].name
    record = {"scheme": "int8", "format": quant_format, "weights": "int8, per output channel" if per_channel
              else "int8, per tensor", "activations": "uint8, MinMax calibration",
              "calibration": calibration_source, "calibration_images": int(len(calibration)),
              "float32_source": src.name}

    def write(tmp):
        quantize_static(str(src), tmp, _Reader(input_name, np.ascontiguousarray(calibration, np.float32)),
                        quant_format=QuantFormat.QDQ if quant_format == "qdq" else QuantFormat.QOperator,
                        per_channel=per_channel, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        calibrate_method=CalibrationMethod.MinMax)
        q = onnx.load(tmp)
        del q.metadata_props[:]
        for key, value in ((QUANT_META_KEY, json.dumps(record)),):
            entry = q.metadata_props.add()
            entry.key, entry.value = key, value
        onnx.save(q, tmp)

    atomic_write(dst, write)
    return record


def quantization_of(path) -> Optional[dict]:
    """The ``quantization`` record of an ONNX file, or None for a float model."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    for prop in model.metadata_props:
        if prop.key == QUANT_META_KEY:
            return json.loads(prop.value)
    return None


def compare_logits(reference: np.ndarray, other: np.ndarray) -> Dict[str, float]:
    """Max and mean |Δlogit|, the reference's logit std, and top-1 / top-5 agreement with the reference."""
    top5 = np.argsort(-reference, axis=1)[:, :5]
    return {"max_abs_diff": float(np.abs(other - reference).max()),
            "mean_abs_diff": float(np.abs(other - reference).mean()),
            "reference_std": float(reference.std()),
            "top1_agreement": float(np.mean(other.argmax(1) == reference.argmax(1))),
            "top1_in_reference_top5": float(np.mean([o in t for o, t in zip(other.argmax(1), top5)]))}
