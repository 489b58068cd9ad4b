"""tools/eval.py: official .pth converted on the fly, either form, FLOPs, corrupt images."""
from pathlib import Path

import numpy as np
import paddle
import pytest
from PIL import Image

from ppcdnv2.data import DataError, build_dataset
from ppcdnv2.engine.config import load_config
from ppcdnv2.engine.evalrun import run_eval

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    from skimage import data as skdata

    root = tmp_path_factory.mktemp("imagenet_eval")
    # named after ImageNet classes (goldfish: 1, tench: 0): eval.py matches the folders to them by name
    for cls, names in {"tench": ["astronaut", "coffee"], "goldfish": ["chelsea", "rocket"]}.items():
        (root / "val" / cls).mkdir(parents=True)
        for n in names:
            Image.fromarray(getattr(skdata, n)()).save(root / "val" / cls / f"{n}.jpg")
    return root


def _pth(name):
    from conftest import fixture_path

    pytest.importorskip("ppcdnv2.convert.torch_file")
    return fixture_path(name)


def _expected(folder, model):
    cfg = load_config(str(CONFIGS / "cdnv2_a.yaml"), [f"data.root={folder}"])
    ds = build_dataset(cfg["data"], train=False)
    x = paddle.to_tensor(np.stack([ds[i][0] for i in range(len(ds))]))
    model.eval()
    with paddle.no_grad():
        logits = model(x).numpy()
    from ppcdnv2.deploy.classify import imagenet_classes

    names = imagenet_classes()
    return logits, np.asarray([names.index(ds.classes[i]) for i in ds.labels])  # the model's class indices


def test_eval_official_pth_both_forms(folder, capsys):
    from ppcdnv2.flops import count_flops
    from ppcdnv2.registry import create_model

    conv = _pth("cdnv2_a_s0_converted.pth.tar")
    unconv = _pth("cdnv2_a_s0_unconverted.pth.tar")
    over = [f"data.root={folder}", "data.num_workers=0"]
    rep = run_eval(str(conv), str(CONFIGS / "cdnv2_a.yaml"), over, progress_bar=False)
    out = capsys.readouterr().out
    assert rep["form"] == rep["source_form"] == "converted" and rep["count"] == 4
    ref = count_flops("converted_cdnv2_a")
    assert abs(rep["mflops"] - ref.flops / 1e6) < 1e-9 and round(rep["mflops"]) == 46  # the published 46M
    assert f"{ref.flops / 1e6:.2f} MFLOPs" in out and "top-1" in out

    logits, labels = _expected(folder, create_model("converted_cdnv2_a", pretrained=str(conv)))
    top1 = 100.0 * np.mean(logits.argmax(1) == labels)
    lse = np.log(np.exp(logits - logits.max(1, keepdims=True)).sum(1)) + logits.max(1)
    loss = float(np.mean(lse - logits[np.arange(4), labels]))
    assert rep["top1"] == pytest.approx(top1) and rep["loss"] == pytest.approx(loss, rel=1e-5)

    # the training-form checkpoint: its EMA weights are those of the converted file (official fixture README)
    tr = run_eval(str(unconv), str(CONFIGS / "cdnv2_a.yaml"), over, form="train", progress_bar=False)
    cv = run_eval(str(unconv), str(CONFIGS / "cdnv2_a.yaml"), over, form="converted", progress_bar=False)
    assert tr["form"] == "train" and cv["form"] == "converted" and tr["source_form"] == "train"
    assert tr["top1"] == cv["top1"] == rep["top1"]
    assert tr["loss"] == pytest.approx(rep["loss"], rel=1e-5) and cv["loss"] == pytest.approx(rep["loss"], rel=1e-5)


def test_corrupt_image_fails_with_its_path_or_is_skipped(folder, tmp_path):
    import shutil

    root = tmp_path / "data"
    shutil.copytree(folder, root)
    bad = root / "val" / "goldfish" / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 this is not really a jpeg")
    weights = tmp_path / "w.pdparams"
    from ppcdnv2.registry import create_model
    from ppcdnv2.weights import save_weights, state_dict_numpy

    paddle.seed(0)
    save_weights(state_dict_numpy(create_model("converted_cdnv2_a")), weights)
    over = [f"data.root={root}", "data.num_workers=0"]
    with pytest.raises(DataError, match=r"broken\.jpg: cannot read image"):
        run_eval(str(weights), str(CONFIGS / "cdnv2_a.yaml"), over, progress_bar=False)
    from ppcdnv2.engine.cli import eval_main  # what tools/eval.py runs

    rc = eval_main(["--weights", str(weights), "-c", str(CONFIGS / "cdnv2_a.yaml"), "-o", over[0], "-o", over[1],
                         "--skip-bad", "--json", str(tmp_path / "r.json"), "--no-progress"])
    import json

    rep = json.loads((tmp_path / "r.json").read_text())
    assert rc == 0 and rep["count"] == 4 and rep["skipped"] == [str(bad)]


def test_training_form_weights_cannot_come_from_converted(tmp_path):
    from ppcdnv2.registry import create_model
    from ppcdnv2.weights import WeightsError, save_weights, state_dict_numpy
    from ppcdnv2.weights import load_model
    from ppcdnv2 import preset

    w = tmp_path / "conv.pdparams"
    save_weights(state_dict_numpy(create_model("converted_cdnv2_a")), w)
    with pytest.raises(WeightsError, match="cannot be evaluated in training form"):
        load_model(w, preset("cdnv2_a"), form="train")
    with pytest.raises(WeightsError, match="no such"):
        load_model(tmp_path / "missing.pdparams", preset("cdnv2_a"))
