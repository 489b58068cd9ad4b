"""ReXNet weights through the converter and the loaders: upstream (zip and legacy, ``module.``), timm's
layout (safetensors), ppim's .pdparams; torch-free conversion, logits of the fixtures, exact round trips.

The fixtures (``../shared/fixtures/rexnet``) were made by the upstream code and by timm with random
weights and randomised BatchNorm; their ``_io.npz`` hold the upstream/timm logits.
"""
import numpy as np
import pytest

import ppcdnv2
from conftest import fixture_path
from helpers_convert import paddle_logits, run_cli_without_torch, with_prefix
from ppcdnv2.convert.cli import main as cli
from ppcdnv2.weights import read_paddle_weights, read_safetensors

CASES = {  # fixture → (model name, npz)
    "rexnet_1.0x_s0.pth": ("rexnet_100", "rexnet_1.0x_s0_io.npz"),
    "rexnet_lite_1.0x_s0.pth": ("rexnet_lite_100", "rexnet_lite_1.0x_s0_io.npz"),
    "timm_rexnet_100_s0.safetensors": ("rexnet_100", "timm_rexnet_100_s0_io.npz"),
}
TOL = 1e-4


def fixture(name: str):
    return fixture_path(name, "rexnet")


def io(name):
    d = np.load(fixture(CASES[name][1]))
    return d["x"], d["y"]


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """Every fixture converted by the CLI in an interpreter where ``import torch`` fails."""
    work = tmp_path_factory.mktemp("rexnet_cli")
    cases = {src: [str(fixture(src)), f"{src}.pdparams"] for src in CASES}
    cases["ppim"] = [str(fixture("rexnet_1.0x_s0.pth")), "ppim.pdparams", "--ppim"]
    results = run_cli_without_torch(cases, work)
    assert results["__env__"] == {"torch_blocked": True, "torch_loaded": False}
    for name, r in results.items():
        if name != "__env__":
            assert r["code"] == 0, (name, r["stderr"])
    return work, results


@pytest.mark.parametrize("src", sorted(CASES))
def test_fixture_converts_without_torch_and_reproduces_logits(converted, src):
    work, results = converted
    name = CASES[src][0]
    assert f"create_model({name!r}" in results[src]["stdout"]
    model = ppcdnv2.create_model(name, pretrained=str(work / f"{src}.pdparams"))
    x, y = io(src)
    diff = np.abs(paddle_logits(model, x) - y).max()
    print(f"{src}: max |paddle - upstream| = {diff:.3g}")
    assert y.std() > 0.1 and diff <= TOL
    if src.startswith("timm"):
        assert "timm layout" in results[src]["stdout"]


@pytest.mark.parametrize("src", sorted(CASES))
def test_create_model_reads_the_fixture_directly(src):
    name = CASES[src][0]
    model = ppcdnv2.create_model(name, pretrained=str(fixture(src)))
    x, y = io(src)
    assert np.abs(paddle_logits(model, x) - y).max() <= TOL


def test_legacy_format_and_module_prefix(tmp_path):
    torch = pytest.importorskip("torch")
    state = torch.load(fixture("rexnet_1.0x_s0.pth"), weights_only=True)
    legacy = tmp_path / "rexnetv1_1.0x.pth"
    torch.save({"state_dict": with_prefix(state)}, legacy, _use_new_zipfile_serialization=False)
    assert cli([str(legacy), str(tmp_path / "out.pdparams")]) == 0
    model = ppcdnv2.create_model("rexnet_100", pretrained=str(tmp_path / "out.pdparams"))
    x, y = io("rexnet_1.0x_s0.pth")
    assert np.abs(paddle_logits(model, x) - y).max() <= TOL


def _torch_state(path):
    torch = pytest.importorskip("torch")
    return {k: v.numpy() for k, v in torch.load(path, weights_only=True, map_location="cpu").items()}


@pytest.mark.parametrize("src", ["rexnet_1.0x_s0.pth", "rexnet_lite_1.0x_s0.pth"])
def test_export_back_to_upstream_is_bit_exact(converted, tmp_path, src):
    work, _ = converted
    back = tmp_path / "back.pth"
    assert cli([str(work / f"{src}.pdparams"), str(back), "--verify"]) == 0
    original, written = _torch_state(fixture(src)), _torch_state(back)
    assert list(written) == list(original)  # upstream's keys in upstream's order, a bare state dict
    for k, v in original.items():
        if k.endswith("num_batches_tracked"):  # a counter, not a weight: written as 0
            continue
        assert written[k].dtype == v.dtype and np.array_equal(written[k], v), k


def test_export_to_timm_layout_is_bit_exact(converted, tmp_path):
    work, _ = converted
    back = tmp_path / "timm.safetensors"
    assert cli([str(work / "rexnet_1.0x_s0.pth.pdparams"), str(back), "--layout", "timm", "--verify"]) == 0
    written = read_safetensors(back)
    # the timm fixture holds other random weights: compare the layout (keys and shapes) with it, and the
    # values with the upstream fixture mapped into timm's layout by the round trip below
    timm = read_safetensors(fixture("timm_rexnet_100_s0.safetensors"))
    assert {k: v.shape for k, v in written.items()} == {k: v.shape for k, v in timm.items()}
    again = tmp_path / "again.pdparams"
    assert cli([str(back), str(again)]) == 0
    first = read_paddle_weights(work / "rexnet_1.0x_s0.pth.pdparams")
    second = read_paddle_weights(again)
    assert sorted(first) == sorted(second)
    assert all(np.array_equal(first[k], second[k]) for k in first)


def test_timm_fixture_round_trips_bit_exactly(converted, tmp_path):
    work, _ = converted
    back = tmp_path / "timm_back.safetensors"
    assert cli([str(work / "timm_rexnet_100_s0.safetensors.pdparams"), str(back), "--layout", "timm"]) == 0
    original, written = read_safetensors(fixture("timm_rexnet_100_s0.safetensors")), read_safetensors(back)
    assert sorted(written) == sorted(original)
    for k, v in original.items():
        if not k.endswith("num_batches_tracked"):
            assert np.array_equal(written[k], v), k


def test_ppim_rexnet_loads_ours(converted):
    ppim = pytest.importorskip("ppim")
    import paddle

    work, results = converted
    assert "ppim layout" in results["ppim"]["stdout"]
    theirs = ppim.rexnet_1_0(pretrained=False)
    missing, unexpected = theirs.set_state_dict(paddle.load(str(work / "ppim.pdparams")))
    assert not missing and not unexpected
    x, y = io("rexnet_1.0x_s0.pth")  # batch 2: ppim squeezes its output
    assert np.abs(paddle_logits(theirs, x) - y).max() <= TOL
    # and ppim's file loads into ours
    ours = ppcdnv2.create_model("rexnet_1_0", pretrained=str(work / "ppim.pdparams"))
    assert np.abs(paddle_logits(ours, x) - y).max() <= TOL


def test_lite_has_no_timm_layout(converted, tmp_path, capsys):
    work, _ = converted
    assert cli([str(work / "rexnet_lite_1.0x_s0.pth.pdparams"), str(tmp_path / "x.safetensors"),
                "--layout", "timm"]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "lite" in err
    assert not (tmp_path / "x.safetensors").exists()


def test_custom_width_is_detected(tmp_path):
    """A width with no preset (0.75) and other classes: detected from the shapes alone."""
    from ppcdnv2.convert.keymap import paddle_to_torch_state
    from ppcdnv2.convert.torch_writer import save_torch_file
    from ppcdnv2.weights import state_dict_numpy

    model = ppcdnv2.get_family("rexnet").build("rexnet_100", width_mult=0.75, num_classes=7)
    src = tmp_path / "custom.pth"
    save_torch_file(paddle_to_torch_state(state_dict_numpy(model), model), src)
    assert cli([str(src), str(tmp_path / "custom.pdparams")]) == 0
    from ppcdnv2.registry import find_family
    from ppcdnv2.weights import read_weights

    state = read_weights(tmp_path / "custom.pdparams")
    det = find_family(state).detect(state, "paddle")
    assert det.cfg.width_mult == 0.75 and det.cfg.num_classes == 7 and det.source == "inferred"
