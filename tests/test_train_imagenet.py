"""The ImageNet recipe end to end on a tiny ImageNet-layout folder of real photos: RandAugment, random
erasing, loader worker processes, CondenseNetV2-A, condensation at the end."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

pytestmark = pytest.mark.slow  # training runs, subprocesses: outside the quick subset (-m "not slow")

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    from skimage import data as skdata

    root = tmp_path_factory.mktemp("inet")
    classes = {"n01": ["astronaut", "coffee", "chelsea", "rocket"],
               "n02": ["immunohistochemistry", "colorwheel", "cat", "hubble_deep_field"]}
    for split in ("train", "val"):
        for cls, names in classes.items():
            (root / split / cls).mkdir(parents=True)
            for n in names:
                Image.fromarray(getattr(skdata, n)()).save(root / split / cls / f"{n}.jpg")
    return root


def run(folder, out, *extra):
    cmd = [sys.executable, str(REPO / "tools" / "train.py"), "-c", str(REPO / "configs" / "cdnv2_a.yaml")]
    for o in [f"data.root={folder}", "train.batch_size=4", "train.epochs=2", "schedule.warmup_epochs=1",
              "data.num_workers=2", f"train.output={out}", "train.progress_bar=false", "eval.batch_size=8", *extra]:
        cmd += ["-o", o]
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)


def test_cdnv2_a_recipe_runs_on_an_imagenet_folder(folder, tmp_path):
    p = run(folder, tmp_path, "model.num_classes=null")
    assert p.returncode == 0, (p.stdout + p.stderr)[-3000:]
    s = json.loads((tmp_path / "summary.json").read_text())
    assert s["same_predictions"] is True and s["converted_form"]["count"] == 8
    assert round(s["mflops"]) == 45  # CondenseNetV2-A with a 2-class classifier (46M with 1000 classes)
    assert "peak lr 0.0015625" in p.stdout + p.stderr  # 0.4 * 4 / 1024: linear scaling


def test_class_count_mismatch_is_a_clear_error(folder, tmp_path):
    p = run(folder, tmp_path)  # the config says 1000 classes, the folder has 2
    assert p.returncode != 0 and "model.num_classes=1000 but the training data has 2 classes" in p.stderr
