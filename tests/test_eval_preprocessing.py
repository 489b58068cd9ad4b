"""Evaluation preprocessing equals the official pipeline on real photos (scikit-image's samples).

The official ``convert_and_eval.py`` uses torchvision: ImageFolder's PIL loader (``convert("RGB")``),
``Resize(256, BICUBIC)`` (``BILINEAR`` for CondenseNetV2-C), ``CenterCrop(224)``, ``ToTensor``,
``Normalize(ImageNet mean/std)``. torchvision may not install beside the pinned torch, so that
pipeline is re-written below from torchvision's documented rules with plain PIL and numpy
float32 arithmetic, independently of ``ppcdnv2.data.transforms``.
"""
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ppcdnv2.data import build_dataset
from ppcdnv2.engine.config import load_config

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
MEAN = np.array([0.485, 0.456, 0.406], np.float32)
STD = np.array([0.229, 0.224, 0.225], np.float32)


def official_pipeline(path, interpolation):
    with open(path, "rb") as f:  # torchvision.datasets.folder.pil_loader
        img = Image.open(f).convert("RGB")
    w, h = img.size  # Resize(256): the shorter side becomes 256, the longer int(256 * long / short)
    if w <= h:
        size = (256, int(256 * h / w))
    else:
        size = (int(256 * w / h), 256)
    img = img.resize(size, interpolation)
    w, h = img.size  # CenterCrop(224): offsets int(round((size - 224) / 2))
    top, left = int(round((h - 224) / 2.0)), int(round((w - 224) / 2.0))
    img = img.crop((left, top, left + 224, top + 224))
    x = np.array(img, dtype=np.uint8).astype(np.float32)  # ToTensor: HWC uint8 -> CHW float / 255
    x = x.transpose(2, 0, 1) / np.float32(255.0)
    return (x - MEAN[:, None, None]) / STD[:, None, None]  # Normalize


@pytest.fixture(scope="module")
def photo_folder(tmp_path_factory):
    """An ImageNet-layout folder of real photos: several sizes, orientations, grey, RGBA, JPEG and PNG."""
    from skimage import data as skdata

    root = tmp_path_factory.mktemp("imagenet")
    photos = {
        "n01": {"astronaut.jpg": skdata.astronaut(), "coffee.png": skdata.coffee(),
                "coffee_portrait.jpg": np.ascontiguousarray(skdata.coffee().transpose(1, 0, 2)),
                "camera_grey.png": skdata.camera()},
        "n02": {"chelsea.jpg": skdata.chelsea(), "rocket.jpg": skdata.rocket(), "logo_rgba.png": skdata.logo(),
                "small.jpg": skdata.chelsea()[:150, :199]},  # smaller than 256: upsampled; odd crop offset
    }
    for cls, files in photos.items():
        (root / "val" / cls).mkdir(parents=True)
        for name, arr in files.items():
            Image.fromarray(arr).save(root / "val" / cls / name, quality=90)
    return root


@pytest.mark.parametrize("config, interpolation", [("cdnv2_a", Image.BICUBIC), ("cdnv2_b", Image.BICUBIC),
                                                   ("cdnv2_c", Image.BILINEAR)])
def test_eval_transform_matches_official_pipeline(photo_folder, config, interpolation):
    cfg = load_config(str(CONFIGS / f"{config}.yaml"), [f"data.root={photo_folder}"])
    ds = build_dataset(cfg["data"], train=False)
    assert len(ds) == 8 and ds.classes == ["n01", "n02"]
    worst = 0.0
    for i in range(len(ds)):
        x, label, idx = ds[i]
        ref = official_pipeline(ds.paths[i], interpolation)
        assert x.shape == ref.shape == (3, 224, 224) and x.dtype == np.float32
        worst = max(worst, float(np.abs(x - ref).max()))
        assert label == (0 if ds.paths[i].parent.name == "n01" else 1)
    assert worst <= 1e-6


def test_interpolation_matters(photo_folder):
    """The check above can fail: bilinear and bicubic differ by far more than the tolerance."""
    cfg = load_config(str(CONFIGS / "cdnv2_a.yaml"), [f"data.root={photo_folder}"])
    ds = build_dataset(cfg["data"], train=False)
    x = ds[0][0]
    assert np.abs(x - official_pipeline(ds.paths[0], Image.BILINEAR)).max() > 1e-2
