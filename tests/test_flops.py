"""FLOPs/params: the published figures, and an independent count by forward hooks on the torch reference.

``ppcdnv2.flops`` derives everything from the config; here the same official rules (upstream's
``measure_model``: one multiply-add = one op, learned layers counted dense / factor, ReLU/ReLU6 one op
per element, pools every window element, Linear its weights, Sigmoid two per element, BN params only)
are applied to what a real forward pass of the reference executes.
"""
import pytest

from ppcdnv2.flops import count_flops
from ppcdnv2.families.condensenet.flops import conv_macs

torch = pytest.importorskip("torch")
import torch.nn as nn  # noqa: E402

from ppcdnv2.families.condensenet.reference import build_reference  # noqa: E402
from ppcdnv2.families.condensenet.reference.condensenetv2 import CondenseLGC, CondenseSFR, LGC, SFR  # noqa: E402

# As published in the CondenseNetV2 paper / official README (MFLOPs, M params).
PUBLISHED = {"cdnv2_a": (45.87, 2.038), "cdnv2_b": (146.47, 3.593), "cdnv2_c": (309.74, 6.178)}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_published_figures(name):
    report = count_flops(name)
    flops, params = PUBLISHED[name]
    assert round(report.flops / 1e6, 2) == flops
    assert round(report.params / 1e6, 3) == params


def _per_image(x):
    return x[0].numel()


def hook_count(model, size):
    """(ops, params, conv_macs) of one image by the official rules, from hooks on the modules that run."""
    total = {"ops": 0.0, "params": 0.0, "conv": 0.0}

    def params(m):
        return sum(p.numel() for p in m.parameters())

    def measure(m, inputs):
        x = inputs[0]
        if isinstance(m, (LGC, SFR)):
            n_in = _per_image(x)  # BN (params only) + activation (one op per element) + dense conv / factor
            hw = x.shape[2] * x.shape[3]
            conv = m.conv.in_channels * m.conv.out_channels * hw / m.condense_factor
            total["ops"] += n_in + conv
            total["conv"] += conv
            total["params"] += params(m.norm) + m.conv.weight.numel() / m.condense_factor
        elif isinstance(m, nn.Conv2d):
            out_hw = ((x.shape[2] + 2 * m.padding[0] - m.kernel_size[0]) // m.stride[0] + 1) ** 2
            conv = m.in_channels * m.out_channels * m.kernel_size[0] * m.kernel_size[1] * out_hw / m.groups
            total["ops"] += conv
            total["conv"] += conv
            total["params"] += params(m)
        elif isinstance(m, (nn.ReLU, nn.ReLU6)):
            total["ops"] += _per_image(x)
        elif isinstance(m, nn.Sigmoid):
            total["ops"] += 2 * _per_image(x)
        elif isinstance(m, nn.AvgPool2d):
            out = (x.shape[2] - m.kernel_size) // m.stride + 1
            total["ops"] += x.shape[1] * out * out * m.kernel_size ** 2
        elif isinstance(m, nn.AdaptiveAvgPool2d):
            total["ops"] += _per_image(x)
        elif isinstance(m, nn.Linear):
            total["ops"] += m.weight.numel()
            total["params"] += params(m)
        elif isinstance(m, nn.BatchNorm2d):
            total["params"] += params(m)
        elif not isinstance(m, nn.Identity):
            raise TypeError(f"no counting rule for {type(m).__name__}")

    def attach(module):
        for child in module.children():
            if isinstance(child, (LGC, SFR)) or not list(child.children()):
                handles.append(child.register_forward_pre_hook(measure))
            else:
                attach(child)

    handles = []
    attach(model)
    with torch.no_grad():
        model.eval()(torch.zeros(1, 3, size, size))
    for h in handles:
        h.remove()
    return total


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_hook_count_of_the_reference_matches_analytic_count(name):
    counted = hook_count(build_reference(name), 224)
    report = count_flops(name)
    assert counted["ops"] == pytest.approx(report.flops, rel=1e-9)
    assert counted["params"] == pytest.approx(report.params, rel=1e-9)
    assert counted["conv"] == pytest.approx(conv_macs(name), rel=1e-9)
    flops, params = PUBLISHED[name]
    assert round(counted["ops"] / 1e6, 2) == flops and round(counted["params"] / 1e6, 3) == params


def test_executed_extras_of_the_condensed_model():
    """What the official counter leaves out, measured on the converted reference of C (official dense SFR)."""
    model = build_reference("converted_cdnv2_c")
    seen = {"matmul": 0, "gather": 0, "scatter": 0}

    def lgc(m, inputs, out):
        seen["gather"] += m.index.numel() * out.shape[2] * out.shape[3]

    def sfr(m, inputs, out):
        hw = out.shape[2] * out.shape[3]
        seen["matmul"] += hw * m.index.shape[0] * m.index.shape[1]  # [HW, C'] @ [C', C]
        seen["scatter"] += hw * m.conv_channels

    for m in model.modules():
        if isinstance(m, CondenseLGC):
            m.register_forward_hook(lgc)
        elif isinstance(m, CondenseSFR):
            m.register_forward_hook(sfr)
    with torch.no_grad():
        model.eval()(torch.zeros(1, 3, 224, 224))
    executed = count_flops("converted_cdnv2_c").executed
    assert seen["matmul"] == executed["sfr_dense_matmul_macs"]
    assert seen["gather"] == executed["lgc_index_select"]
    assert seen["scatter"] == executed["sfr_scatter_add"]
    assert seen["matmul"] / 1e9 == pytest.approx(2.54, abs=0.005)  # 8x the model's official FLOPs
