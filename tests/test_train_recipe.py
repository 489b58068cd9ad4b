"""The official recipe's pieces: optimizer and its parameter groups, schedule, label smoothing, EMA."""
import math

import numpy as np
import paddle
import pytest

from ppcdnv2.engine.ema import ModelEMA
from ppcdnv2.engine.optim import LRSchedule, param_groups, scaled_lrs, smoothed_cross_entropy
from ppcdnv2.families.condensenet.v2 import CondenseNetV2
from ppcdnv2.families.condensenet import CondenseNetV2Config

TINY = CondenseNetV2Config(stages=(1, 1, 1), growth=(4, 8, 8), bottleneck=4, condense_factor=4, trans_factor=4,
                           group_1x1=4, group_3x3=4, group_trans=4, last_se_reduction=4, hs_start_block=1,
                           se_start_block=2, fc_channel=16, num_classes=10, stem="cifar")


def test_weight_decay_groups_follow_upstream():
    """timm's add_weight_decay: no decay for 1-D parameters and biases; masks and BN statistics are not trained."""
    model = CondenseNetV2(TINY)
    groups = param_groups(model, 4e-5)
    names = {id(p): n for n, p in model.named_parameters()}
    no_decay = {names[id(p)] for p in groups[0]["params"]}
    decay = {names[id(p)] for p in groups[1]["params"]}
    assert groups[0]["weight_decay"] == 0.0 and groups[1]["weight_decay"] == 4e-5
    assert "features.norm_last.weight" in no_decay and "classifier.bias" in no_decay
    assert "features.init_conv.weight" in decay and "classifier.weight" in decay and "fc.weight" in decay
    assert not any(n.endswith(("_mean", "_variance", "_mask")) for n in no_decay | decay)
    assert all(model.state_dict()[n].ndim > 1 for n in decay)
    trainable = {n for n, p in model.named_parameters() if not p.stop_gradient}
    assert no_decay | decay == trainable and not no_decay & decay


def test_momentum_nesterov_matches_torch_sgd():
    torch = pytest.importorskip("torch")
    from ppcdnv2.engine.optim import build_optimizer

    paddle.seed(0)
    pm = paddle.nn.Sequential(paddle.nn.Linear(5, 4), paddle.nn.BatchNorm1D(4), paddle.nn.Linear(4, 3))
    tm = torch.nn.Sequential(torch.nn.Linear(5, 4), torch.nn.BatchNorm1d(4), torch.nn.Linear(4, 3)).double()
    tp = dict(tm.named_parameters())
    with torch.no_grad():
        for n, p in pm.named_parameters():
            if n in tp:
                v = p.numpy()
                tp[n].copy_(torch.from_numpy(v.T.copy() if v.ndim == 2 else v))
    cfg = {"name": "sgd", "momentum": 0.9, "nesterov": True, "weight_decay": 0.05, "no_decay_bn_bias": True}
    opt = build_optimizer(pm, cfg, 0.1)
    # torch side written from timm's rule, not from ppcdnv2
    groups = [{"params": [p for n, p in tm.named_parameters() if p.ndim <= 1 or n.endswith(".bias")], "weight_decay": 0.0},
              {"params": [p for n, p in tm.named_parameters() if not (p.ndim <= 1 or n.endswith(".bias"))],
               "weight_decay": 0.05}]
    topt = torch.optim.SGD(groups, lr=0.1, momentum=0.9, nesterov=True)
    x = np.random.RandomState(0).randn(8, 5).astype(np.float32)
    for it in range(6):
        lr = 0.02 * (it + 1)
        opt.set_lr(lr)
        for g in topt.param_groups:
            g["lr"] = lr
        (pm(paddle.to_tensor(x)) ** 2).mean().backward()
        opt.step()
        opt.clear_grad()
        topt.zero_grad()
        (tm(torch.from_numpy(x).double()) ** 2).mean().backward()
        topt.step()
    for n, p in pm.named_parameters():
        if n in tp:
            t = tp[n].detach().numpy()
            np.testing.assert_allclose(p.numpy(), t.T if t.ndim == 2 else t, atol=2e-6, err_msg=n)


def test_schedule_is_upstreams_warmup_then_cosine():
    lr, warm = scaled_lrs({"lr": 0.4, "base_batch": 1024}, {"warmup_lr": 0.1}, 1024)
    assert (lr, warm) == (0.4, 0.1)
    assert scaled_lrs({"lr": 0.4, "base_batch": 1024}, {"warmup_lr": 0.1}, 256) == (0.1, 0.025)
    spe, epochs = 10, 350
    s = LRSchedule(0.4, 0.1, 5, epochs, spe)

    def upstream(epoch, batch):  # utils/scheduler.py, 'cosine' with warm-up, from its formula
        if epoch < 5:
            return 0.1 + (0.4 - 0.1) * ((epoch * spe + batch) / (5 * spe))
        t_total, t_cur = (epochs - 5) * spe, (epoch - 5) * spe + batch
        return 0.5 * 0.4 * (1 + math.cos(math.pi * t_cur / t_total))

    for epoch, batch in [(0, 0), (0, 7), (2, 3), (4, 9), (5, 0), (100, 4), (349, 9)]:
        assert s(epoch * spe + batch) == pytest.approx(upstream(epoch, batch), abs=1e-12)
    assert s(epochs * spe) == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(ValueError, match="warmup_epochs"):
        LRSchedule(0.4, 0.1, 5, 5, spe)


def test_label_smoothing_matches_torch():
    torch = pytest.importorskip("torch")
    rng = np.random.RandomState(0)
    logits = (rng.randn(6, 10) * 3).astype(np.float32)
    labels = rng.randint(0, 10, 6)
    for s in (0.0, 0.1):
        ours = float(smoothed_cross_entropy(paddle.to_tensor(logits), paddle.to_tensor(labels), s))
        ref = float(torch.nn.functional.cross_entropy(torch.from_numpy(logits), torch.from_numpy(labels),
                                                      label_smoothing=s))
        assert ours == pytest.approx(ref, rel=1e-6)
    # confidently wrong logits: no clipping (Paddle's own cross_entropy would cap this near 64)
    big = np.array([[3000.0, 0.0, -10.0]], np.float32)
    assert float(smoothed_cross_entropy(paddle.to_tensor(big), paddle.to_tensor(np.array([1])))) == pytest.approx(3000.0)


def test_ema_averages_floats_and_copies_condensation_state():
    paddle.seed(1)
    model, shadow = CondenseNetV2(TINY), CondenseNetV2(TINY)
    ema = ModelEMA(model, shadow, decay=0.75)
    before = {k: v.numpy().copy() for k, v in shadow.state_dict().items()}
    opt = paddle.optimizer.Momentum(0.5, parameters=model.parameters())
    model.train()
    model.set_progress(0.5)  # all masks drop to their last stage in this forward
    paddle.nn.functional.cross_entropy(model(paddle.randn([4, 3, 32, 32])), paddle.to_tensor([0, 1, 2, 3])).backward()
    opt.step()
    ema.update()
    now = model.state_dict()
    copied = 0
    for k, v in shadow.state_dict().items():
        m = now[k].numpy()
        if k.endswith(("_mask", "_count", "_stage")):
            assert np.array_equal(v.numpy(), m), k
            copied += 1
        else:
            np.testing.assert_allclose(v.numpy(), 0.75 * before[k] + 0.25 * m, rtol=1e-6, atol=1e-7, err_msg=k)
    assert copied == 3 * len(model.learned_layers())
    assert any(not np.array_equal(before[k], now[k].numpy()) for k in before if k.endswith("_mask"))
    assert not np.array_equal(before["features.norm_last._mean"], now["features.norm_last._mean"].numpy())


def test_fine_tuning_start_keeps_all_but_a_resized_classifier(tmp_path):
    from ppcdnv2.engine.build import load_initial_weights
    from ppcdnv2.weights import StateDictMismatchError, save_weights, state_dict_numpy

    paddle.seed(3)
    source = CondenseNetV2(TINY)
    save_weights(state_dict_numpy(source), tmp_path / "src.pdparams")
    same = CondenseNetV2(TINY)
    assert load_initial_weights(same, tmp_path / "src.pdparams") is False
    assert all(np.array_equal(v.numpy(), source.state_dict()[k].numpy()) for k, v in same.state_dict().items())
    five = CondenseNetV2(TINY.replace(num_classes=5))
    init_cls = five.classifier.weight.numpy().copy()
    assert load_initial_weights(five, tmp_path / "src.pdparams") is True
    assert np.array_equal(five.classifier.weight.numpy(), init_cls)
    assert np.array_equal(five.fc.weight.numpy(), source.fc.weight.numpy())
    other = CondenseNetV2(TINY.replace(fc_channel=32))
    with pytest.raises(StateDictMismatchError, match="fc.weight"):
        load_initial_weights(other, tmp_path / "src.pdparams")
