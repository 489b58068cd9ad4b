"""CondenseNet (V1) checkpoints through the converter: released-style converted files and trainer files."""
import subprocess
import sys

import numpy as np
import paddle
import pytest

import ppcdnv2
from ppcdnv2.convert.cli import main as cli
from ppcdnv2.registry import find_family
from ppcdnv2 import preset
from ppcdnv2.weights import state_dict_numpy

torch = pytest.importorskip("torch")
ref = pytest.importorskip("ppcdnv2.families.condensenet.reference.condensenet")
from test_condensenet_v1 import _random_reference, _stage_progresses, _torch_cpu  # noqa: E402,F401 (autouse)

REPO = __import__("pathlib").Path(__file__).resolve().parents[1]
TOL = 1e-4


def _save_legacy(obj, path):
    """As upstream's files were written: torch < 1.6 format, DataParallel ``module.`` keys, no BN counters."""
    state = {f"module.{k}": v for k, v in obj.pop("state_dict").items() if not k.endswith("num_batches_tracked")}
    torch.save({"state_dict": state, **obj}, path, _use_new_zipfile_serialization=False)


def _logits(model, x):
    model.eval()
    if isinstance(model, paddle.nn.Layer):
        with paddle.no_grad():
            return model(paddle.to_tensor(x.numpy())).numpy()
    with torch.no_grad():
        return model(x).numpy()


def test_released_style_converted_checkpoint_converts_with_the_cli(tmp_path):
    """A random converted CondenseNet-74 (C=G=4), saved like ``converted_condensenet_4.pth.tar``."""
    tm, x = _random_reference(preset("condensenet74_c4_g4"), converted=True, seed=3, batch=1)
    src, dst = tmp_path / "converted_condensenet_4.pth.tar", tmp_path / "condensenet74_c4_g4.pdparams"
    _save_legacy({"state_dict": tm.state_dict()}, src)
    run = subprocess.run([sys.executable, str(REPO / "tools" / "convert_torch_weights.py"), str(src), str(dst),
                          "--verify"], capture_output=True, text=True, cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    assert "condensenet74_c4_g4" in run.stdout
    model = ppcdnv2.create_model("converted_condensenet74_c4_g4", pretrained=str(dst))
    assert np.abs(_logits(model, x) - _logits(tm, x)).max() <= TOL
    # the condensed classifier's gather came through unchanged
    np.testing.assert_array_equal(state_dict_numpy(model)["classifier.index"], tm.classifier.index.numpy())


def _trainer_checkpoint(tm, path):
    """Upstream ``main.py``'s checkpoint: epoch, model name, state_dict, best_prec1, optimizer."""
    opt = torch.optim.SGD(tm.parameters(), 0.1, momentum=0.9, weight_decay=1e-4, nesterov=True)
    _save_legacy({"state_dict": tm.state_dict(), "epoch": 299, "model": "condensenet", "best_prec1": 94.7,
                  "optimizer": opt.state_dict()}, path)


def test_trainer_checkpoint_condenses_to_the_reference_conversion(tmp_path, capsys):
    cfg = preset("condensenet_cifar50")
    tm, x = _random_reference(cfg, seed=4)
    with torch.no_grad():
        for p in _stage_progresses(cfg.condense_factor):
            tm(x, progress=p)
    src = tmp_path / "checkpoint_299.pth.tar"
    _trainer_checkpoint(tm, src)

    # V1's classifier condensation (half of the features) changes the logits by design, so --verify
    # must compare with upstream's conversion of the reference, not with the training-form reference
    assert cli([str(src), str(tmp_path / "c.pdparams"), "--verify"]) == 0, capsys.readouterr().err
    assert "verify: max |torch reference - paddle|" in capsys.readouterr().out
    converted = ppcdnv2.create_model("converted_condensenet_cifar50", pretrained=str(tmp_path / "c.pdparams"))
    assert np.abs(_logits(converted, x) - _logits(ref.convert_model(tm), x)).max() <= TOL
    assert np.abs(_logits(ref.convert_model(tm), x) - _logits(tm, x)).max() > 10 * TOL  # why the hook matters
    # loading the trainer file directly condenses it the same way
    direct = ppcdnv2.create_model("converted_condensenet_cifar50", pretrained=str(src))
    assert np.abs(_logits(direct, x) - _logits(converted, x)).max() <= TOL

    assert cli([str(src), str(tmp_path / "t.pdparams"), "--form", "train", "--verify"]) == 0, capsys.readouterr().err
    train = ppcdnv2.create_model("condensenet_cifar50", pretrained=str(tmp_path / "t.pdparams"))
    assert np.abs(_logits(train, x) - _logits(tm, x)).max() <= TOL


def test_partly_condensed_checkpoint_is_refused_for_the_converted_form(tmp_path, capsys):
    cfg = preset("condensenet_cifar50")
    tm, x = _random_reference(cfg, seed=5)
    with torch.no_grad():
        tm(x, progress=_stage_progresses(cfg.condense_factor)[1])  # one stage of three dropped
    src = tmp_path / "checkpoint_050.pth.tar"
    _trainer_checkpoint(tm, src)
    assert cli([str(src), str(tmp_path / "c.pdparams")]) == 1
    assert "not fully condensed" in capsys.readouterr().err
    assert not (tmp_path / "c.pdparams").exists()


def test_families_tell_v1_from_v2():
    v1 = state_dict_numpy(ppcdnv2.create_model("converted_condensenet_cifar50"))
    v2 = state_dict_numpy(ppcdnv2.create_model("cdnv2_a"))
    assert find_family(v1).name == "condensenet"
    assert find_family(v2).name == "condensenetv2"
