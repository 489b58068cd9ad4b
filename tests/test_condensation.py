"""Condensation during training: ours reaches every stage for any run length; upstream's schedule may not.

Upstream drops one stage per forward and only while progress < 0.5005, so a short run (here 10 steps
with progress 0 → 1) jumps over the last stage and ends with masks denser than 1/condense_factor,
which cannot be condensed. ``ppcdnv2`` catches up on every stage it passed (see ``ppcdnv2.layers.learned``).
"""
import numpy as np
import paddle
import pytest

import ppcdnv2
from ppcdnv2.condense import NotCondensedError
from ppcdnv2.layers import LGC, SFR

torch = pytest.importorskip("torch")
from ppcdnv2.families.condensenet.reference import (SMALL_CONFIG as SMALL, build_reference, paddle_twin, randomize_)  # noqa: E402
from ppcdnv2.families.condensenet.reference.condensenetv2 import LGC as RefLGC, SFR as RefSFR  # noqa: E402

STEPS = 10
SCHEDULE = [step / (STEPS - 1) for step in range(STEPS)]  # progress 0 → 1 over the run


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def data(n=8, seed=0):
    rs = np.random.RandomState(seed)
    return rs.randn(n, 3, 32, 32).astype("float32"), rs.randint(0, SMALL.num_classes, n).astype("int64")


def mask_groups(mask, groups, transposed):
    """0/1 [rows-per-group, G, C]: LGC rows g::G (input pattern), SFR columns g::G (output pattern)."""
    m = np.asarray(mask)[:, :, 0, 0]
    if transposed:
        m = m.T
    return m.reshape(-1, groups, m.shape[1])


def assert_fully_condensed(layers, name):
    for layer in layers:
        transposed = isinstance(layer, (SFR, RefSFR))
        g, f = layer.groups, layer.condense_factor
        mask = layer._mask.numpy() if hasattr(layer._mask, "numpy") else layer._mask
        per = mask_groups(mask, g, transposed)
        assert np.all(per == per[:1]), f"{name}: mask differs inside a group"
        assert per[0].sum(1).tolist() == [per.shape[2] // f] * g, f"{name}: not exactly 1/{f} per group"
        assert float(np.asarray(mask).mean()) == pytest.approx(1 / f)
        assert layer.stage == f - 1


def train_paddle(model, x, y):
    opt = paddle.optimizer.Momentum(learning_rate=0.05, momentum=0.9, parameters=model.parameters())
    model.train()
    for progress in SCHEDULE:
        model.set_progress(progress)
        loss = paddle.nn.functional.cross_entropy(model(paddle.to_tensor(x)), paddle.to_tensor(y))
        loss = loss + 1e-5 * model.lasso_loss()
        loss.backward()
        opt.step()
        opt.clear_grad()
    return float(loss)


def test_ten_step_run_reaches_exact_condensation_and_condenses():
    paddle.seed(0)
    model = ppcdnv2.build_condensenetv2(SMALL)
    x, y = data()
    loss = train_paddle(model, x, y)
    assert np.isfinite(loss)
    layers = model.learned_layers()
    assert len(layers) == 2 * sum(SMALL.stages)
    assert_fully_condensed(layers, "ours")
    for layer in layers:  # the catch-up dropped exactly (factor - 1) stages' worth
        pruned = layer.in_channels if isinstance(layer, LGC) else layer.out_channels
        assert layer.count == (layer.condense_factor - 1) * (pruned // layer.condense_factor)
    # ... and the result condenses into a model computing the same function
    model.eval()
    condensed = ppcdnv2.condense(model)
    xt = paddle.to_tensor(data(4, seed=1)[0])
    with paddle.no_grad():
        diff = np.abs(condensed(xt).numpy() - model(xt).numpy()).max()
    assert diff <= 1e-5, diff


def test_upstream_schedule_misses_the_last_stage_under_the_same_run():
    """The reference (upstream's logic) under the same 10 steps stops short: documents the deviation."""
    torch.manual_seed(0)
    ref = build_reference(SMALL).train()
    x, y = data()
    opt = torch.optim.SGD(ref.parameters(), lr=0.05, momentum=0.9)
    for progress in SCHEDULE:
        loss = torch.nn.functional.cross_entropy(ref(torch.from_numpy(x), progress=progress),
                                                 torch.from_numpy(y))
        opt.zero_grad()
        loss.backward()
        opt.step()
    stages = {m.stage for m in ref.learned_layers()}
    assert max(stages) < SMALL.condense_factor - 1, stages
    densities = {round(float(m._mask.mean()), 4) for m in ref.learned_layers()}
    assert min(densities) > 1 / SMALL.condense_factor, densities
    # such a model cannot be condensed exactly; ours says so instead of silently truncating like upstream
    with pytest.raises(NotCondensedError, match="not fully condensed"):
        ppcdnv2.condense(paddle_twin(ref))


def test_stage_by_stage_schedule_gives_the_same_masks_as_upstream():
    """When every stage gets its own forward, our dropping picks exactly upstream's channels."""
    ref = randomize_(build_reference(SMALL), seed=1)
    for m in ref.learned_layers():  # back to dense masks, keep the random weights
        m._mask.fill_(1.0), m._stage.zero_(), m._count.zero_()
    pd = paddle_twin(ref)
    ref.eval(), pd.eval()
    x = data(2)[0]
    f = SMALL.condense_factor
    for stage in range(1, f):
        progress = 0.5 if stage == f - 1 else (stage + 0.5) / (f - 1) / 2
        with torch.no_grad():
            ref(torch.from_numpy(x), progress=progress)
        with paddle.no_grad():
            pd(paddle.to_tensor(x), progress=progress)
        for (name, r), p in zip(((n, m) for n, m in ref.named_modules() if isinstance(m, (RefLGC, RefSFR))),
                                pd.learned_layers()):
            np.testing.assert_array_equal(p._mask.numpy(), r._mask.numpy(), err_msg=f"{name} stage {stage}")
            assert (p.stage, p.count) == (r.stage, r.count) == (stage, p.count), name
    assert_fully_condensed(pd.learned_layers(), "ours")


def test_single_forward_past_half_catches_up_all_stages():
    model = ppcdnv2.build_condensenetv2(SMALL)
    model.eval()
    with paddle.no_grad():
        model(paddle.to_tensor(data(2)[0]), progress=0.7)
    assert_fully_condensed(model.learned_layers(), "ours")
