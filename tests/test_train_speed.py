"""The training form's CPU speed-ups compute what they replace (``ppcdnv2.layers.learned.TrainConv``: the
input gradient as a convolution; ``ppcdnv2._cpu``); their speed is measured by
``benchmarks/benchmark.py --train-only``, never here."""
import numpy as np
import paddle
import paddle.nn as nn
import pytest

import ppcdnv2
from ppcdnv2 import _cpu
from ppcdnv2.layers import Conv, TrainConv
from ppcdnv2.layers import learned


def plain(monkeypatch):
    """Paddle's own conv2d_grad everywhere, as before the speed-up."""
    monkeypatch.setattr(learned, "_input_grad_as_conv", lambda *a: False)


def grads(layer, x, dy, fast=True, monkeypatch=None):
    """(output, input gradient, weight gradient) of ``layer(x)`` against the output gradient ``dy``."""
    x = paddle.to_tensor(x, stop_gradient=False)
    if not fast:
        plain(monkeypatch)
    out = layer(x)
    out.backward(paddle.to_tensor(dy))
    res = out.numpy(), x.grad.numpy(), layer.conv.weight.grad.numpy()
    layer.clear_gradients()
    if not fast:
        monkeypatch.undo()
    return res


@pytest.mark.parametrize("cin, cout, k, pad, groups, hw", [
    (32, 8, 3, 1, 8, 9),     # CondenseNetV2's conv_2: 4 input channels per output channel, groups 8
    (6, 9, 5, 2, 3, 8),      # 5x5
    (16, 12, 3, 1, 4, 7),
    (8, 8, 3, 0, 1, 6),      # no padding: the transposed conv pads k-1
    (64, 16, 3, 1, 8, 3),    # CondenseNetV2-A's 7x7-stage widths on a small map
])
def test_train_conv_gradients_match_paddles_own(cin, cout, k, pad, groups, hw, monkeypatch):
    """Forward and weight gradient bit-identical (Paddle's own); input gradient equal to float32 rounding
    (other summation order). A wrong flip, transpose, padding or grouping is off by O(1)."""
    paddle.seed(0)
    layer = TrainConv(cin, cout, k, padding=pad, groups=groups, activation="HS")
    layer.train()
    rs = np.random.RandomState(1)
    x = rs.randn(3, cin, hw, hw + 1).astype("float32")
    dy = rs.randn(3, cout, hw + 2 * pad - k + 1, hw + 1 + 2 * pad - k + 1).astype("float32")
    assert learned._input_grad_as_conv(paddle.to_tensor(x, stop_gradient=False), layer.conv)
    out_ref, dx_ref, dw_ref = grads(layer, x, dy, fast=False, monkeypatch=monkeypatch)
    out, dx, dw = grads(layer, x, dy)
    np.testing.assert_array_equal(out, out_ref)
    np.testing.assert_array_equal(dw, dw_ref)
    np.testing.assert_allclose(dx, dx_ref, rtol=1e-5, atol=1e-5 * np.abs(dx_ref).max())


def test_train_conv_falls_back_where_the_trick_does_not_apply():
    conv = nn.Conv2D(8, 8, 3, padding=1, groups=2, bias_attr=False)
    x = paddle.randn([1, 8, 5, 5])
    x.stop_gradient = False
    assert learned._input_grad_as_conv(x, conv)
    with paddle.no_grad():
        assert not learned._input_grad_as_conv(x, conv)
    assert not learned._input_grad_as_conv(x.detach(), conv)  # no input gradient wanted
    assert not learned._input_grad_as_conv(x, nn.Conv2D(8, 8, 3, stride=2, padding=1))
    assert not learned._input_grad_as_conv(x, nn.Conv2D(8, 8, 3, padding=2, dilation=2))
    assert not learned._input_grad_as_conv(x, nn.Conv2D(8, 8, 1))  # 1x1: Paddle has no col2im there
    conv.weight.stop_gradient = True  # frozen: the PyLayer would have no weight-gradient node to feed
    assert not learned._input_grad_as_conv(x, conv)
    layer = TrainConv(8, 4, 3, padding=1, groups=2)
    layer.conv.weight.stop_gradient = True
    layer(x).sum().backward()
    assert x.grad is not None and layer.conv.weight.grad is None


def test_training_form_uses_train_conv_with_unchanged_keys():
    cfg = ppcdnv2.preset("cdnv2_a")
    train = ppcdnv2.build_condensenetv2(cfg, form="train")
    converted = ppcdnv2.build_condensenetv2(cfg, form="converted")
    layer = train.features.denseblock_1.denselayer_1
    assert type(layer.conv_2) is TrainConv
    assert type(converted.features.denseblock_1.denselayer_1.conv_2) is Conv
    assert sorted(layer.conv_2.state_dict()) == ["conv.weight", "norm._mean", "norm._variance", "norm.bias",
                                                 "norm.weight"]


def test_training_step_gradients_match_the_plain_path(monkeypatch):
    """A whole (small) training-form network: every parameter gradient as with Paddle's own conv2d_grad."""
    from ppcdnv2.families.condensenet.reference import SMALL_CONFIG

    paddle.seed(0)
    model = ppcdnv2.build_condensenetv2(SMALL_CONFIG, form="train")
    model.train()
    x = paddle.to_tensor(np.random.RandomState(0).randn(4, 3, 32, 32).astype("float32"))

    def run():
        loss = model(x).square().mean()
        loss.backward()
        g = {n: p.grad.numpy().copy() for n, p in model.named_parameters() if p.grad is not None}
        model.clear_gradients()
        return g

    fast = run()
    plain(monkeypatch)
    ref = run()
    assert sorted(fast) == sorted(ref) and fast
    for k in ref:
        np.testing.assert_allclose(fast[k], ref[k], rtol=1e-4, atol=1e-6 * max(1.0, np.abs(ref[k]).max()), err_msg=k)


CPUINFO = "processor\t: 0\nvendor_id\t: {vendor}\ncpu family\t: 25\nflags\t\t: fpu sse2 {flags}\n\nprocessor\t: 1\n"


@pytest.mark.parametrize("vendor, flags, env, expected", [
    ("AuthenticAMD", "avx avx2 fma", {}, "5"),
    ("HygonGenuine", "avx2 fma avx512f", {}, "5"),
    ("GenuineIntel", "avx2 fma avx512f", {}, None),            # MKL picks Intel's fast kernels itself
    ("AuthenticAMD", "avx fma", {}, None),                      # no AVX2: its kernels would fault
    ("AuthenticAMD", "avx2 fma", {"MKL_DEBUG_CPU_TYPE": "4"}, None),  # the user's value stands
    ("AuthenticAMD", "avx2 fma", {"PPCDNV2_CPU_TUNING": "0"}, None),
])
def test_mkl_cpu_type(vendor, flags, env, expected):
    assert _cpu.mkl_cpu_type(CPUINFO.format(vendor=vendor, flags=flags), env) == expected


def test_keep_freed_memory_once_and_opt_out(monkeypatch):
    monkeypatch.setattr(_cpu, "_malloc_state", {"done": False, "tuned": False})
    monkeypatch.setenv("PPCDNV2_CPU_TUNING", "0")
    assert not _cpu.keep_freed_memory() and not _cpu._malloc_state["tuned"]
    monkeypatch.setattr(_cpu, "_malloc_state", {"done": False, "tuned": False})
    monkeypatch.delenv("PPCDNV2_CPU_TUNING")
    calls = []
    monkeypatch.setattr(_cpu.ctypes, "CDLL", lambda *a: type("libc", (), {"mallopt": _Mallopt(calls)})())
    import platform
    if not _cpu.sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc":
        pytest.skip("glibc only")
    assert _cpu.keep_freed_memory() and _cpu._malloc_state["tuned"]
    assert calls == [(_cpu.M_MMAP_THRESHOLD, _cpu.HEAP_LIMIT), (_cpu.M_TRIM_THRESHOLD, _cpu.HEAP_LIMIT)]
    assert not _cpu.keep_freed_memory() and len(calls) == 2  # once per process


class _Mallopt:
    """Stands in for libc's ``mallopt``: records the calls, accepts them."""

    def __init__(self, calls):
        self.calls = calls

    def __call__(self, param, value):
        self.calls.append((param, value))
        return 1
