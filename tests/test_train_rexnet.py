"""ReXNet trains in the engine like any family: the digits demo config reaches >= 95 % held-out top-1 on
CPU, nothing is condensed (one form), and eval.py, the trainer checkpoint and a fine-tuning start from
upstream-format weights work through the registry."""
import json
from pathlib import Path

import pytest

from conftest import run_training

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("rexnet_demo")
    return out, run_training("rexnet_demo.yaml", out)


def test_rexnet_demo_reaches_95_percent(demo_run):
    out, log = demo_run
    s = json.loads((out / "summary.json").read_text())
    assert s["weights"] == "model" and "converted_form" not in s
    assert s["train_form"]["count"] == 359 and s["train_form"]["top1"] >= 95.0, log[-3000:]
    assert s["mflops"] > 0 and s["mparams"] > 0
    assert not (out / "model_condensed.pdparams").exists() and (out / "model_train.pdparams").exists()


def test_rexnet_demo_weights_evaluate_the_same(demo_run):
    from ppcdnv2.engine.evalrun import run_eval

    out, _ = demo_run
    s = json.loads((out / "summary.json").read_text())
    rep = run_eval(str(out / "model_train.pdparams"), str(REPO / "configs" / "rexnet_demo.yaml"), progress_bar=False)
    assert rep["form"] == "train" and rep["top1"] == s["train_form"]["top1"]
    rep2 = run_eval(str(out / "checkpoint_last.safetensors"), which="model", progress_bar=False)
    assert rep2["top1"] == rep["top1"]
    with pytest.raises(ValueError, match="form"):
        run_eval(str(out / "model_train.pdparams"), str(REPO / "configs" / "rexnet_demo.yaml"), form="converted",
                 progress_bar=False)


def test_finetune_from_upstream_weights_replaces_the_classifier(tmp_path):
    """model.pretrained = an upstream .pth of 1000 classes, trained on the 10 digit classes: the classifier
    (output.1) starts fresh, every other tensor starts from the file."""
    import numpy as np

    from ppcdnv2.engine.build import build_model, load_initial_weights
    from ppcdnv2.engine.config import load_config
    from ppcdnv2.weights import state_dict_numpy

    src = REPO / ".." / "shared" / "fixtures" / "rexnet" / "rexnet_1.0x_s0.pth"
    if not src.exists():
        pytest.skip("ReXNet fixture missing")
    cfg = load_config(str(REPO / "configs" / "rexnet_demo.yaml"), ["model.arch=null"])
    model = build_model(cfg["model"], num_classes=10)
    assert load_initial_weights(model, str(src)) is True
    import ppcdnv2

    full = state_dict_numpy(ppcdnv2.create_model("rexnet_100", pretrained=str(src)))
    ours = state_dict_numpy(model)
    assert ours["output.1.weight"].shape[0] == 10
    assert all(np.array_equal(ours[k], v) for k, v in full.items() if not k.startswith("output.1."))
