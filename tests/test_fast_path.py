"""The fast condensed inference path: every way our converted model runs gives the official layout's logits.

The independent reference is ``ppcdnv2.families.condensenet.reference`` in torch with the official dense C'xC SFR matrix
(``sfr_index="dense"``). Ours runs three ways: no-grad dygraph (dense blocks in place, one buffer per
block), grad-enabled dygraph (functional concat path, still trainable) and ``portable_ops`` (SFR folded
into one dense 1x1 conv, the ONNX trace). A small custom configuration keeps the test fast.
"""
import numpy as np
import paddle
import paddle.nn.functional as F
import pytest

import ppcdnv2
from ppcdnv2.convert import official_state_to_model
from ppcdnv2.layers import CondenseSFR
from ppcdnv2.layers.common import channel_shuffle, channel_unshuffle
from ppcdnv2.layers.condensed import portable_ops, targets_to_dense_index
from ppcdnv2.families.condensenet import v2 as cdnv2_module
from ppcdnv2.weights import load_state_dict

TOL = 1e-4
CFG = ppcdnv2.preset("cdnv2_a", stages=(1, 2, 2, 2, 2), growth=(8, 8, 16, 16, 32), fc_channel=64, num_classes=50)


@pytest.fixture(scope="module")
def pair():
    """(our converted model, torch official-layout model, input, torch logits) with the same random weights."""
    torch = pytest.importorskip("torch")
    from ppcdnv2.families.condensenet.reference import build_reference, randomize_, state_dict_numpy

    torch.manual_seed(0)
    ref = randomize_(build_reference(CFG, "converted", sfr_index="dense"), seed=3).eval()
    ours = ppcdnv2.build_condensenetv2(CFG, form="converted")
    load_state_dict(ours, official_state_to_model(state_dict_numpy(ref), ours))
    ours.eval()
    x = np.random.default_rng(0).standard_normal((3, 3, 224, 224)).astype(np.float32)
    with torch.no_grad():
        expected = ref(torch.from_numpy(x)).numpy()
    assert expected.std() > 0.3  # a meaningful comparison, not near-constant logits
    return ours, ref, x, expected


def test_channel_shuffle_kernel_is_the_reshape_shuffle():
    x = paddle.randn([2, 24, 3, 5])
    for groups in (2, 3, 8):
        np.testing.assert_array_equal(F.channel_shuffle(x, groups).numpy(), channel_shuffle(x, groups).numpy())
        np.testing.assert_array_equal(F.channel_shuffle(x, 24 // groups).numpy(), channel_unshuffle(x, groups).numpy())


def test_inplace_path_matches_official_layout_and_leaves_input_alone(pair, monkeypatch):
    ours, _, x, expected = pair
    calls = []
    original = cdnv2_module.condensed_block_inplace
    monkeypatch.setattr(cdnv2_module, "condensed_block_inplace", lambda *a: calls.append(1) or original(*a))
    xt = paddle.to_tensor(x)
    with paddle.no_grad():
        out = ours(xt).numpy()
    assert len(calls) == len(CFG.stages)  # every dense block took the in-place path
    np.testing.assert_array_equal(xt.numpy(), x)
    assert np.abs(out - expected).max() <= TOL


def test_grad_path_matches_and_trains(pair, monkeypatch):
    ours, _, x, expected = pair
    monkeypatch.setattr(cdnv2_module, "condensed_block_inplace", lambda *a: pytest.fail("in-place path with grad"))
    out = ours(paddle.to_tensor(x))
    assert np.abs(out.numpy() - expected).max() <= TOL
    out.sum().backward()
    sfr = ours.features.denseblock_2.denselayer_2.sfr
    lgc = ours.features.denseblock_2.denselayer_2.conv_1
    assert float(sfr.conv.weight.grad.abs().sum()) > 0 and float(lgc.conv.weight.grad.abs().sum()) > 0
    ours.clear_gradients()


def test_portable_ops_match(pair):
    ours, _, x, expected = pair
    with portable_ops():  # grad enabled so every layer runs its forward (the trace's path)
        out = ours(paddle.to_tensor(x)).numpy()
    assert np.abs(out - expected).max() <= TOL


def test_features_only_inplace_equals_functional(pair):
    ours, _, x, _ = pair
    backbone = ppcdnv2.build_condensenetv2(CFG, form="converted", features_only=True)
    backbone.set_state_dict(ours.state_dict())
    backbone.eval()
    xt = paddle.to_tensor(x[:1])
    with paddle.no_grad():
        fast = [f.numpy() for f in backbone(xt)]
    slow = [f.numpy() for f in backbone(xt)]
    assert [f.shape[1] for f in fast] == list(backbone.stage_channels)
    for a, b in zip(fast, slow):
        assert np.abs(a - b).max() <= 1e-5


def test_sfr_scatter_adds_duplicate_targets_and_skips_others():
    """Targets repeat and some channels get nothing: scatter-add, in-place add and folded conv agree with matmul."""
    paddle.seed(0)
    sfr = CondenseSFR(16, 24, 1, groups=4, condense_factor=4)
    rng = np.random.default_rng(0)
    targets = rng.integers(0, 6, sfr.conv_channels)  # 24 outputs onto channels 0..5 only: many duplicates
    sfr.index.set_value(paddle.to_tensor(targets.astype(np.int64)))
    sfr.norm._mean.set_value(paddle.to_tensor(rng.normal(0, 0.2, 16).astype(np.float32)))
    sfr.eval()
    x = paddle.randn([2, 16, 5, 5])
    residual = paddle.randn([2, 24, 5, 5])
    conv = sfr.reactivation(x).numpy()  # [N, C', H, W]
    matrix = targets_to_dense_index(targets, 24)  # the official layout
    expected = residual.numpy() + np.einsum("nkhw,kc->nchw", conv, matrix)
    np.testing.assert_allclose(sfr(x, residual=residual).numpy(), expected, atol=1e-5)
    buf = paddle.concat([residual, paddle.zeros([2, 8, 5, 5])], axis=1)  # wider than out_channels, as in a block
    with paddle.no_grad():
        sfr.add_to_(buf, x)
    np.testing.assert_allclose(buf.numpy()[:, :24], expected, atol=1e-5)
    assert not buf.numpy()[:, 24:].any()
    with portable_ops():
        np.testing.assert_allclose(sfr(x, residual=residual).numpy(), expected, atol=1e-5)
    assert not np.abs(expected - residual.numpy())[:, 6:].any()  # untouched channels stay as they were
