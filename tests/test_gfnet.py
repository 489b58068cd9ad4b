"""GFNet end to end, for every released configuration: the official code's per-step outputs from the whole
Paddle model (both encoders, classifier, policy), the released-format checkpoint through the converter with
torch unimportable, the stored thresholds kept exactly, early-exit prediction, and the per-step
multiply-adds of upstream's counter.

The weights are the fixtures' (``rule.py``; BatchNorm statistics from the npz where calibrated), the expected
outputs are the official code's (``*_io.npz``). ResNet-50 and DenseNet configurations are slow (large).
"""
import subprocess
import sys

import numpy as np
import paddle
import pytest

import ppcdnv2
from conftest import fixture_path
from gfnet_fixtures import CONFIGS, description, fixture_model, io
from gfnet_fixtures import fields as fixture_fields, thresholds as fixture_thresholds
from helpers_convert import run_cli_without_torch

TOL = 1e-4  # of the per-step logit scale (README of the fixtures)


QUICK = ("regnety_600m_p96_t5", "mobilenetv3_large_100_p96_t3")  # one GRU and one cascade configuration


def _param(name):
    return name if name in QUICK else pytest.param(name, marks=pytest.mark.slow)


QUICK_OR_SLOW = [_param(n) for n in CONFIGS]


def _check_outputs(model, name):
    data = io(name)
    with paddle.no_grad():
        r = model.glance_and_focus(paddle.to_tensor(data["x"]))
    logits = r.logits.numpy()
    assert logits.shape == data["logits"].shape
    for t in range(logits.shape[0]):
        scale = float(data["logits"][t].std())
        diff = float(np.abs(logits[t] - data["logits"][t]).max()) / scale
        assert diff <= TOL, f"{name} step {t}: max |Δ| / std = {diff:.2e}"
    np.testing.assert_array_equal(r.coords.numpy(), data["coords"])
    return r


@pytest.mark.parametrize("name", QUICK_OR_SLOW)
def test_whole_model_reproduces_the_official_steps(name):
    model = fixture_model(name)
    _check_outputs(model, name)
    assert model.thresholds.numpy().tobytes() == fixture_thresholds(name).tobytes()


@pytest.mark.parametrize("name", QUICK_OR_SLOW)
def test_step_macs_equal_upstream_counter(name):
    from ppcdnv2.families.gfnet import cumulative_macs, step_macs

    cfg = ppcdnv2.preset(f"gfnet_{name}")
    fields = fixture_fields(name)
    parts = step_macs(cfg)
    assert parts["model"] / 1e6 == pytest.approx(fields["model_flops"], abs=1e-6)
    assert parts["policy"] / 1e6 == pytest.approx(fields["policy_flops"], abs=1e-6)
    assert parts["fc"] / 1e6 == pytest.approx(fields["fc_flops"], abs=1e-6)
    assert np.allclose(np.asarray(cumulative_macs(cfg, parts)) / 1e6, fields["flops"], rtol=0, atol=1e-6)


@pytest.mark.parametrize("name", ["regnety_600m_p96_t5", "mobilenetv3_large_100_p96_t3"])
def test_predict_exits_where_the_thresholds_say(name):
    model = fixture_model(name)
    data, thresholds, flops = io(name), fixture_thresholds(name), fixture_fields(name)["flops"]
    softmax = data["softmax"]  # [T, B, C] of the official code
    for budget in (1, 20, 39):
        th = thresholds[budget - 1]
        with paddle.no_grad():
            res = model.predict(paddle.to_tensor(data["x"]), budget=budget)
        for i in range(softmax.shape[1]):
            steps = [t for t in range(len(th)) if softmax[t, i].max() >= th[t]] + [len(th) - 1]
            t = steps[0]
            assert int(res.exit_step[i]) == t and int(res.classes[i]) == int(softmax[t, i].argmax())
            assert float(res.flops[i]) == pytest.approx(flops[t])


def _write_released(name, path):
    script = fixture_path("write_checkpoint.py", "gfnet")
    p = subprocess.run([sys.executable, str(script), str(fixture_path(f"{name}_s0.json", "gfnet")), str(path)],
                       capture_output=True, text=True, cwd=script.parent, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]


@pytest.mark.parametrize("name", QUICK_OR_SLOW)
def test_released_file_converts_without_torch(name, tmp_path):
    pytest.importorskip("torch")  # only to write the released-format file
    src = tmp_path / f"{name}.pth.tar"
    _write_released(name, src)
    results = run_cli_without_torch({"convert": [str(src), "gfnet.pdparams"]}, tmp_path)
    assert results["__env__"] == {"torch_blocked": True, "torch_loaded": False}
    r = results["convert"]
    assert r["code"] == 0, r["stderr"]
    assert f"create_model('gfnet_{name}'" in r["stdout"]
    src.unlink()  # up to 520 MiB: keep the disk free for the next configuration
    model = ppcdnv2.create_model(f"gfnet_{name}", pretrained=str(tmp_path / "gfnet.pdparams")).eval()
    _check_outputs(model, name)
    assert model.thresholds.numpy().tobytes() == fixture_thresholds(name).tobytes()
    fields = fixture_fields(name)
    assert np.array_equal(model.flops.numpy(), np.asarray(fields["flops"], np.float64))
    # the rest of the evaluation record survives too (eval.py prints it beside its own figures)
    assert model.component_flops.numpy().tolist() == [fields[k] for k in ("model_flops", "policy_flops", "fc_flops")]
    assert model.anytime_classification.numpy().tolist() == fields["anytime_classification"]
    assert model.budgeted_batch_classification.numpy().tolist() == fields["budgeted_batch_classification"]


@pytest.mark.slow
def test_converter_verify_and_errors(tmp_path, capsys):
    pytest.importorskip("torch")
    from ppcdnv2.convert.cli import main as convert

    name = "regnety_600m_p96_t5"
    src = tmp_path / "gf.pth.tar"
    _write_released(name, src)
    assert convert([str(src), str(tmp_path / "gf.pdparams"), "--verify"]) == 0
    out = capsys.readouterr().out
    assert "verify: max |torch reference - paddle|" in out and "gfnet_regnety_600m_p96_t5" in out
    assert convert([str(tmp_path / "gf.pdparams"), str(tmp_path / "back.pth")]) == 1  # no export back
    assert "not written back" in capsys.readouterr().err


@pytest.mark.parametrize("name", CONFIGS)
def test_configuration_is_found_from_the_shapes_alone(name):
    """Without the file's model_name (a train.py checkpoint read elsewhere), the shapes decide: every one of
    the 14 configurations is told apart (MobileNetV3 1.00 and 1.25 share the feature width)."""
    from ppcdnv2.families.gfnet.family import COMPONENTS as PREFIXES

    desc = description(name)
    state = {}
    for component, keys in desc["state_dicts"].items():
        for key, shape, _, _ in keys:
            key = key[len("module."):] if key.startswith("module.") else key
            state[f"{PREFIXES[component]}.{key}"] = np.broadcast_to(np.float32(0), shape)  # shapes only
    cfg, hidden = ppcdnv2.get_family("gfnet").infer_config(state, "torch", "train")
    assert cfg == ppcdnv2.preset(f"gfnet_{name}") and hidden == []


def test_tools_that_expect_one_output_refuse_gfnet_clearly(tmp_path, capsys):
    from ppcdnv2.deploy import load_converted_model
    from ppcdnv2.deploy.cli import export_main

    with pytest.raises(ValueError, match="predict"):
        load_converted_model("gfnet_mobilenetv3_large_100_p96_t3")
    assert export_main(["gfnet_mobilenetv3_large_100_p96_t3", "-o", str(tmp_path / "m")]) == 1
    assert not list(tmp_path.iterdir())
    from conftest import REPO
    from ppcdnv2.engine.cli import train_main

    # training a GFNet goes to its own three-stage loop (tests/test_gfnet_train_engine.py), which refuses what it
    # cannot do with one line, before writing anything: here data without a GFNet path (CIFAR)
    assert train_main(["-c", str(REPO / "configs" / "demo.yaml"), "-o", "model.name=gfnet_mobilenetv3_large_100_p96_t3",
                       "-o", "model.arch=null", "-o", "data.dataset=cifar10", "-o", "data.root=/nonexistent",
                       "-o", f"train.output={tmp_path / 'run'}"]) == 1
    assert "digits demo" in capsys.readouterr().err and not (tmp_path / "run").exists()
