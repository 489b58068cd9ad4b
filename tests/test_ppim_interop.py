"""ppim's cdnv2 and ours exchange weights: same logits both ways (everything randomised)."""
import numpy as np
import paddle
import pytest

import ppcdnv2
from conftest import fixture_path
from helpers_convert import paddle_logits, random_converted_state
from ppcdnv2.convert.cli import main
from ppcdnv2.families.condensenet.ppim import build_ppim_model, load_ppim_weights, save_ppim_weights, to_ppim_state
from ppcdnv2.weights import WeightsError, load_state_dict

pytest.importorskip("ppim")
TOL = 1e-4
CFG = ppcdnv2.preset("cdnv2_a")


@pytest.fixture(scope="module")
def x():
    return np.random.default_rng(0).standard_normal((2, 3, 224, 224)).astype(np.float32)


def _ppim_set(model, state):
    """ppim's own loading (set_state_dict only warns on missing keys, so check them first)."""
    assert sorted(state) == sorted(model.state_dict())
    model.set_state_dict({k: paddle.to_tensor(v) for k, v in state.items()})
    return model


def test_ours_to_ppim_same_logits(x, tmp_path):
    ours = load_state_dict(ppcdnv2.create_model("converted_cdnv2_a"),
                           random_converted_state(ppcdnv2.create_model("converted_cdnv2_a"), seed=3))
    ppim_model = _ppim_set(build_ppim_model(CFG), to_ppim_state(ours))
    expected = paddle_logits(ours, x)
    assert expected.std() > 0.1
    assert np.abs(paddle_logits(ppim_model, x) - expected).max() <= TOL
    # and through a file, the way ppim users load weights
    path = save_ppim_weights(ours, tmp_path / "for_ppim.pdparams")
    again = build_ppim_model(CFG)
    again.set_state_dict(paddle.load(str(path)))
    assert np.abs(paddle_logits(again, x) - expected).max() <= TOL


def test_ppim_to_ours_same_logits(x, tmp_path):
    ppim_model = build_ppim_model(CFG)
    # ppim's weights, all random: take a random state of our layout and re-encode the SFR index densely
    state = to_ppim_state(load_state_dict(ppcdnv2.create_model("converted_cdnv2_a"),
                                          random_converted_state(ppcdnv2.create_model("converted_cdnv2_a"), 4)))
    _ppim_set(ppim_model, state)
    expected = paddle_logits(ppim_model, x)
    assert expected.std() > 0.1
    path = tmp_path / "ppim_cdnv2_a.pdparams"
    paddle.save(ppim_model.state_dict(), str(path))  # as ppim's released .pdparams are written
    for src in (path, {k: v.numpy() for k, v in ppim_model.state_dict().items()}):
        ours = load_ppim_weights(ppcdnv2.create_model("converted_cdnv2_a"), src)
        assert np.abs(paddle_logits(ours, x) - expected).max() <= TOL


def test_cli_writes_ppim_layout_from_the_official_checkpoint(tmp_path, official_io):
    dst = tmp_path / "cdnv2_a_ppim.pdparams"
    assert main([str(fixture_path("cdnv2_a_s0_converted.pth.tar")), str(dst), "--ppim"]) == 0
    ppim_model = build_ppim_model(CFG)
    _ppim_set(ppim_model, {k: v.numpy() for k, v in paddle.load(str(dst)).items()})
    diff = np.abs(paddle_logits(ppim_model, official_io["x"]) - official_io["converted"]).max()
    assert diff <= TOL, diff


def test_configurations_ppim_cannot_express_are_refused():
    cfg = CFG.replace(condense_factor=4)
    with pytest.raises(WeightsError, match="condense_factor 4 != group_1x1 8"):
        to_ppim_state(ppcdnv2.build_condensenetv2(cfg, form="converted"))
    with pytest.raises(WeightsError, match="converted"):
        to_ppim_state(ppcdnv2.create_model("cdnv2_a"))

