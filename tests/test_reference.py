"""The PyTorch reference itself: faithful to the official code, and randomised the way the parity tests need."""
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from ppcdnv2.families.condensenet.reference import (SFR_INDEX_MODES, SMALL_CONFIG as SMALL, build_reference,  # noqa: E402
                               condense_reference, randomize_, set_progress, state_dict_numpy)
from ppcdnv2.families.condensenet.reference.condensenetv2 import LGC, SFR  # noqa: E402

TOL = 1e-4


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def logits(model, x):
    model.eval()
    with torch.no_grad():
        return model(torch.as_tensor(x)).numpy()


def test_importing_the_package_does_not_import_torch():
    code = ("import sys, ppcdnv2, ppcdnv2.families.condensenet.reference, ppcdnv2.convert, ppcdnv2.flops, ppcdnv2.weights; "
            "assert 'torch' not in sys.modules, 'torch imported'; "
            "ppcdnv2.families.condensenet.reference.build_reference; assert 'torch' in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)


# --- faithful to the official code ------------------------------------------------------------
@pytest.mark.parametrize("key,expected", [("state_dict", "unconverted"), ("state_dict_ema", "unconverted_ema")])
def test_official_training_checkpoint_loads_strictly_and_reproduces_logits(official_checkpoints, official_io,
                                                                           key, expected):
    model = build_reference("cdnv2_a")
    model.load_state_dict({k: torch.from_numpy(v) for k, v in official_checkpoints[key].items()}, strict=True)
    diff = np.abs(logits(model, official_io["x"]) - official_io[expected]).max()
    assert diff <= TOL, diff


def test_official_converted_checkpoint_loads_strictly_and_reproduces_logits(official_checkpoints, official_io):
    model = build_reference("converted_cdnv2_a")  # official dense SFR index by default
    assert model.form == "converted"
    model.load_state_dict({k: torch.from_numpy(v) for k, v in official_checkpoints["converted"].items()},
                          strict=True)
    diff = np.abs(logits(model, official_io["x"]) - official_io["converted"]).max()
    assert diff <= TOL, diff


def test_condense_reference_equals_official_conversion(official_checkpoints):
    """Every key of the official converted checkpoint, bit for bit (num_batches_tracked included)."""
    model = build_reference("cdnv2_a")
    model.load_state_dict({k: torch.from_numpy(v) for k, v in official_checkpoints["state_dict_ema"].items()})
    ours = state_dict_numpy(condense_reference(model))
    official = official_checkpoints["converted"]
    assert sorted(ours) == sorted(official)
    for k, v in official.items():
        np.testing.assert_array_equal(ours[k], v, err_msg=k)
        assert ours[k].dtype == v.dtype, k


def test_upstream_stage_logic_one_stage_per_forward_inside_the_window():
    """As upstream: a jump in progress moves ``_stage`` but drops one stage's worth; >= 0.5005 does nothing."""
    layer = LGC(16, 32, 1, groups=8, condense_factor=8)
    x = torch.randn(2, 16, 3, 3)
    delta = 16 // 8
    layer.progress = 0.4  # stage 5 at once
    layer(x)
    assert (layer.stage, layer.count) == (5, delta)
    layer(x)  # nothing more at the same progress
    assert (layer.stage, layer.count) == (5, delta)
    layer.progress = 0.6  # past the window: upstream never reaches the last stage now
    layer(x)
    assert (layer.stage, layer.count) == (5, delta)
    assert layer._mask[:8].sum(1).flatten().tolist() == [16 - delta] * 8
    layer.progress = 0.5  # inside [0.5, 0.5005): last stage, again one stage's worth
    layer(x)
    assert (layer.stage, layer.count) == (7, 2 * delta)


def _plain_dropping(weight, mask, groups, delta, count, transposed):
    """Upstream's rule written as plain loops over groups: drop the next ``delta`` least-L1 channels."""
    w = np.abs(weight * mask)[:, :, 0, 0]
    mask = mask.copy()
    for g in range(groups):
        if transposed:  # SFR: input columns g, g+G, ... ; rank output channels
            score = w[:, g::groups].sum(1)
        else:  # LGC: output rows g, g+G, ... ; rank input channels
            score = w[g::groups].sum(0)
        for d in np.argsort(score, kind="stable")[count:count + delta]:
            if transposed:
                mask[d, g::groups] = 0
            else:
                mask[g::groups, d] = 0
    return mask


@pytest.mark.parametrize("cls", [LGC, SFR])
def test_vectorised_dropping_equals_plain_loops(cls):
    torch.manual_seed(0)
    layer = cls(24, 32, 1, groups=4, condense_factor=4) if cls is LGC else cls(16, 24, 1, groups=4,
                                                                              condense_factor=4)
    pruned = layer.in_channels if cls is LGC else layer.out_channels
    mask = np.ones(layer._mask.shape, np.float32)
    x = torch.randn(2, layer.in_channels, 2, 2)
    for stage in range(1, 4):
        with torch.no_grad():
            layer.conv.weight.normal_()  # new weights each stage, as training would give
        expected = _plain_dropping(layer.conv.weight.detach().numpy(), mask, 4, pruned // 4, layer.count, cls is SFR)
        layer.progress = 0.5 if stage == 3 else (stage + 0.5) / 3 / 2
        layer(x)
        mask = layer._mask.numpy().copy()
        np.testing.assert_array_equal(mask, expected)
        assert layer.stage == stage
    assert mask.mean() == pytest.approx(1 / 4)


def test_sfr_index_modes_and_forms_build():
    assert set(SFR_INDEX_MODES) == {"dense", "target"}
    dense = build_reference(SMALL, form="converted")
    target = build_reference(SMALL.to_dict(), form="converted", sfr_index="target")
    key = "features.denseblock_1.denselayer_1.sfr.index"
    assert dense.state_dict()[key].dtype == torch.float32 and dense.state_dict()[key].ndim == 2
    assert target.state_dict()[key].dtype == torch.int64 and target.state_dict()[key].ndim == 1
    with pytest.raises(ValueError, match="form"):
        build_reference(SMALL, form="deploy")
    with pytest.raises(ValueError, match="sfr_index"):
        build_reference(SMALL, form="converted", sfr_index="sparse")
    with pytest.raises(ValueError, match="training-form"):
        condense_reference(dense)


# --- randomisation ------------------------------------------------------------------------------
def test_randomize_sets_every_tensor_and_realistic_masks():
    model = randomize_(build_reference(SMALL), seed=0)
    state = model.state_dict()
    for name, m in model.named_modules():
        if isinstance(m, (LGC, SFR)):
            f, g = m.condense_factor, m.groups
            mask = m._mask[:, :, 0, 0]
            # group pattern: LGC rows g::G share one input pattern; SFR columns g::G share one output pattern
            per_group = mask.view(-1, g, mask.shape[1]) if isinstance(m, LGC) else \
                mask.t().reshape(-1, g, mask.shape[0])
            assert torch.equal(per_group, per_group[:1].expand_as(per_group)), name
            assert per_group[0].sum(1).tolist() == [per_group.shape[2] / f] * g, name
            assert (m.stage, m.count) == (f - 1, (f - 1) * (per_group.shape[2] // f)), name
            patterns = {tuple(p.tolist()) for p in per_group[0]}
            assert len(patterns) > 1, f"{name}: all groups kept the same channels"
            assert float((m.conv.weight[:, :, 0, 0] * (1 - mask)).abs().sum()) > 0, "weights under the mask are 0"
    for key, value in state.items():
        if key.endswith(("_mask", "_count", "_stage")):
            continue
        v = value.double()
        if key.endswith("num_batches_tracked"):
            assert int(v) > 0, key
        elif key.endswith("running_var"):
            assert not torch.allclose(v, torch.ones_like(v)), key
        else:
            assert v.std() > 0 and v.abs().sum() > 0, key
    sfr_gammas = [m.norm.weight for m in model.modules() if isinstance(m, SFR)]
    assert all(float(g.abs().min()) > 0 for g in sfr_gammas)  # upstream would leave SFR at zero


def test_randomize_is_seeded_and_logits_are_unit_scale():
    a, b = randomize_(build_reference(SMALL), 7), randomize_(build_reference(SMALL), 7)
    c = randomize_(build_reference(SMALL), 8)
    for k, v in a.state_dict().items():
        assert torch.equal(v, b.state_dict()[k]), k
    assert not torch.equal(a.state_dict()["classifier.weight"], c.state_dict()["classifier.weight"])
    x = np.random.RandomState(0).randn(4, 3, 32, 32).astype("float32")  # not the calibration batch
    out = logits(a, x)
    assert 0.5 <= out.std() <= 2.0, out.std()


def test_randomize_converted_form_is_the_condensed_twin():
    """A converted reference randomised with seed s equals the condensation of the training form with seed s."""
    train = randomize_(build_reference(SMALL), 3)
    for mode in SFR_INDEX_MODES:
        conv = randomize_(build_reference(SMALL, form="converted", sfr_index=mode), 3)
        x = np.random.RandomState(1).randn(2, 3, 32, 32).astype("float32")
        assert np.abs(logits(conv, x) - logits(train, x)).max() <= 1e-5, mode


def test_set_progress_and_forward_progress_argument():
    model = build_reference(SMALL)
    set_progress(model, 0.3)
    assert {m.progress for m in model.learned_layers()} == {0.3}
    model.eval()
    with torch.no_grad():
        model(torch.zeros(1, 3, 32, 32), progress=0.2)
    assert {m.progress for m in model.learned_layers()} == {0.2}
    assert {m.stage for m in model.learned_layers()} == {1}  # 0.2 * 2 >= 1/3: stage 1 of 3
