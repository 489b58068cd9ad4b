"""Reading images for training, evaluation and inference, with PIL (default) or OpenCV.

Both backends give 8-bit RGB: PIL an ``Image`` in mode ``RGB``, OpenCV an HWC ``uint8`` RGB array
(OpenCV decodes BGR; it is converted). Neither applies EXIF orientation (torchvision's PIL loader does
not, and ``cv2.IMREAD_UNCHANGED`` ignores it), alpha is dropped without compositing and grey is
repeated over three channels, as ``Image.convert("RGB")`` does.

Images of more than 8 bits per sample are scaled to 8 bits (``convert("RGB")`` clips them instead, so a
16-bit photo came out almost white):

* 16-bit (PIL ``I;16*``, OpenCV ``uint16``): ``round(v / 257)``, which maps 0..65535 onto 0..255 exactly
  (65535 = 255 * 257) and is the inverse of the usual 8 → 16-bit expansion ``v * 257``.
* 32-bit integers (PIL ``I``, OpenCV ``int32``, e.g. 16-bit PNGs and TIFFs as older Pillows open them):
  taken as 16-bit data, clipped to 0..65535, then as above.
* floating point (PIL ``F``, OpenCV ``float32``/``float64``, e.g. float TIFFs), decided per image from its
  largest finite value: ``max <= 1`` → the [0, 1] range, ``round(clip(v, 0, 1) * 255)``;
  ``max <= 255`` → already the 8-bit range, ``round(clip(v, 0, 255))``; otherwise the 16-bit range as
  above. NaN and ±inf count as 0. (A per-image rule cannot tell a very dark 16-bit float image from an
  8-bit one; float images are rare in classification data and this reads the common cases right.)

One exception: Pillow opens a 16-bit *colour* PNG (``RGB;16B``) directly as 8-bit ``RGB`` keeping the high
byte, ``v >> 8``, which is at most one level off ``round(v / 257)``; the OpenCV backend reads all 16 bits.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Union

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    from PIL import Image

BACKENDS = ("pil", "cv2")
_HIGH_DEPTH_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")


def check_backend(backend: str) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"unknown image backend {backend!r}; expected one of {list(BACKENDS)}")
    if backend == "cv2":
        import_cv2()
    return backend


def import_cv2():
    try:
        import cv2
    except ImportError as e:  # pragma: no cover - the requirements include it
        raise ImportError("the cv2 image backend needs OpenCV: pip install opencv-python-headless") from e
    return cv2


def to_uint8(arr: np.ndarray) -> np.ndarray:
    """Samples of any depth → ``uint8`` by the rules of the module docstring (``uint8`` passes through)."""
    arr = np.asarray(arr)
    if arr.dtype == np.uint8:
        return arr
    if arr.dtype == np.bool_:
        return arr.astype(np.uint8) * np.uint8(255)
    if arr.dtype.kind == "f":
        a = np.nan_to_num(arr.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
        top = float(a.max()) if a.size else 0.0
        if top <= 1.0:
            return np.rint(np.clip(a, 0.0, 1.0) * 255.0).astype(np.uint8)
        if top <= 255.0:
            return np.rint(np.clip(a, 0.0, 255.0)).astype(np.uint8)
        return np.rint(np.clip(a, 0.0, 65535.0) / 257.0).astype(np.uint8)
    if arr.dtype.kind in "iu":
        a = np.clip(arr.astype(np.int64), 0, 65535)
        return ((a * 2 + 257) // 514).astype(np.uint8)  # round(v / 257), halves up (v / 257 is never x.5)
    raise ValueError(f"unsupported sample type {arr.dtype}")


def _array_to_rgb(arr: np.ndarray, bgr: bool) -> np.ndarray:
    """HW, HW1, HW2 (grey + alpha), HW3 or HW4 of any depth → contiguous HWC uint8 RGB.

    ``bgr``: the channels are OpenCV's order (B, G, R[, A]); OpenCV converts them (a numpy reversed-axis
    copy costs about 1 ms for a 512x512 photo, ``cv2.cvtColor`` a few µs)."""
    arr = to_uint8(arr)
    if arr.ndim == 3 and arr.shape[2] in (1, 2):
        arr = arr[:, :, 0]
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] not in (3, 4)):
        raise ValueError(f"unsupported image array of shape {arr.shape}")
    if bgr:
        cv2 = import_cv2()
        if arr.ndim == 2:
            code = cv2.COLOR_GRAY2RGB
        else:
            code = cv2.COLOR_BGR2RGB if arr.shape[2] == 3 else cv2.COLOR_BGRA2RGB
        return cv2.cvtColor(np.ascontiguousarray(arr), code)
    if arr.ndim == 2:
        return np.ascontiguousarray(np.repeat(arr[:, :, None], 3, axis=2))
    return np.ascontiguousarray(arr[:, :, :3])


def pil_to_rgb(img):
    """A PIL image of any mode → mode ``RGB`` (``convert("RGB")``, except deep modes, which are scaled)."""
    from PIL import Image

    if img.mode in _HIGH_DEPTH_MODES:
        return Image.fromarray(to_uint8(np.asarray(img))).convert("RGB")
    return img if img.mode == "RGB" else img.convert("RGB")


def as_rgb_array(img) -> np.ndarray:
    """A PIL image (any mode) or an array (HWC RGB or grey, any depth) → contiguous HWC uint8 RGB."""
    if isinstance(img, np.ndarray):
        if img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] == 3 and img.flags.c_contiguous:
            return img
        return _array_to_rgb(img, bgr=False)
    return np.asarray(pil_to_rgb(img), dtype=np.uint8)


def as_rgb_pil(img):
    """A PIL image (any mode) or an array (HWC RGB or grey, any depth) → a PIL image in mode ``RGB``."""
    from PIL import Image

    if isinstance(img, np.ndarray):
        return Image.fromarray(_array_to_rgb(img, bgr=False))
    return pil_to_rgb(img)


class ImageReadError(ValueError):
    """A file that the chosen backend cannot decode; the message names it (``path``, ``reason``)."""

    def __init__(self, path, reason: str):
        super().__init__(f"{path}: cannot read image ({reason})")
        self.path, self.reason = path, reason


def _read_pil(path):
    from PIL import Image

    with Image.open(path) as img:
        img.load()
        return pil_to_rgb(img)


def _check_pixels(path) -> None:
    """PIL's decompression-bomb limit for the OpenCV path too: the header says the size before anything is
    decoded (a 48 KB PNG can declare 20000 x 20000 pixels, 1.2 GB once decoded)."""
    from PIL import Image

    try:
        with Image.open(path):
            pass
    except Image.DecompressionBombError:
        raise
    except Exception:  # a format PIL cannot open: OpenCV decides
        pass


def _read_cv2(path) -> np.ndarray:
    cv2 = import_cv2()
    _check_pixels(path)
    with open(path, "rb") as f:  # imdecode: no path encoding issues, no OpenCV warning on stderr
        buf = np.frombuffer(f.read(), np.uint8)
    arr = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED) if buf.size else None
    if arr is None:  # a format this OpenCV build cannot decode (e.g. some GIF/WebP builds): PIL decodes it
        return np.asarray(_read_pil(path), dtype=np.uint8)
    return _array_to_rgb(arr, bgr=True)


def read_image(path, backend: str = "pil") -> Union["Image.Image", np.ndarray]:
    """The image at ``path`` as 8-bit RGB: a PIL image (``backend="pil"``) or an HWC uint8 array (``"cv2"``).

    Raises ``ImageReadError`` naming the file when it cannot be decoded (truncated, not an image, missing).
    """
    check_backend(backend)
    try:
        return _read_cv2(path) if backend == "cv2" else _read_pil(path)
    except Exception as e:  # truncated, not an image, unreadable
        raise ImageReadError(path, f"{type(e).__name__}: {e}") from None
