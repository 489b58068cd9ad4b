"""``gfnet.pretrained`` with the backbone files upstream's stage 1 starts from (``train.py --model_path``):
torchvision ResNet / DenseNet ``.pth`` (also the hub's old ``norm.1`` DenseNet keys), pycls RegNet ``.pyth``
(``{"model_state": ...}``, classifier ``head.fc``), geffnet MobileNetV3 / EfficientNet ``.pth``.

Proof that a file landed in the right places, independent of our key map: the glance encoder loaded from the
backbone file (the fixture's ``model_prime`` weights written in that format), with the fixture's ``fc`` and
policy, gives the official code's step-0 output; the local encoder holds the same weights as the glance one.
"""
from __future__ import annotations

import re

import numpy as np
import paddle
import pytest

import ppcdnv2
from gfnet_fixtures import io, weights
from ppcdnv2.engine.trainer import TrainError
from ppcdnv2.families.gfnet.engine import load_gfnet_pretrained

torch = pytest.importorskip("torch")

CASES = [  # (configuration, file format) — the slow ones hold the large backbones
    ("regnety_600m_p96_t5", "pycls"),
    ("mobilenetv3_large_100_p96_t3", "geffnet"),
    ("densenet121_p96_t5", "torchvision"),
    ("densenet121_p96_t5", "torchvision-hub"),
    pytest.param("resnet50_p96_t5", "torchvision", marks=pytest.mark.slow),
    pytest.param("efficientnet_b2_p128_t4", "geffnet", marks=pytest.mark.slow),
]


def _backbone_file(prime: dict, fmt: str, folder):
    """The glance encoder's weights as the file a user downloads for this backbone."""
    state = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in prime.items()}
    if fmt == "pycls":  # pycls' model zoo: a dict with the state under model_state, the classifier in the head
        state = {("head." + k if k.startswith("fc.") else k): v for k, v in state.items()}
        path = folder / "RegNetY-600MF_dds_8gpu.pyth"
        torch.save({"epoch": 99, "model_state": state, "optimizer_state": {}}, path)
        return path
    if fmt == "torchvision-hub":  # torchvision's released DenseNet files: norm.1 / relu.1 / conv.1 in the layers
        state = {re.sub(r"(denselayer\d+)\.(norm|relu|conv)(\d)\.", r"\1.\2.\3.", k): v for k, v in state.items()}
        assert any(".norm.1." in k for k in state)
    path = folder / "backbone.pth"
    torch.save(state, path)
    return path


@pytest.mark.parametrize("name,fmt", CASES)
def test_stage1_starts_from_an_upstream_backbone_file(name, fmt, tmp_path):
    prime = weights(name, "model_prime_state_dict")
    path = _backbone_file(prime, fmt, tmp_path)

    model = ppcdnv2.create_model(f"gfnet_{name}")
    how = load_gfnet_pretrained(model, str(path))
    assert how.startswith("both encoders"), how
    glance, local = model.model_prime.state_dict(), model.model.state_dict()
    assert glance.keys() == local.keys()
    for k in glance:
        np.testing.assert_array_equal(glance[k].numpy(), local[k].numpy(), err_msg=k)

    # the glance step of the official code: only model_prime, fc and (for step 0) the backbone classifier run
    model.load_components(fc=weights(name, "fc"), policy=weights(name, "policy"))
    model.eval()
    data = io(name)
    with paddle.no_grad():
        got = model(paddle.to_tensor(data["x"]), steps=1).numpy()
    np.testing.assert_allclose(got[0], data["logits"][0], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(model.model_prime(paddle.to_tensor(data["prime"]))[0].numpy(), data["features"][0],
                               rtol=1e-4, atol=1e-4)

def test_a_file_for_another_backbone_is_refused_naming_it(tmp_path):
    prime = weights("regnety_600m_p96_t5", "model_prime_state_dict")
    path = _backbone_file(prime, "pycls", tmp_path)
    model = ppcdnv2.create_model("gfnet_mobilenetv3_large_100_p96_t3")
    with pytest.raises(TrainError, match=r"RegNetY-600MF_dds_8gpu\.pyth: not mobilenetv3_large_100 weights"):
        load_gfnet_pretrained(model, str(path))
