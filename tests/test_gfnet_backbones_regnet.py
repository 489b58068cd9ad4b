"""GFNet's RegNetY backbones (600MF, 800MF, 1.6GF): width/depth generation against the fixtures' checkpoint
shapes, and the torch reference and the Paddle port against the official code's per-step outputs (glance
step 0 with ``model_prime`` and its own ``fc``, focus step 1 with ``model`` on the patch at ``coords[0]``)."""
import functools
import re

import numpy as np
import paddle
import pytest

from gfnet_fixtures import description, io, weights
from ppcdnv2.convert.keymap import torch_to_paddle_state
from ppcdnv2.families.gfnet.backbones import build_backbone
from ppcdnv2.families.gfnet.backbones.regnet import CFG_FILES, REGNETY, block_widths, se_width, stage_plan
from ppcdnv2.weights import load_state_dict

torch = pytest.importorskip("torch")
from ppcdnv2.families.gfnet.reference import build_reference_backbone  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TOL = 1e-4
CONFIGS = {"regnety_600m_p96_t5": "regnety_600m", "regnety_800m_p96_t5": "regnety_800m",
           "regnety_1.6g_p96_t5": "regnety_1.6g"}
STEP_COMPONENT = {0: "model_prime_state_dict", 1: "model_state_dict"}


def rel(got, want) -> float:
    """Max abs difference relative to the scale (std) of the expected values."""
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    assert got.shape == want.shape, (got.shape, want.shape)
    return float(np.abs(got - want).max() / want.std())


@functools.lru_cache(maxsize=None)
def _weights(cfg, component):
    return weights(cfg, component)


def _step_input(cfg, step):
    """Step 0: the glance image; step t >= 1: the P x P patch of ``x`` at ``coords[t - 1]``."""
    data = io(cfg)
    if step == 0:
        return data["prime"]
    p = description(cfg)["config"]["patch_size"]
    c = data["coords"][step - 1]
    return np.ascontiguousarray(np.stack([data["x"][i, :, r:r + p, q:q + p] for i, (r, q) in enumerate(c)]))


def _fixture_stages(cfg):
    """(width, depth, group width, [SE widths]) per stage, read from the checkpoint's key shapes."""
    stages = {}
    for key, shape, _, _ in description(cfg)["state_dicts"]["model_prime_state_dict"]:
        m = re.fullmatch(r"module\.s(\d+)\.b(\d+)\.f\.(b|se\.f_ex\.0)\.weight", key)
        if m:
            st = stages.setdefault(int(m.group(1)), {"blocks": set(), "se": []})
            st["blocks"].add(int(m.group(2)))
            if m.group(3) == "b":
                st["width"], st["group_w"] = shape[0], shape[1]
            else:
                st["se"].append(shape[0])
    return [(s["width"], len(s["blocks"]), s["group_w"], s["se"]) for _, s in sorted(stages.items())]


def _torch_model(cfg, component):
    model = build_reference_backbone(CONFIGS[cfg]).eval()
    model.load_state_dict({k: torch.from_numpy(v) for k, v in _weights(cfg, component).items()}, strict=True)
    return model


def _paddle_model(cfg, component):
    model = build_backbone(CONFIGS[cfg])
    load_state_dict(model, torch_to_paddle_state(_weights(cfg, component), model), strict=True)
    model.eval()
    return model


def _run_torch(model, x):
    with torch.no_grad():
        vec, fmap = model(torch.from_numpy(x))
        return vec.numpy(), fmap.numpy(), model.classify(vec).numpy()


def _run_paddle(model, x):
    with paddle.no_grad():
        vec, fmap = model(paddle.to_tensor(x))
        return vec.numpy(), fmap.numpy(), model.classify(vec).numpy()


# --- architecture ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("cfg", CONFIGS)
def test_generated_stages_match_checkpoint(cfg):
    name, conf = CONFIGS[cfg], description(cfg)["config"]
    assert conf["cfg_file"].endswith("/" + CFG_FILES[name])
    params = REGNETY[name]
    plan = stage_plan(params)
    ours, w_in = [], params.stem_w
    for st in plan:
        ours.append((st.width, st.depth, st.group_w,
                     [se_width(w_in if j == 0 else st.width, params.se_ratio) for j in range(st.depth)]))
        w_in = st.width
    assert ours == _fixture_stages(cfg)
    assert sum(st.depth for st in plan) == params.depth
    assert plan[-1].width == conf["feature_num"] == conf["feature_map_channels"]


def test_block_widths_and_half_to_even_quantisation():
    """The raw per-block widths before the group-width adjustment, and the adjustment's half-to-even
    rounding (800MF: 776 = 48.5 x 16 -> 768 and 56 = 3.5 x 16 -> 64; half-up would give 784)."""
    p = REGNETY["regnety_800m"]
    raw = block_widths(p.w_a, p.w_0, p.w_m, p.depth)
    assert raw == [56] + [136] * 3 + [320] * 8 + [776] * 2
    assert [st.width for st in stage_plan(p)] == [64, 128, 320, 768]
    p = REGNETY["regnety_1.6g"]
    assert sorted(set(block_widths(p.w_a, p.w_0, p.w_m, p.depth))) == [48, 128, 336, 896]
    assert [st.width for st in stage_plan(p)] == [48, 120, 336, 888]


@pytest.mark.parametrize("cfg", CONFIGS)
def test_layouts_match_checkpoint(cfg):
    """Torch reference: upstream's keys in upstream's order with its shapes; Paddle: every key and shape
    after the generic conversion; both expose feature_num / fmap_channels."""
    keys = description(cfg)["state_dicts"]["model_prime_state_dict"]
    expected = [(k[len("module."):], tuple(s)) for k, s, _, _ in keys]
    ref = build_reference_backbone(CONFIGS[cfg])
    assert [(k, tuple(v.shape)) for k, v in ref.state_dict().items()] == expected
    model = build_backbone(CONFIGS[cfg])
    conv = torch_to_paddle_state({k: np.zeros(s, np.float32) for k, s in expected}, model)
    own = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert {k: tuple(v.shape) for k, v in conv.items()} == own
    conf = description(cfg)["config"]
    for m in (ref, model):
        assert m.feature_num == conf["feature_num"] and m.fmap_channels == conf["feature_map_channels"]


def test_input_size_agnostic_and_fc_outside_forward():
    """224 (the full image) gives a 7x7 map, 96 a 3x3 one; Paddle equals the reference at both sizes; the
    forward pass does not touch ``fc``."""
    cfg = "regnety_600m_p96_t5"
    ref, model = _torch_model(cfg, "model_state_dict"), _paddle_model(cfg, "model_state_dict")
    x224 = io(cfg)["x"]
    for x, k in ((x224, 7), (x224[:, :, 10:106, 20:116].copy(), 3), (x224[:, :, :67, :131].copy(), None)):
        tv, tf, tl = _run_torch(ref, x)
        pv, pf, pl = _run_paddle(model, x)
        if k is not None:
            assert tf.shape == (2, 608, k, k)
        assert np.allclose(tv, tf.mean(axis=(2, 3)), rtol=1e-5, atol=1e-6)
        assert rel(pv, tv) < TOL and rel(pf, tf) < TOL and rel(pl, tl) < TOL
    before = _run_paddle(model, x224)[:2]
    model.fc.weight.set_value(np.zeros(model.fc.weight.shape, np.float32))
    after = _run_paddle(model, x224)
    assert all(np.array_equal(a, b) for a, b in zip(before, after[:2]))
    assert np.allclose(after[2], model.fc.bias.numpy()[None], atol=0)  # fc = Linear with bias, used by classify


# --- parity with the official code ----------------------------------------------------------------------
def _check(cfg, step, run, build):
    data = io(cfg)
    vec, fmap, logits = run(build(cfg, STEP_COMPONENT[step]), _step_input(cfg, step))
    errs = {"features": rel(vec, data["features"][step]), "fmaps": rel(fmap, data["fmaps"][step])}
    if step == 0:  # RegNet's step-0 prediction is the backbone's own fc on the glance features
        errs["logits"] = rel(logits, data["logits"][0])
    assert all(e < TOL for e in errs.values()), errs
    return errs


@pytest.mark.parametrize("step", [0, 1])
@pytest.mark.parametrize("cfg", CONFIGS)
def test_reference_matches_official(cfg, step):
    _check(cfg, step, _run_torch, _torch_model)


@pytest.mark.parametrize("step", [0, 1])
@pytest.mark.parametrize("cfg", CONFIGS)
def test_paddle_matches_official(cfg, step):
    _check(cfg, step, _run_paddle, _paddle_model)


def test_classify_on_fixture_features_is_step0_logits():
    """``classify`` alone on the official step-0 features (not our own) gives the official step-0 logits."""
    for cfg in CONFIGS:
        feats, want = io(cfg)["features"][0], io(cfg)["logits"][0]
        with torch.no_grad():
            got_t = _torch_model(cfg, "model_prime_state_dict").classify(torch.from_numpy(feats)).numpy()
        with paddle.no_grad():
            got_p = _paddle_model(cfg, "model_prime_state_dict").classify(paddle.to_tensor(feats)).numpy()
        assert rel(got_t, want) < TOL and rel(got_p, want) < TOL
