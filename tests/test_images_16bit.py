"""Images of more than 8 bits per sample (PIL modes ``I;16``, ``I``, ``F``; OpenCV ``uint16``/``int32``/``float32``)
are scaled to 8 bits, not clipped (``convert("RGB")`` turned a 16-bit photo almost white).

A real photo (scikit-image's astronaut) is written as 16-bit data whose 8-bit reading is known exactly:
``v16 = v8 * 257 + noise``, the noise uniform in [-128, 128], so ``round(v16 / 257) == v8`` while the low
byte is far from empty (a reader that took ``v16 >> 8`` or clipped would be off). Its preprocessed tensors
must equal those of the 8-bit copy within one grey level (1/255, in normalised units 1/255/std) in
evaluation, training (same seed) and the classify/infer loading path, for both backends.
"""
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ppcdnv2.data import build_dataset
from ppcdnv2.data.decode import as_rgb_array, as_rgb_pil, read_image, to_uint8
from ppcdnv2.data.transforms import EvalTransform, TrainTransform
from ppcdnv2.deploy import Preprocess, classify
from ppcdnv2.deploy.classify import eval_transform, load_image
from ppcdnv2.engine.config import load_config

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
STD = np.array([0.229, 0.224, 0.225], np.float32)
ONE_LEVEL = float(1 / 255 / STD.min()) + 1e-6  # one grey level in normalised units (the largest channel's)
BACKENDS = ["pil", "cv2"]


def _sixteen(v8: np.ndarray, seed: int) -> np.ndarray:
    noise = np.random.default_rng(seed).integers(-128, 129, v8.shape)
    return np.clip(v8.astype(np.int64) * 257 + noise, 0, 65535).astype(np.uint16)


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """Two ImageNet-layout roots with the same file names: ``root8`` the 8-bit copies, ``root16`` deep ones."""
    from skimage import data as skdata

    root = tmp_path_factory.mktemp("deep")
    rgb8 = skdata.astronaut()[40:440, 20:500]  # 400 x 480, not square
    grey8 = np.asarray(Image.fromarray(rgb8).convert("L"))
    grey16 = _sixteen(grey8, 0)
    assert np.array_equal(np.rint(grey16 / 257.0).astype(np.uint8), grey8) and (grey16 % 257 != 0).mean() > 0.9
    files = {}
    for split in ("train", "val"):
        for bits in ("8", "16"):
            (root / bits / split / "c0").mkdir(parents=True)
    for split in ("train", "val"):
        Image.fromarray(grey8).save(root / "8" / split / "c0" / "grey.png")
        Image.fromarray(grey16).save(root / "16" / split / "c0" / "grey.png")  # PIL mode I;16, 16-bit PNG
    files["grey8"], files["grey16"] = root / "8" / "val" / "c0" / "grey.png", root / "16" / "val" / "c0" / "grey.png"
    assert Image.open(files["grey16"]).mode == "I;16"
    # a 16-bit colour PNG (OpenCV writes it; Pillow opens it as 8-bit RGB keeping the high byte)
    rgb16 = _sixteen(rgb8, 1)
    import cv2

    files["rgb8"], files["rgb16"] = root / "rgb8.png", root / "rgb16.png"
    Image.fromarray(rgb8).save(files["rgb8"])
    assert cv2.imwrite(str(files["rgb16"]), np.ascontiguousarray(rgb16[:, :, ::-1]))
    # mode I (32-bit integers holding 16-bit data) and F (float: [0, 1], 8-bit and 16-bit ranges) as TIFF
    files["I"] = root / "grey_I.tif"
    Image.fromarray(grey16.astype(np.int32)).save(files["I"])
    assert Image.open(files["I"]).mode == "I"
    for name, arr in (("F_unit", grey8 / 255.0), ("F_8bit", grey8.astype(np.float64)),
                      ("F_16bit", grey16.astype(np.float64))):
        files[name] = root / f"grey_{name}.tif"
        Image.fromarray(arr.astype(np.float32)).save(files[name])
        assert Image.open(files[name]).mode == "F"
    return root, files, rgb8, grey8


def _close(a, b, what):
    assert a.shape == b.shape, what
    d = float(np.abs(a - b).max())
    assert d <= ONE_LEVEL, f"{what}: max |16-bit - 8-bit| = {d:.4f} > {ONE_LEVEL:.4f}"
    return d


def test_scaling_rules():
    v16 = np.array([0, 128, 129, 257, 385, 386, 32767, 32768, 65278, 65279, 65535], np.uint16)
    assert to_uint8(v16).tolist() == [0, 0, 1, 1, 1, 2, 127, 128, 254, 254, 255]  # round(v / 257)
    assert np.array_equal(to_uint8(np.arange(256, dtype=np.uint16) * 257), np.arange(256))
    big = np.array([-5, 0, 257, 65535, 70000], np.int32)  # mode I: 16-bit data, clipped to 0..65535
    assert to_uint8(big).tolist() == [0, 0, 1, 255, 255]
    assert to_uint8(np.array([0.0, 0.5, 1.0, -0.2, np.nan], np.float32)).tolist() == [0, 128, 255, 0, 0]
    assert to_uint8(np.array([0.0, 100.4, 255.0], np.float32)).tolist() == [0, 100, 255]  # 8-bit range
    assert to_uint8(np.array([0.0, 25700.0, 65535.0, 1e6], np.float32)).tolist() == [0, 100, 255, 255]
    u8 = np.arange(256, dtype=np.uint8)
    assert to_uint8(u8) is u8
    # in-memory PIL images of the deep modes, through both conversions
    grey = np.arange(0, 65536, 257, dtype=np.uint16).reshape(16, 16)
    for img in (Image.fromarray(grey), Image.fromarray(grey.astype(np.int32)),
                Image.fromarray((grey / 65535.0).astype(np.float32))):
        assert img.mode in ("I;16", "I", "F")
        want = np.repeat(np.arange(256, dtype=np.uint8).reshape(16, 16)[:, :, None], 3, axis=2)
        assert np.array_equal(np.asarray(as_rgb_pil(img)), want), img.mode
        assert np.array_equal(as_rgb_array(img), want), img.mode
        assert np.asarray(img.convert("RGB")).mean() > 200 or img.mode == "F"  # what convert("RGB") gives


@pytest.mark.parametrize("backend", BACKENDS)
def test_decoding_deep_files(photos, backend):
    root, files, rgb8, grey8 = photos
    want = np.repeat(grey8[:, :, None], 3, axis=2)
    for name in ("grey16", "I", "F_unit", "F_8bit", "F_16bit"):
        got = np.asarray(read_image(files[name], backend))
        assert got.dtype == np.uint8 and np.array_equal(got, want), (name, backend)
    got = np.asarray(read_image(files["rgb16"], backend), np.int16)
    if backend == "cv2":  # all 16 bits read, round(v / 257)
        assert np.array_equal(got, rgb8)
    else:  # Pillow keeps the high byte of a 16-bit colour PNG itself: v >> 8, within one level
        assert np.abs(got - rgb8).max() <= 1 and np.abs(got - rgb8).mean() < 0.5


@pytest.mark.parametrize("backend", BACKENDS)
def test_eval_16bit_equals_8bit_copy(photos, backend):
    root, files, _, _ = photos
    worst = 0.0
    for interpolation, config in (("bicubic", "cdnv2_a"), ("bilinear", "cdnv2_c")):
        tensors = {}
        for bits in ("8", "16"):
            cfg = load_config(str(CONFIGS / f"{config}.yaml"), [f"data.root={root / bits}", f"data.backend={backend}"])
            ds = build_dataset(cfg["data"], train=False)
            tensors[bits] = ds[0][0]
        assert tensors["16"].shape == (3, 224, 224)
        worst = max(worst, _close(tensors["16"], tensors["8"], f"eval {backend} {interpolation}"))
    if backend == "cv2":
        tf = EvalTransform(backend="cv2")
        worst = max(worst, _close(tf(read_image(files["rgb16"], "cv2")), tf(read_image(files["rgb8"], "cv2")),
                                  "eval cv2 rgb16"))
    print(f"eval {backend}: max |16-bit - 8-bit| {worst:.2e}")


@pytest.mark.parametrize("backend", BACKENDS)
def test_train_16bit_equals_8bit_copy_same_seed(photos, backend):
    root, files, _, _ = photos
    out = {}
    for bits in ("8", "16"):
        cfg = load_config(str(CONFIGS / "cdnv2_a.yaml"), [f"data.root={root / bits}", f"data.backend={backend}"])
        assert cfg["data"]["auto_augment"] and cfg["data"]["reprob"] > 0  # RandAugment and erasing included
        ds = build_dataset(cfg["data"], train=True, seed=11)
        out[bits] = [ds[(0, epoch)][0] for epoch in range(6)]
    for epoch, (a, b) in enumerate(zip(out["16"], out["8"])):
        _close(a, b, f"train {backend} epoch {epoch}")
    assert not np.array_equal(out["8"][0], out["8"][1])  # the epochs do augment differently
    if backend == "cv2":
        tf = TrainTransform(224, auto_augment="rand-m9-mstd0.5", reprob=0.25, backend="cv2")
        for seed in range(4):
            _close(tf(read_image(files["rgb16"], "cv2"), np.random.default_rng(seed)),
                   tf(read_image(files["rgb8"], "cv2"), np.random.default_rng(seed)), f"train cv2 rgb16 seed {seed}")


@pytest.mark.parametrize("backend", BACKENDS)
def test_infer_loading_16bit_equals_8bit_copy(photos, backend):
    root, files, _, _ = photos
    pre = Preprocess()
    tf = eval_transform(pre, backend)
    pairs = [("grey16", "grey8"), ("I", "grey8"), ("F_16bit", "grey8"), ("F_unit", "grey8")]
    if backend == "cv2":
        pairs.append(("rgb16", "rgb8"))
    for deep, eight in pairs:
        _close(load_image(files[deep], tf), load_image(files[eight], tf), f"load_image {backend} {deep}")

    class Recorder:
        meta = None

        def __init__(self):
            self.x = []

        def __call__(self, x):
            self.x.append(x)
            return x.reshape(len(x), -1)[:, :5].astype(np.float64)

    rec = Recorder()
    deep, eight = [files[d] for d, _ in pairs], [files[e] for _, e in pairs]
    res = classify(rec, deep + eight, k=2, batch_size=64, preprocess=pre, backend=backend)
    assert len(res) == 2 * len(pairs)
    x = rec.x[0]
    _close(x[:len(pairs)], x[len(pairs):], f"classify {backend}")
