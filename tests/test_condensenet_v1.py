"""CondenseNet (V1): parity with our torch reference of upstream, condensation, official FLOPs/params."""
from decimal import Decimal

import numpy as np
import paddle
import pytest

import ppcdnv2
from ppcdnv2.condense import NotCondensedError
from ppcdnv2.convert.keymap import torch_to_paddle_state
from ppcdnv2.flops import count_flops
from ppcdnv2 import preset
from ppcdnv2.families.condensenet import V1_PRESETS as PRESETS, CondenseNetConfig
from ppcdnv2.families.condensenet.v1 import CondenseNet
from ppcdnv2.weights import load_state_dict, state_dict_numpy

torch = pytest.importorskip("torch")
ref = pytest.importorskip("ppcdnv2.families.condensenet.reference.condensenet")
from ppcdnv2.torch_tools import calibrate_bn_, randomize_weights_  # noqa: E402

TOL = 1e-4


@pytest.fixture(autouse=True)
def _torch_cpu():
    """One thread (several spin badly on a shared 2-core runner) and no denormals (slow masked convs)."""
    threads, flush = torch.get_num_threads(), torch.set_flush_denormal(True)
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
    if flush:
        torch.set_flush_denormal(False)


def _random_reference(cfg, converted=False, seed=0, batch=2):
    """A torch reference with every parameter and buffer random (BN statistics from data, jittered)."""
    gen = torch.Generator().manual_seed(seed)
    model = ref.CondenseNet(cfg, converted=converted)
    randomize_weights_(model, gen)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, ref.CondenseConv):  # any gather of the layer's would-be input channels
                full = m.in_channels * cfg.condense_factor // cfg.group_1x1
                m.index.copy_(torch.randperm(full, generator=gen)[: m.in_channels])
            elif isinstance(m, ref.CondenseLinear):
                m.index.copy_(torch.randperm(model.num_features, generator=gen)[: m.in_features])
    x = torch.randn(batch, 3, cfg.input_size, cfg.input_size, generator=gen)
    calibrate_bn_(model, x, gen)
    return model.eval(), x


def _paddle_twin(tmodel, form):
    model = CondenseNet(tmodel.cfg, form=form)
    load_state_dict(model, torch_to_paddle_state(ref.state_dict_numpy(tmodel), model))
    return model.eval()


def _run(model, x, **kw):
    if isinstance(model, paddle.nn.Layer):
        with paddle.no_grad():
            return model(paddle.to_tensor(x.numpy()), **kw).numpy()
    with torch.no_grad():
        return model(x, **kw).numpy()


def _stage_progresses(factor):
    """One progress value inside each condensation stage, so upstream's one-stage-per-call drops them all."""
    return [0.0] + [s / (2 * (factor - 1)) + 1e-3 for s in range(1, factor)]


def _check_condensation_parity(cfg):
    tm, x = _random_reference(cfg)
    pm = _paddle_twin(tm, "train")
    masked = [k for k in state_dict_numpy(pm) if k.rpartition(".")[2] in ("_mask", "_count", "_stage")]
    for p in _stage_progresses(cfg.condense_factor):
        diff = np.abs(_run(tm, x, progress=p) - _run(pm, x, progress=p)).max()
        assert diff <= TOL, (p, diff)
        ours, theirs = state_dict_numpy(pm), torch_to_paddle_state(ref.state_dict_numpy(tm), pm)
        for k in masked:  # the same channels dropped at the same stage
            np.testing.assert_array_equal(ours[k], theirs[k], err_msg=f"{k} at progress {p}")
    assert all(m.fully_condensed for m in pm.learned_layers())
    # condensation: ours vs upstream's convert_model, same state bit for bit and same logits
    tc, pc = ref.convert_model(tm).eval(), ppcdnv2.condense(pm).eval()
    ours, theirs = state_dict_numpy(pc), torch_to_paddle_state(ref.state_dict_numpy(tc), pc)
    assert sorted(ours) == sorted(theirs)
    for k in ours:
        np.testing.assert_array_equal(ours[k], theirs[k].astype(ours[k].dtype), err_msg=k)
    diff = np.abs(_run(tc, x) - _run(pc, x)).max()
    assert diff <= TOL, diff
    return tm, pm, x


@pytest.mark.parametrize("name,overrides", [
    ("condensenet_cifar50", {"dropout_rate": 0.1}),  # eval mode: dropout is the identity in both
    ("condensenet_cifar86", {}),
])
def test_cifar_training_form_condensation_and_conversion_match_reference(name, overrides):
    tm, pm, x = _check_condensation_parity(preset(name, **overrides))
    if not overrides:  # train mode (batch statistics), no dropout
        tm.train(), pm.train()
        diff = np.abs(_run(tm, x) - _run(pm, x)).max()
        assert diff <= TOL, diff


def test_imagenet_training_form_condensation_and_conversion_match_reference():
    _check_condensation_parity(preset("condensenet74_c4_g4"))


@pytest.mark.parametrize("name", ["converted_condensenet_cifar182", "converted_condensenet74_c8_g8"])
def test_random_converted_form_matches_reference(name):
    """Arbitrary index buffers (not from a condensation), random everything, eval and train mode."""
    tm, x = _random_reference(preset(name), converted=True, seed=1)
    pm = _paddle_twin(tm, "converted")
    for train in (False, True):
        tm.train(train), pm.train(train)
        diff = np.abs(_run(tm, x) - _run(pm, x)).max()
        assert diff <= TOL, (train, diff)


def test_lasso_loss_matches_reference_and_vanishes_when_condensed():
    cfg = preset("condensenet_cifar50")
    tm, x = _random_reference(cfg)
    pm = _paddle_twin(tm, "train")
    theirs = sum(float(m.lasso_loss) for m in tm.learned_layers())
    assert abs(float(pm.lasso_loss()) - theirs) <= 1e-4 * theirs
    _run(pm, x, progress=1.0)
    assert float(pm.lasso_loss()) == 0.0


def test_condense_is_exact_without_the_classifier_and_refuses_uncondensed_models():
    """LGC condensation is lossless; only the classifier's half-feature selection changes the output."""
    cfg = CondenseNetConfig(stages=(2, 3), growth=(4, 8), num_classes=0, stem="cifar")
    model = CondenseNet(cfg).eval()
    x = paddle.randn([2, 3, 32, 32])
    with pytest.raises(NotCondensedError):
        ppcdnv2.condense(model)
    with paddle.no_grad():
        dense = model(x, progress=0.5).numpy()
        np.testing.assert_allclose(ppcdnv2.condense(model)(x).numpy(), dense, atol=1e-5)


def test_features_only_and_registry():
    model = ppcdnv2.create_model("converted_condensenet_cifar50", features_only=True, num_classes=100)
    outs = model(paddle.zeros([1, 3, 32, 32]))
    assert [tuple(o.shape) for o in outs] == [(1, c, s, s) for c, s in zip(model.stage_channels, (32, 16, 8))]
    names = set(ppcdnv2.list_models())
    for base in PRESETS:
        assert {base, "converted_" + base} <= names


def test_config_from_official_namespace():
    import argparse

    args = argparse.Namespace(data="imagenet", stages="4-6-8-10-8", growth="8-16-32-64-128", bottleneck=4,
                              group_1x1=8, group_3x3=8, condense_factor=8, dropout_rate=0.0, num_classes=1000)
    assert CondenseNetConfig.from_official_args(args) == preset("condensenet74_c8_g8")
    cifar = dict(data="cifar10", stages=[14, 14, 14], growth=[8, 16, 32], condense_factor=None)
    assert CondenseNetConfig.from_official_args(cifar) == preset("condensenet_cifar86")


# Upstream README tables (FLOPs, params). CIFAR: training model, measured by main.py before training;
# ImageNet: the released converted models. Each figure is matched to the digits it is given with.
OFFICIAL = {
    "converted_condensenet74_c4_g4": ("529", "4.8"),
    "converted_condensenet74_c8_g8": ("274", "2.9"),
    "condensenet_cifar50": ("28.6", "0.22"),
    "condensenet_cifar74": ("51.9", "0.41"),
    "condensenet_cifar86": ("65.8", "0.52"),
    "condensenet_cifar98": ("81.3", "0.65"),
    "condensenet_cifar110": ("98.2", "0.79"),
    "condensenet_cifar122": ("116.7", "0.95"),
    "condensenet_cifar182": ("513", "4.2"),
}


def _matches(value, published: str) -> bool:
    half_ulp = Decimal(1).scaleb(Decimal(published).as_tuple().exponent) / 2
    return abs(Decimal(repr(value)) - Decimal(published)) < half_ulp


@pytest.mark.parametrize("name", sorted(OFFICIAL))
def test_flops_params_equal_official_tables(name):
    report = count_flops(name)
    flops, params = OFFICIAL[name]
    assert _matches(report.mflops, flops), (report.mflops, flops)
    assert _matches(report.mparams, params), (report.mparams, params)


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_flops_equal_upstream_counter_rules_on_the_reference(name):
    """The analytic count equals upstream's hook-based rules run on the torch reference, op for op."""
    cfg = preset(name)
    for form in ("train", "converted"):
        ops, params = ref.upstream_measure(ref.CondenseNet(cfg, converted=form == "converted"), cfg.input_size)
        report = count_flops(cfg, form=form)
        assert (report.flops, report.params) == (ops, params), form
