"""GFNet core (no real backbones): configuration presets, the recurrent classifier, the patch policy, glance
and patch operators, the inference loop with stub backbones, early exit, and the budgeted classification,
for every released configuration, against the official code's outputs (``../shared/fixtures/gfnet``).

Tolerances (the fixtures' README): logits within 1e-4 of the per-step logit std; policy outputs within
1e-4 (linear state encoder, ResNet/DenseNet: float32 noise of the 18432/32768-wide first layer; even a
float64 evaluation is 2.7e-5 of the std away from the fixture) or 2e-5 (conv encoder) of the array's std;
coordinates, thresholds and accuracies exactly; expected multiply-adds to 1e-6 relative.
"""
import functools

import numpy as np
import paddle
import pytest

from gfnet_fixtures import CONFIGS, budget, description, io, rule, weights
from ppcdnv2.convert.keymap import paddle_to_torch_state
from ppcdnv2.families.gfnet import budget as gb
from ppcdnv2.families.gfnet.config import PRESETS, GFNetConfig
from ppcdnv2.families.gfnet.model import (ActorCritic, FullLayer, GFNet, GRUStep, crop_patches, get_patch, get_prime,
                                          patch_coords)

pytestmark = pytest.mark.usefixtures("one_torch_thread")

LOGIT_TOL = 1e-4
# the quick subset keeps one configuration per classifier/policy kind (GRU + linear policy: DenseNet-121;
# GRU + conv policy: RegNet; cascade: MobileNetV3, EfficientNet); the rest (ResNet-50's 150-270 MB
# linear encoders among them) run in the full suite
QUICK = {"densenet121_p96_t5", "regnety_600m_p96_t5", "mobilenetv3_large_100_p96_t3", "efficientnet_b2_p128_t4"}
CASES = [n if n in QUICK else pytest.param(n, marks=pytest.mark.slow) for n in CONFIGS]


def rel(got, want, scale=None) -> float:
    """max |got - want| over the reference's std (or ``scale``)."""
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    assert got.shape == want.shape, (got.shape, want.shape)
    s = float(want.std()) if scale is None else float(scale)
    return float(np.abs(got - want).max() / s)


def policy_tol(cfg) -> float:
    return 2e-5 if cfg.policy_conv else 1e-4


# -- per-configuration data, grouped: a module-scoped parametrised fixture keeps one config in memory --
class Case:
    def __init__(self, name):
        self.name, self.cfg, self.io = name, PRESETS[name], io(name)

    @functools.cached_property
    def fc(self):
        return weights(self.name, "fc")

    @functools.cached_property
    def policy(self):
        return weights(self.name, "policy")

    @functools.cached_property
    def head(self):
        """The glance backbone's own classifier (step-0 logits of RegNet / MobileNetV3 / EfficientNet)."""
        desc = description(self.name)
        out = {}
        for key, shape, _, _ in desc["state_dicts"]["model_prime_state_dict"]:
            if key in ("module.fc.weight", "module.fc.bias", "module.classifier.weight", "module.classifier.bias"):
                out[key.split(".")[-1]] = rule().weight("model_prime_state_dict", key, tuple(shape), desc["seed"])
        return out

    @functools.cached_property
    def fields(self):
        return description(self.name)["checkpoint_fields"]

    def expected_patches(self, t):
        """Upstream's crops of the fixture batch at step t >= 1 (from the stored coordinates)."""
        x, p = self.io["x"], self.cfg.patch_size
        return np.stack([x[i, :, r:r + p, c:c + p] for i, (r, c) in enumerate(self.io["coords"][t - 1])])


@pytest.fixture(scope="module", params=CASES)
def case(request):
    return Case(request.param)


# -- stub backbones: the fixture's features / maps, looked up by the input they are given -------------
class _Lookup:
    """Step 0 (glance): rows matched to the stored glance images (nearest); step t >= 1: rows must equal one
    of upstream's patches exactly (so the crop, its orientation and the early-exit gather are checked)."""

    def __init__(self, case, glance):
        self.case, self.glance, self.calls = case, glance, 0
        self.seen = []
        self.partner = None  # the glance stub restarts the local stub's step count (a new batch)

    def rows(self, x):
        if self.glance:
            if self.partner is not None:
                self.partner.calls, self.partner.seen = 0, []
            want, t = self.case.io["prime"], 0
            d = np.abs(x[:, None] - want[None]).reshape(x.shape[0], want.shape[0], -1).max(-1)
            idx = d.argmin(1)
            assert (d[np.arange(x.shape[0]), idx] <= 1e-5 * want.std()).all(), d
        else:
            self.calls += 1
            t = self.calls
            want = self.case.expected_patches(t)
            idx = []
            for row in x:
                hits = [i for i in range(want.shape[0]) if np.array_equal(row, want[i])]
                assert hits, f"step {t}: the patch equals none of upstream's crops"
                idx.append(hits[0])
            idx = np.asarray(idx)
        self.seen.append((t, idx.tolist()))
        return self.case.io["features"][t][idx], self.case.io["fmaps"][t][idx]


class PaddleStub(paddle.nn.Layer):
    def __init__(self, case, glance):
        super().__init__()
        self.lookup = _Lookup(case, glance)
        self.feature_num, self.fmap_channels = case.cfg.feature_num, case.cfg.fmap_channels
        self.head = {k: paddle.to_tensor(v) for k, v in case.head.items()}

    def forward(self, x):
        vec, fmap = self.lookup.rows(x.numpy())
        return paddle.to_tensor(vec), paddle.to_tensor(fmap)

    def classify(self, vec):
        return paddle.matmul(vec, self.head["weight"], transpose_y=True) + self.head["bias"]


def torch_stub(case, glance):
    import torch

    class TorchStub(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lookup = _Lookup(case, glance)

        def forward(self, x):
            vec, fmap = self.lookup.rows(x.numpy())
            return torch.from_numpy(vec), torch.from_numpy(fmap)

        def classify(self, vec):
            return torch.nn.functional.linear(vec, torch.from_numpy(case.head["weight"]),
                                              torch.from_numpy(case.head["bias"]))

    return TorchStub()


def paddle_gfnet(case, **kw):
    prime, local = PaddleStub(case, True), PaddleStub(case, False)
    prime.lookup.partner = local.lookup
    m = GFNet(case.cfg, backbones=(prime, local))
    m.load_components(fc=case.fc, policy=case.policy, **kw)
    m.eval()
    return m


def torch_gfnet(case):
    from ppcdnv2.families.gfnet.reference.gfnet import GFNetReference

    prime, local = torch_stub(case, True), torch_stub(case, False)
    prime.lookup.partner = local.lookup
    m = GFNetReference(case.cfg, backbones=(prime, local))
    m.load_components(fc=case.fc, policy=case.policy,
                      thresholds=np.asarray(case.fields["dynamic_threshold"]["values"], np.float32),
                      flops=case.fields["flops"])
    return m.eval()


def step_logit_errors(logits, case, steps):
    return [rel(logits[t], case.io["logits"][t], case.io["logits"][t].std()) for t in steps]


# -- configuration -----------------------------------------------------------------------------------
def test_presets_are_the_fixture_configs():
    from ppcdnv2.families.gfnet.config import RELEASED

    assert sorted(RELEASED) == sorted(CONFIGS)  # the other presets are ours (GFNet on CondenseNetV2)
    assert sorted(k for k in PRESETS if not k.startswith("cdnv2_")) == sorted(CONFIGS)
    for name in CONFIGS:
        want, cfg = description(name)["config"], PRESETS[name]
        assert cfg.name == name
        got = dict(model_name=cfg.backbone, patch_size=cfg.patch_size, T=cfg.T, image_size=cfg.image_size,
                   crop_pct=cfg.crop_pct, dataset_interpolation=cfg.dataset_interpolation.upper(),
                   prime_interpolation=cfg.prime_interpolation, prime_align_corners=True,
                   feature_num=cfg.feature_num, feature_map_channels=cfg.fmap_channels, fc_rnn=cfg.fc_rnn,
                   fc_hidden_dim=cfg.fc_hidden, policy_conv=cfg.policy_conv,
                   policy_hidden_dim=cfg.policy_hidden_dim, state_dim=cfg.state_dim,
                   step0_logits="fc" if cfg.step0 == "fc" else
                   ("model_prime.module.fc" if cfg.backbone.startswith("regnet") else "model_prime.module.classifier"))
        assert got == {k: want[k] for k in got}, name
        assert len(description(name)["checkpoint_fields"]["flops"]) == cfg.T


def test_config_round_trip_and_validation():
    cfg = PRESETS["efficientnet_b3_p144_t4"]
    assert GFNetConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="unknown"):
        GFNetConfig.from_dict({**cfg.to_dict(), "hidden": 3})
    with pytest.raises(ValueError, match="unknown"):
        cfg.replace(patch=3)
    assert cfg.replace(patch_size=96).state_dim == 1536 * 9  # re-derived
    with pytest.raises(ValueError, match="state_dim"):
        cfg.replace(state_dim=5)
    with pytest.raises(ValueError, match="step0"):
        cfg.replace(step0="fc")  # the cascade has no step-0 prediction
    with pytest.raises(ValueError, match="<= 5"):
        cfg.replace(T=6)
    with pytest.raises(ValueError):
        PRESETS["resnet50_p96_t5"].replace(prime_interpolation="nearest")
    with pytest.raises(Exception):
        cfg.T = 3  # frozen


def test_state_dict_keys_map_to_upstream():
    """fc / policy keys and shapes equal upstream's after the generic renames (no GRU rename at all)."""
    for name in ("resnet50_p96_t5", "regnety_600m_p96_t5", "mobilenetv3_large_125_p128_t3"):
        cfg, desc = PRESETS[name], description(name)
        for comp, layer in (("fc", FullLayer(cfg.feature_num, cfg.fc_hidden, cfg.fc_rnn)),
                            ("policy", ActorCritic(cfg.fmap_channels, cfg.state_dim, cfg.policy_hidden_dim,
                                                   cfg.policy_conv))):
            mapped = paddle_to_torch_state({k: v.numpy() for k, v in layer.state_dict().items()}, layer)
            assert [(k, list(v.shape)) for k, v in mapped.items()] == \
                   [(k, s) for k, s, _, _ in desc["state_dicts"][comp]], (name, comp)


def test_gfnet_buffers_are_persistable():
    cfg = PRESETS["mobilenetv3_large_100_p96_t3"]
    m = GFNet(cfg, backbones=(paddle.nn.Identity(), paddle.nn.Identity()))
    sd = m.state_dict()
    assert tuple(sd["thresholds"].shape) == (39, 3) and sd["thresholds"].dtype == paddle.float32
    assert tuple(sd["flops"].shape) == (3,)
    with pytest.raises(ValueError, match="float32"):
        m.set_budget_data(thresholds=np.zeros([39, 3]))
    with pytest.raises(ValueError, match="thresholds"):
        m.predict(paddle.zeros([1, 3, 224, 224]), budget=3)


# -- operators ---------------------------------------------------------------------------------------
def test_gru_step_equals_torch_gru():
    import torch

    rng = np.random.RandomState(0)
    g = torch.nn.GRU(6, 5)
    with torch.no_grad():
        for p in g.parameters():
            p.copy_(torch.from_numpy(rng.uniform(-1, 1, p.shape).astype(np.float32)))
    cell = GRUStep(6, 5)
    cell.set_state_dict({k: paddle.to_tensor(v.detach().numpy()) for k, v in g.state_dict().items()})
    assert sorted(cell.state_dict()) == sorted(g.state_dict())
    xs = rng.randn(3, 4, 6).astype(np.float32)
    want, _ = g(torch.from_numpy(xs))
    h = None
    for t in range(3):
        h = cell(paddle.to_tensor(xs[t]), h)
        np.testing.assert_allclose(h.numpy(), want[t].detach().numpy(), rtol=0, atol=2e-6)


def test_patch_orientation_and_bounds():
    w, p = 10, 4
    img = (np.arange(w)[:, None] * 100 + np.arange(w)[None, :]).astype(np.float32)  # value = 100*row + col
    x = paddle.to_tensor(np.broadcast_to(img, (2, 3, w, w)).copy())
    action = paddle.to_tensor(np.array([[0.5, 0.1], [0.99, 0.0]], np.float32))
    coords = patch_coords(action, w, p).numpy()
    assert coords.dtype == np.int32 and coords.tolist() == [[3, 0], [5, 0]]
    patches = get_patch(x, action, p).numpy()
    assert patches[0, 0, 0, 0] == 300 and patches[0, 0, 0, 1] == 301 and patches[0, 0, 1, 0] == 400
    assert patches[1, 2, 3, 3] == 803
    with pytest.raises(ValueError, match="outside"):
        crop_patches(x, np.array([[7, 0], [0, 0]]), p)


def test_glance(case):
    pr = get_prime(paddle.to_tensor(case.io["x"]), case.cfg.patch_size, case.cfg.prime_interpolation).numpy()
    assert rel(pr, case.io["prime"]) < 1e-5


def test_coords_from_stored_actions(case):
    got = patch_coords(paddle.to_tensor(case.io["actions"].reshape(-1, 2)), case.cfg.image_size,
                       case.cfg.patch_size).numpy().reshape(case.io["coords"].shape)
    np.testing.assert_array_equal(got, case.io["coords"])
    x = paddle.to_tensor(case.io["x"])
    for t in range(1, case.cfg.T):
        np.testing.assert_array_equal(crop_patches(x, case.io["coords"][t - 1], case.cfg.patch_size).numpy(),
                                      case.expected_patches(t))


# -- classifier and policy from the stored features / maps -------------------------------------------
def _fc_steps(cfg):
    return range(0 if cfg.step0 == "fc" else 1, cfg.T)


def test_fc_paddle(case):
    cfg = case.cfg
    m = GFNet(cfg, backbones=(paddle.nn.Identity(), paddle.nn.Identity())).load_components(fc=case.fc)
    state, logits = None, []
    with paddle.no_grad():
        for t in range(cfg.T):
            lo, state = m.fc(paddle.to_tensor(case.io["features"][t]), state)
            assert (lo is None) == (t == 0 and not cfg.fc_rnn)
            logits.append(None if lo is None else lo.numpy())
    errs = step_logit_errors(logits, case, _fc_steps(cfg))
    assert max(errs) < LOGIT_TOL, errs


def test_fc_torch_reference(case):
    import torch
    from ppcdnv2.families.gfnet.reference.gfnet import Full_layer

    cfg = case.cfg
    fc = Full_layer(cfg.feature_num, cfg.fc_hidden, cfg.fc_rnn)
    fc.load_state_dict({k: torch.from_numpy(v) for k, v in case.fc.items()}, strict=True)
    with torch.no_grad():
        logits = [fc(torch.from_numpy(case.io["features"][t]), restart=t == 0) for t in range(cfg.T)]
    logits = [None if lo is None else lo.numpy() for lo in logits]
    errs = step_logit_errors(logits, case, _fc_steps(cfg))
    assert max(errs) < LOGIT_TOL, errs


def test_policy_paddle(case):
    cfg = case.cfg
    m = GFNet(cfg, backbones=(paddle.nn.Identity(), paddle.nn.Identity())).load_components(policy=case.policy)
    h, hs, vs, acts = None, [], [], []
    with paddle.no_grad():
        for t in range(1, cfg.T):  # the hidden state restarts at step 1
            a, h = m.policy(paddle.to_tensor(case.io["fmaps"][t - 1]), h)
            hs.append(h.numpy()), vs.append(m.policy.value(h).numpy()), acts.append(a.numpy())
            np.testing.assert_array_equal(patch_coords(a, cfg.image_size, cfg.patch_size).numpy(),
                                          case.io["coords"][t - 1])
    tol = policy_tol(cfg)
    for got, key in ((hs, "policy_hidden"), (vs, "values"), (acts, "actions")):
        assert rel(np.stack(got), case.io[key]) < tol, (key, rel(np.stack(got), case.io[key]))


def test_policy_torch_reference(case):
    import torch
    from ppcdnv2.families.gfnet.reference.gfnet import ActorCritic as RefActorCritic

    cfg = case.cfg
    pol = RefActorCritic(cfg.fmap_channels, cfg.state_dim, cfg.policy_hidden_dim, cfg.policy_conv)
    pol.load_state_dict({k: torch.from_numpy(v) for k, v in case.policy.items()}, strict=True)
    h, outs, acts = None, [], []
    with torch.no_grad():
        for t in range(1, cfg.T):
            a, out, h = pol.act(torch.from_numpy(case.io["fmaps"][t - 1]), h)
            outs.append(out.numpy()), acts.append(a.numpy())
    assert rel(np.stack(outs), case.io["policy_hidden"]) < policy_tol(cfg)
    assert rel(np.stack(acts), case.io["actions"]) < policy_tol(cfg)


# -- the whole loop with stub backbones --------------------------------------------------------------
def _check_run(r, case):
    cfg, ref = case.cfg, case.io
    logits = np.asarray(r.logits)
    assert logits.shape == (cfg.T, 2, 1000)
    errs = step_logit_errors(logits, case, range(cfg.T))
    assert max(errs) < LOGIT_TOL, errs
    np.testing.assert_array_equal(np.asarray(r.coords), ref["coords"])
    assert rel(np.asarray(r.actions), ref["actions"]) < policy_tol(cfg)
    assert rel(np.asarray(r.policy_hidden), ref["policy_hidden"]) < policy_tol(cfg)
    np.testing.assert_array_equal(np.asarray(r.features), ref["features"])
    assert len(r.fmaps) == cfg.T
    assert rel(np.asarray(r.prime), ref["prime"]) < 1e-5


def test_glance_and_focus_paddle(case):
    m = paddle_gfnet(case)
    with paddle.no_grad():
        r = m.glance_and_focus(paddle.to_tensor(case.io["x"]))
    _check_run(r.__class__(**{k: (v.numpy() if isinstance(v, paddle.Tensor) else v) for k, v in vars(r).items()}),
               case)
    assert r.coords.dtype == paddle.int32
    np.testing.assert_allclose(r.softmax.numpy(), case.io["softmax"], rtol=0, atol=1e-5)
    # fewer steps: a prefix of the same run
    with paddle.no_grad():
        r2 = m.glance_and_focus(paddle.to_tensor(case.io["x"]), steps=2)
    assert tuple(r2.logits.shape) == (2, 2, 1000) and tuple(r2.coords.shape) == (1, 2, 2)
    np.testing.assert_array_equal(r2.coords.numpy(), case.io["coords"][:1])


def test_glance_and_focus_torch_reference(case):
    import torch

    m = torch_gfnet(case)
    r = m.glance_and_focus(torch.from_numpy(case.io["x"]))
    _check_run(r.__class__(**{k: (v.numpy() if isinstance(v, torch.Tensor) else v) for k, v in vars(r).items()}),
               case)


def _mixed_exit_thresholds(case):
    """Thresholds under which one image exits at a middle step ``s`` and the other runs to the last step:
    ``(thresholds, s, the image that exits)``."""
    sm = case.io["softmax"].max(axis=2).astype(np.float64)  # [T, B]
    gaps = [abs(sm[t, 0] - sm[t, 1]) / sm[t].max() for t in range(1, case.cfg.T - 1)]
    s = 1 + int(np.argmax(gaps))
    assert max(gaps) > 1e-3, "the two images' confidences are too close to split"
    thr = np.full([case.cfg.T], 2.0, np.float32)  # a softmax never reaches 2
    thr[s] = sm[s].mean()
    return thr, s, int(sm[s].argmax())


@pytest.mark.parametrize("engine", ["paddle", "torch"])
def test_predict_early_exit(case, engine):
    import torch

    cfg, ref = case.cfg, case.io
    thr, s, a = _mixed_exit_thresholds(case)
    flops = np.asarray(case.fields["flops"], np.float64)
    if engine == "paddle":
        m = paddle_gfnet(case, thresholds=np.asarray(case.fields["dynamic_threshold"]["values"], np.float32),
                         flops=flops)
        run = lambda **kw: m.predict(paddle.to_tensor(ref["x"]), **kw)
    else:
        m = torch_gfnet(case)
        run = lambda **kw: m.predict(torch.from_numpy(ref["x"]), **kw)
    res = run(thresholds=thr)
    b = 1 - a
    assert res.exit_step.tolist() == [s if i == a else cfg.T - 1 for i in range(2)]
    for i in range(2):
        t = res.exit_step[i]
        assert res.classes[i] == ref["logits"][t, i].argmax()
        assert abs(res.probs[i] - ref["softmax"][t, i].max()) < 1e-5
        assert res.flops[i] == flops[t]
        np.testing.assert_array_equal(res.coords[i], ref["coords"][:t, i])
    # after step s only image b ran on: the local stub saw batches of one
    seen = m.model.lookup.seen
    assert seen == [(t, [0, 1]) for t in range(1, s + 1)] + [(t, [b]) for t in range(s + 1, cfg.T)], seen
    # stored thresholds of a budget: the exit rule of dynamic_evaluate on the stored softmax
    stored = np.asarray(case.fields["dynamic_threshold"]["values"], np.float32)
    for p in (1, 20, 39):
        sm = ref["softmax"].max(axis=2)
        if np.abs(sm - stored[p - 1][:, None]).min() < 1e-5:
            continue  # too close to a threshold to be decided by the stored softmax
        want = [(sm[:, i] >= stored[p - 1]).argmax() for i in range(2)]
        assert run(budget=p).exit_step.tolist() == want, p
    full = run()
    assert full.exit_step.tolist() == [cfg.T - 1] * 2


# -- budgeted classification -------------------------------------------------------------------------
def test_exit_distribution(case):
    bd = budget(case.name)
    n = bd["train_softmax"].shape[1]
    probs = np.stack([gb.exit_distribution(p, case.cfg.T) for p in range(1, 40)])
    assert probs.dtype == np.float32
    ulps = np.abs(probs.view(np.int32).astype(np.int64) - bd["probs"].view(np.int32))
    assert ulps.max() <= 4, ulps.max()  # torch's float32 log/exp are not correctly rounded (README)
    out_n = np.floor(np.float32(n) * probs[:, :-1])
    np.testing.assert_array_equal(out_n, bd["out_n"])


def test_find_thresholds_and_evaluate(case):
    bd = budget(case.name)
    thr = np.stack([gb.find_thresholds(bd["train_softmax"], p) for p in range(1, 40)])
    assert thr.dtype == np.float32
    np.testing.assert_array_equal(thr.view(np.int32), bd["thresholds"].view(np.int32))  # bit for bit
    stored = np.asarray(case.fields["dynamic_threshold"]["values"], np.float32)
    np.testing.assert_array_equal(thr, stored)
    accs, costs = zip(*(gb.evaluate_budget(bd["val_softmax"], bd["val_targets"], thr[p], bd["flops"])
                        for p in range(39)))
    np.testing.assert_array_equal(np.asarray(accs), bd["accuracy"])
    np.testing.assert_allclose(np.asarray(costs), bd["expected_flops"], rtol=1e-6, atol=0)
    np.testing.assert_allclose(gb.anytime_accuracy(bd["val_softmax"], bd["val_targets"]), bd["anytime"],
                               rtol=0, atol=1e-9)
    t2, c2, a2 = gb.budget_curve(bd["train_softmax"], bd["val_softmax"], bd["val_targets"], bd["flops"])
    np.testing.assert_array_equal(t2, thr)
    assert list(a2) == list(accs) and list(c2) == list(costs)


def test_budget_rules_on_small_cases():
    # dynamic_evaluate exits on equality (>=), and a sample that never passes counts in n only
    sm = np.zeros([2, 2, 3], np.float32)
    sm[0, 0, 1], sm[0, 1, 2], sm[1, 0, 1], sm[1, 1, 0] = 0.5, 0.25, 0.75, 0.5
    acc, cost = gb.evaluate_budget(sm, np.array([1, 0]), np.array([0.5, -1e8], np.float32), [10.0, 30.0])
    assert (acc, cost) == (100.0, 20.0)
    acc, cost = gb.evaluate_budget(sm, np.array([1, 0]), np.array([0.6, 0.6], np.float32), [10.0, 30.0])
    assert (acc, cost) == (50.0, 15.0)  # sample 1 never exits: neither correct nor charged
    # dynamic_find_threshold: the out_n-th remaining sample; 1e8 when out_n is 0; the last is -1e8
    rng = np.random.RandomState(0)
    train = rng.uniform(0, 1, [3, 10, 4]).astype(np.float32)
    thr = gb.find_thresholds(train, [0.3, 0.0, 0.7])
    m = train.max(2)
    assert thr[0] == np.sort(m[0])[::-1][2] and thr[1] == np.float32(1e8) and thr[2] == np.float32(-1e8)
    thr = gb.find_thresholds(train, [0.3, 0.5, 0.2])
    remaining = m[1][m[0] < thr[0]]
    assert thr[1] == np.sort(remaining)[::-1][4]


# -- early exit on a random network: predict agrees with the full run for any exit pattern -----------
TINY = GFNetConfig(backbone="tiny", patch_size=40, T=4, image_size=232, prime_interpolation="bilinear",
                   feature_num=12, fmap_channels=6, fc_rnn=True, fc_hidden=16, policy_conv=True,
                   policy_hidden_dim=8, step0="backbone", num_classes=7)


LOGIT_GAIN = 1.0


class TinyPaddleBackbone(paddle.nn.Layer):
    def __init__(self, cfg):
        super().__init__()
        self.feature_num, self.fmap_channels, k = cfg.feature_num, cfg.fmap_channels, cfg.fmap_side
        self.conv = paddle.nn.Conv2D(3, cfg.fmap_channels, 3, padding=1)
        self.pool = paddle.nn.AdaptiveAvgPool2D(k)
        self.proj = paddle.nn.Linear(cfg.fmap_channels * k * k, cfg.feature_num)
        self.fc = paddle.nn.Linear(cfg.feature_num, cfg.num_classes)

    def forward(self, x):
        fmap = self.pool(paddle.nn.functional.relu(self.conv(x)))
        return paddle.tanh(self.proj(paddle.flatten(fmap, 1))) * 3, fmap

    def classify(self, vec):
        return self.fc(vec)


def _exit_pattern_thresholds(pmax, counts=(1, 1, 2)):
    """Per step ``t < T - 1`` a threshold midway between two confidences of the images still running, so
    that ``counts[t]`` of them exit there; the rest run to the last step."""
    T, n = pmax.shape
    thr = np.full([T], 2.0, np.float32)
    running = np.ones(n, bool)
    for t in range(T - 1):
        s = np.sort(pmax[t][running])[::-1]
        thr[t] = (s[counts[t] - 1] + s[counts[t]]) / 2
        assert (np.abs(pmax[t][running] - thr[t]) > 1e-5).all()
        running &= pmax[t] < thr[t]
    return thr


@pytest.mark.parametrize("fc_rnn", [True, False])
def test_predict_matches_full_run_random(fc_rnn):
    paddle.seed(3)
    cfg = TINY.replace(fc_rnn=fc_rnn, fc_hidden=16 if fc_rnn else None)
    m = GFNet(cfg, backbones=(TinyPaddleBackbone(cfg), TinyPaddleBackbone(cfg)))
    m.eval()
    w = m.policy.actor[0].weight
    w.set_value(w.numpy() * 8)  # spread the actions: every image's patches differ
    rng = np.random.RandomState(2)
    for layer in [*m.fc.sublayers(), m.model_prime.fc]:  # logits of std ~3: well separated confidences
        if isinstance(layer, paddle.nn.Linear):
            fan_in = layer.weight.shape[0]
            layer.weight.set_value(rng.randn(*layer.weight.shape).astype(np.float32) * LOGIT_GAIN / fan_in ** 0.5)
    x = paddle.to_tensor(np.random.RandomState(1).randn(8, 3, 232, 232).astype(np.float32))
    with paddle.no_grad():
        full = m.glance_and_focus(x)
    sm = full.softmax.numpy()
    pmax = sm.max(2)
    thr = _exit_pattern_thresholds(pmax)
    res = m.predict(x, thresholds=thr)
    want_exit = np.array([(np.append(pmax[:-1, i] >= thr[:-1], True)).argmax() for i in range(8)])
    assert np.bincount(want_exit).tolist() == [1, 1, 2, 4], want_exit  # gathered states carried to the end
    assert len({tuple(c) for c in full.coords.numpy().reshape(-1, 2).tolist()}) > 12  # patches differ
    np.testing.assert_array_equal(res.exit_step, want_exit)
    idx = np.arange(8)
    np.testing.assert_array_equal(res.classes, sm[want_exit, idx].argmax(1))
    np.testing.assert_allclose(res.probs, pmax[want_exit, idx], rtol=1e-5)
    np.testing.assert_allclose(res.logits, full.logits.numpy()[want_exit, idx], rtol=0, atol=1e-5)
    for i in range(8):
        np.testing.assert_array_equal(res.coords[i], full.coords.numpy()[:want_exit[i], i])
    assert np.isnan(res.flops).all()  # no flops table set
    m.set_budget_data(flops=[1.0, 2.0, 3.0, 4.0])
    np.testing.assert_array_equal(m.predict(x, thresholds=thr).flops, np.array([1.0, 2.0, 3.0, 4.0])[want_exit])


@pytest.mark.parametrize("fc_rnn", [True, False])
def test_reference_predict_matches_full_run_random(fc_rnn):
    import torch
    from ppcdnv2.families.gfnet.reference.gfnet import GFNetReference

    cfg = TINY.replace(fc_rnn=fc_rnn, fc_hidden=16 if fc_rnn else None)

    class Tiny(torch.nn.Module):
        def __init__(self):
            super().__init__()
            k = cfg.fmap_side
            self.conv = torch.nn.Conv2d(3, cfg.fmap_channels, 3, padding=1)
            self.pool = torch.nn.AdaptiveAvgPool2d(k)
            self.proj = torch.nn.Linear(cfg.fmap_channels * k * k, cfg.feature_num)
            self.fc = torch.nn.Linear(cfg.feature_num, cfg.num_classes)

        def forward(self, x):
            fmap = self.pool(torch.relu(self.conv(x)))
            return torch.tanh(self.proj(fmap.flatten(1))) * 3, fmap

        def classify(self, vec):
            return self.fc(vec)

    torch.manual_seed(3)
    m = GFNetReference(cfg, backbones=(Tiny(), Tiny())).eval()
    with torch.no_grad():
        m.policy.actor[0].weight.mul_(8)  # spread the actions: every image's patches differ
        rng = np.random.RandomState(2)
        for layer in [*m.fc.modules(), m.model_prime.fc]:  # logits of std ~3: well separated confidences
            if isinstance(layer, torch.nn.Linear):
                fan_in = layer.weight.shape[1]
                layer.weight.copy_(torch.from_numpy(rng.randn(*layer.weight.shape).astype(np.float32)
                                                    * LOGIT_GAIN / fan_in ** 0.5))
    x = torch.from_numpy(np.random.RandomState(1).randn(8, 3, 232, 232).astype(np.float32))
    full = m.glance_and_focus(x)
    sm = full.softmax.numpy()
    pmax = sm.max(2)
    thr = _exit_pattern_thresholds(pmax)
    res = m.predict(x, thresholds=thr)
    want_exit = np.array([(np.append(pmax[:-1, i] >= thr[:-1], True)).argmax() for i in range(8)])
    assert np.bincount(want_exit).tolist() == [1, 1, 2, 4], want_exit
    np.testing.assert_array_equal(res.exit_step, want_exit)
    idx = np.arange(8)
    np.testing.assert_allclose(res.logits, full.logits.numpy()[want_exit, idx], rtol=0, atol=1e-5)
    for i in range(8):
        np.testing.assert_array_equal(res.coords[i], full.coords.numpy()[:want_exit[i], i])
