"""ReXNet: Paddle model, torch reference, channel schedule, FLOPs counter and key mappings.

Parity is checked three ways: against logits produced by the official clovaai/rexnet code (fixtures),
against timm's layout (fixture), and Paddle vs our torch reference with every weight and BatchNorm
statistic random, so a swapped BN field or a wrong activation cannot hide.
"""
import numpy as np
import paddle
import pytest

from conftest import fixture_path
from ppcdnv2.families.rexnet import timm_keys as tk
from ppcdnv2 import preset
from ppcdnv2.families.rexnet.config import ALIASES, PRESETS, ReXNetConfig, channel_plan
from ppcdnv2.families.rexnet.flops import count, summary
from ppcdnv2.families.rexnet.model import ReXNet

torch = pytest.importorskip("torch")
from ppcdnv2.families.rexnet.reference import build_reference  # noqa: E402

TOL = 1e-4
def fixture(name: str):
    return fixture_path(name, "rexnet")


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _torch_state(name):
    return {k: v.numpy() for k, v in torch.load(fixture(name), weights_only=True, map_location="cpu").items()}


def _io(name):
    z = np.load(fixture(name))
    return z["x"], z["y"]


def _torch_logits(model, x):
    model.eval()
    with torch.no_grad():
        return model(torch.from_numpy(x)).numpy()


def _paddle_logits(model, x):
    model.eval()
    with paddle.no_grad():
        return model(paddle.to_tensor(x)).numpy()


def _load_torch(model, state):
    model.load_state_dict({k: torch.from_numpy(np.asarray(v)) for k, v in state.items()}, strict=True)
    return model


def _load_paddle(model, state):
    want = model.state_dict()
    assert sorted(state) == sorted(want)
    for k, v in state.items():
        assert tuple(want[k].shape) == tuple(v.shape), k
    model.set_state_dict({k: paddle.to_tensor(v) for k, v in state.items()})
    return model


def _randomise(model, seed, size):
    """Every weight random; BN statistics calibrated on random images (so activations stay sane
    through 16 blocks), then jittered so that a wrong mean/var pairing changes the logits.

    The SE BatchNorms see one pooled value per image; over iid noise images those barely differ, so a
    calibrated variance there is tiny and would amplify float32 rounding (torch float32 itself then
    drifts 2e-4 from float64). Their variance is set relative to the second moment instead. The
    classifier is scaled so the logits have a spread like the fixtures' (std ~0.3-1)."""
    g = torch.Generator().manual_seed(seed)
    se_bns = {id(m.fc[1]) for m in model.modules() if type(m).__name__ == "SE"}
    classifier = model.output[len(model.output) - 1]
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.Conv2d):
                fan_in = m.weight[0].numel()
                scale = 0.2 if m is classifier else 1.0
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) * scale * (1.0 / fan_in) ** 0.5)
                if m.bias is not None:
                    m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
            elif isinstance(m, torch.nn.BatchNorm2d):
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.2)
                m.reset_running_stats()
                m.momentum = None  # cumulative average over the calibration pass
        model.train()
        model(torch.randn((4, 3, size, size), generator=g))
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.momentum = 0.1
                if id(m) in se_bns:
                    m.running_var.add_(m.running_mean.square())
                std = m.running_var.sqrt()
                m.running_mean.add_(torch.randn(m.running_mean.shape, generator=g) * 0.1 * std)
                m.running_var.mul_(torch.rand(m.running_var.shape, generator=g) * 0.5 + 0.75)
    model.eval()
    return model


def _np_state(model):
    return {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}


# -- (a) the torch reference reproduces the official code's logits --------------------------------------
@pytest.mark.parametrize("name,stem", [("rexnet_100", "rexnet_1.0x_s0"), ("rexnet_lite_100", "rexnet_lite_1.0x_s0")])
def test_reference_reproduces_official_logits(name, stem):
    state = _torch_state(f"{stem}.pth")
    ref = build_reference(PRESETS[name])
    assert list(ref.state_dict()) == list(state)  # same keys, same order as upstream
    _load_torch(ref, state)
    x, y = _io(f"{stem}_io.npz")
    assert np.abs(_torch_logits(ref, x) - y).max() <= TOL


# -- (b) timm layout ------------------------------------------------------------------------------------
def test_timm_fixture_through_mapping():
    from safetensors.numpy import load_file

    cfg = PRESETS["rexnet_100"]
    timm_state = load_file(str(fixture("timm_rexnet_100_s0.safetensors")))
    assert tk.is_timm_layout(timm_state) and not tk.is_upstream_layout(timm_state)
    up = tk.timm_to_upstream(timm_state, cfg)
    assert tk.is_upstream_layout(up) and not tk.is_timm_layout(up)
    x, y = _io("timm_rexnet_100_s0_io.npz")
    assert np.abs(_torch_logits(_load_torch(build_reference(cfg), up), x) - y).max() <= TOL
    back = tk.upstream_to_timm(up, cfg)
    assert sorted(back) == sorted(timm_state)
    for k, v in timm_state.items():
        assert back[k].dtype == v.dtype and back[k].shape == v.shape and np.array_equal(back[k], v), k


def test_timm_mapping_errors():
    cfg = PRESETS["rexnet_100"]
    keys = tk.upstream_keys(cfg)
    fake = {k: np.zeros(1) for k in keys if not k.startswith("output")}
    fake["output.1.weight"] = np.zeros((1000, 1280, 1, 1), np.float32)
    fake["output.1.bias"] = np.zeros(1000, np.float32)
    timm_state = tk.upstream_to_timm(fake, cfg)
    with pytest.raises(KeyError, match="features.99.conv_dw.conv.weight"):
        tk.timm_to_upstream({**timm_state, "features.99.conv_dw.conv.weight": np.zeros(1)}, cfg)
    missing = dict(timm_state)
    del missing["stem.bn.weight"]
    with pytest.raises(KeyError, match="features.1.weight"):
        tk.timm_to_upstream(missing, cfg)
    with pytest.raises(ValueError, match="lite"):
        tk.timm_to_upstream(timm_state, PRESETS["rexnet_lite_100"])
    with pytest.raises(ValueError, match="penultimate"):
        tk.timm_to_upstream(timm_state, ReXNetConfig(width_mult=0.51))


# -- (c) Paddle vs torch ----------------------------------------------------------------------------------
@pytest.mark.parametrize("name,stem", [("rexnet_100", "rexnet_1.0x_s0"), ("rexnet_lite_100", "rexnet_lite_1.0x_s0")])
def test_paddle_reproduces_official_logits(name, stem):
    cfg = PRESETS[name]
    model = _load_paddle(ReXNet(cfg), tk.upstream_to_paddle(_torch_state(f"{stem}.pth"), cfg))
    x, y = _io(f"{stem}_io.npz")
    assert np.abs(_paddle_logits(model, x) - y).max() <= TOL


@pytest.mark.parametrize("cfg,size", [
    (PRESETS["rexnet_100"], 224),
    (PRESETS["rexnet_lite_100"], 224),
    (PRESETS["rexnet_090"], 128),
    (PRESETS["rexnet_130"], 128),
    (PRESETS["rexnet_lite_130"], 128),
    # odd width and depth multiplier (deeper nets drift further: torch float32 alone is ~5e-5 off
    # float64 at depth_mult 1.4, too close to the tolerance for a parity check)
    (ReXNetConfig(width_mult=0.75, depth_mult=0.5, num_classes=37), 96),
], ids=["rexnet_100", "rexnet_lite_100", "rexnet_090", "rexnet_130", "rexnet_lite_130", "w0.75_d0.5"])
def test_paddle_matches_reference_all_random(cfg, size):
    ref = _randomise(build_reference(cfg), seed=7, size=size)
    state = _np_state(ref)
    x = np.random.default_rng(1).standard_normal((2, 3, size, size)).astype(np.float32)
    expected = _torch_logits(ref, x)
    assert expected.std() > 0.05  # the logits carry signal
    model = _load_paddle(ReXNet(cfg), tk.upstream_to_paddle(state, cfg))
    assert np.abs(_paddle_logits(model, x) - expected).max() <= TOL
    # and back: our Paddle weights in upstream names load strictly into torch
    back = tk.paddle_to_upstream({k: v.numpy() for k, v in model.state_dict().items()}, cfg)
    assert list(back) == list(state)
    again = _load_torch(build_reference(cfg), back)
    assert np.abs(_torch_logits(again, x) - expected).max() == 0


# -- (d) FLOPs / params ----------------------------------------------------------------------------------
PUBLISHED = {
    "rexnet_090": "347.7M/4.09M", "rexnet_100": "398.4M/4.80M", "rexnet_130": "662.2M/7.56M",
    "rexnet_150": "875.8M/9.73M", "rexnet_200": "1528.9M/16.37M", "rexnet_220": "1842.5M/19.49M",
    "rexnet_300": "3396.0M/34.71M", "rexnet_lite_100": "406.8M/4.74M", "rexnet_lite_130": "646.4M/6.75M",
    "rexnet_lite_150": "836.4M/8.33M", "rexnet_lite_200": "1498.3M/12.97M",
}


def test_flops_figures():
    assert sorted(PUBLISHED) == sorted(PRESETS)
    for name, cfg in PRESETS.items():
        assert summary(cfg) == PUBLISHED[name], name
    # exact parameter counts of the official fixtures (README: 4,796,873 and 4,740,056)
    assert count(PRESETS["rexnet_100"])[1] == 4_796_873
    assert count(PRESETS["rexnet_lite_100"])[1] == 4_740_056


def _paddle_counts(model):
    trainable = sum(int(np.prod(p.shape)) for p in model.parameters() if p.trainable)
    total = sum(int(np.prod(v.shape)) for v in model.state_dict().values())
    return trainable, total


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_paddle_params_equal_counter(name):
    cfg = PRESETS[name]
    model = ReXNet(cfg)
    trainable, total = _paddle_counts(model)
    assert trainable == count(cfg)[1]
    # the state also holds each BatchNorm's mean and variance, which the counter leaves out
    bn_stats = sum(2 * v.shape[0] for k, v in model.state_dict().items() if k.endswith("._mean"))
    assert total == trainable + bn_stats


def _reference_shapes(cfg):
    return {k: tuple(v.shape) for k, v in build_reference(cfg).state_dict().items()}


def test_flops_other_sizes_and_heads():
    cfg = PRESETS["rexnet_100"]
    macs224, params = count(cfg)
    assert count(cfg, (224, 224)) == (macs224, params)
    # every stride-2 conv (k3, pad 1) maps n to ceil(n / 2): 225x161 costs what 226x162 costs
    assert count(cfg, (225, 161)) == count(cfg, (226, 162))
    assert count(cfg, (225, 161))[0] > count(cfg, (224, 160))[0]
    headless = count(cfg.replace(num_classes=0))
    assert params - headless[1] == 1280 * 1000 + 1000 and macs224 - headless[0] == 1280 * 1000


# -- (e) channel schedule = upstream ----------------------------------------------------------------------
# Block output widths printed by the upstream constructors (clovaai/rexnet HEAD) for these configs.
UPSTREAM_WIDTHS = {
    "rexnet_090": (32, [16, 26, 36, 46, 56, 67, 77, 87, 97, 107, 117, 127, 138, 148, 158, 168], 1152),
    "rexnet_130": (42, [21, 35, 50, 65, 79, 94, 109, 123, 138, 152, 167, 182, 196, 211, 226, 240], 1664),
    "rexnet_200": (64, [32, 54, 77, 100, 122, 144, 167, 190, 212, 234, 257, 280, 302, 324, 347, 370], 2560),
    "rexnet_lite_130": (40, [24, 32, 48, 64, 80, 96, 104, 120, 136, 152, 160, 176, 192, 208, 224, 232], 1664),
}


@pytest.mark.parametrize("name,stem", [("rexnet_100", "rexnet_1.0x_s0"), ("rexnet_lite_100", "rexnet_lite_1.0x_s0")])
def test_plan_matches_fixture_shapes(name, stem):
    state = _torch_state(f"{stem}.pth")
    assert _reference_shapes(PRESETS[name]) == {k: tuple(v.shape) for k, v in state.items()}


@pytest.mark.parametrize("name", sorted(UPSTREAM_WIDTHS))
def test_plan_matches_upstream_widths(name):
    stem, outs, pen = UPSTREAM_WIDTHS[name]
    plan = channel_plan(PRESETS[name])
    assert plan.stem_ch == stem and [b.out_ch for b in plan.blocks] == outs and plan.pen_ch == pen
    assert [b.in_ch for b in plan.blocks] == [stem] + outs[:-1]


def test_plan_rounds_half_to_even():
    # (16 + 2 * 180/16) * 1.0 = 38.5 -> 38 and (16/0.9 + 4 * 11.25) * 0.9 = 56.5 -> 56 upstream (Python round)
    assert channel_plan(PRESETS["rexnet_100"]).blocks[2].out_ch == 38
    assert channel_plan(PRESETS["rexnet_100"]).blocks[10].out_ch == 128
    assert channel_plan(PRESETS["rexnet_090"]).blocks[4].out_ch == 56
    # the SE bottleneck is dw // 12 (floor): 1.0x block 3 expands 38 * 6 = 228 -> 19
    b = channel_plan(PRESETS["rexnet_100"]).blocks[3]
    assert (b.dw_ch, b.se_ch) == (228, 19)


# -- (f) heads and shapes ---------------------------------------------------------------------------------
def test_heads_and_shapes():
    x1 = paddle.randn([1, 3, 64, 64])
    for name in ("rexnet_100", "rexnet_lite_100"):
        cfg = PRESETS[name]
        m = ReXNet(cfg)
        m.eval()
        assert m.form == "train" and m.cfg is cfg and m.num_features == 1280
        assert m(x1).shape == [1, 1000]  # batch 1 stays 2-D
        headless = ReXNet(cfg.replace(num_classes=0))
        headless.eval()
        assert not any(k.startswith("output.") for k in headless.state_dict())
        assert headless(paddle.randn([2, 3, 64, 64])).shape == [2, 1280]
        feats = ReXNet(cfg, features_only=True)
        feats.eval()
        maps = feats(paddle.randn([2, 3, 64, 64]))
        plan = channel_plan(cfg)
        widths = [plan.blocks[i].out_ch for i in plan.feature_blocks]
        assert [list(t.shape) for t in maps] == [[2, c, 64 // s, 64 // s] for c, s in zip(widths, (2, 4, 8, 16, 32))]
        assert [f["reduction"] for f in feats.feature_info] == [2, 4, 8, 16, 32]
        assert [f["num_chs"] for f in feats.feature_info] == widths
        # the backbone keys are a subset of the full model's: classification weights load into it
        assert set(feats.state_dict()) < set(m.state_dict())
    assert [channel_plan(PRESETS["rexnet_100"]).blocks[i].out_ch
            for i in channel_plan(PRESETS["rexnet_100"]).feature_blocks] == [16, 38, 61, 128, 185]
    with pytest.raises(ValueError, match="form"):
        ReXNet(PRESETS["rexnet_100"], form="converted")


def test_config_roundtrip_and_presets():
    cfg = PRESETS["rexnet_lite_130"]
    assert cfg.final_ch == 164 and PRESETS["rexnet_100"].final_ch == 180
    assert ReXNetConfig.from_dict(cfg.to_dict()) == cfg
    assert cfg.replace(num_classes=10).num_classes == 10 and cfg.input_size == 224
    assert ReXNetConfig.family_title == "ReXNet"
    assert PRESETS["rexnet_100"].replace(variant="lite") == PRESETS["rexnet_lite_100"]
    with pytest.raises(ValueError, match="nope"):
        cfg.replace(nope=1)
    with pytest.raises(ValueError, match="bogus"):
        ReXNetConfig.from_dict({**cfg.to_dict(), "bogus": 1})
    with pytest.raises(ValueError, match="depth"):
        ReXNetConfig(variant="lite", depth_mult=2.0)
    with pytest.raises(ValueError, match="variant"):
        ReXNetConfig(variant="v2")
    for alias, ours in ALIASES.items():
        assert preset(alias) == PRESETS[ours]


# -- (g) ppim interop -------------------------------------------------------------------------------------
def test_ppim_exchange():
    ppim = pytest.importorskip("ppim")
    cfg = PRESETS["rexnet_100"]
    ours_state = tk.upstream_to_paddle(_torch_state("rexnet_1.0x_s0.pth"), cfg)
    ours = _load_paddle(ReXNet(cfg), ours_state)
    x, _ = _io("rexnet_1.0x_s0_io.npz")  # batch 2: ppim squeezes its output, batch 1 would become 1-D
    expected = _paddle_logits(ours, x)
    pp = ppim.rexnet_1_0(pretrained=False)
    assert list(pp.state_dict()) == tk.paddle_keys(cfg)
    _load_paddle(pp, tk.ours_to_ppim(ours_state, cfg))
    assert np.abs(_paddle_logits(pp, x) - expected).max() <= TOL
    back = tk.ppim_to_ours({k: v.numpy() for k, v in pp.state_dict().items()}, cfg)
    assert all(np.array_equal(back[k], ours_state[k]) for k in ours_state)
    with pytest.raises(ValueError, match="lite"):
        tk.ours_to_ppim(ours_state, PRESETS["rexnet_lite_100"])
    with pytest.raises(KeyError, match="extra.weight"):
        tk.ppim_to_ours({**ours_state, "extra.weight": np.zeros(1)}, cfg)
