"""Registry-driven checks over every registered model of every family (``ppcdnv2.list_models()``).

For each name and each form its family has: the preset resolves, the FLOPs counter runs (and agrees with
the published figures where there are some), the model builds and runs with the right output shape,
its weights survive save → ``create_model(pretrained=...)``, and one model per family and form exports
for Paddle Inference with the same logits. Models over 600 M multiply-adds are marked slow.
"""
import numpy as np
import paddle
import pytest

import ppcdnv2
from ppcdnv2.flops import count_flops
from ppcdnv2.registry import CONVERTED, families, family_of, model_entry
from ppcdnv2.weights import save_weights, state_dict_numpy

NAMES = ppcdnv2.list_models()
SLOW_MFLOPS = 600


def _param(name):
    entry = model_entry(name)
    if entry.family.name == "gfnet":  # two encoders each: slow, but for the smallest
        slow = name != "gfnet_mobilenetv3_large_100_p96_t3"
    else:
        slow = count_flops(name).flops / 1e6 > SLOW_MFLOPS
    return pytest.param(name, marks=pytest.mark.slow) if slow else name


def _randomize(model, seed=0):
    """Every float parameter and BatchNorm statistic random (default inits hide key and layout bugs);
    integer buffers (indexes, masks' counters) are kept."""
    rng = np.random.default_rng(seed)
    state = {}
    for key, value in state_dict_numpy(model).items():
        if not np.issubdtype(value.dtype, np.floating) or key.endswith("._mask"):
            state[key] = value
        elif key.endswith("_variance"):
            state[key] = rng.uniform(0.5, 1.5, value.shape).astype(value.dtype)
        elif value.ndim == 1:
            state[key] = rng.uniform(-0.2, 0.2, value.shape).astype(value.dtype) + (key.endswith(".weight"))
        else:
            fan_in = int(np.prod(value.shape[1:])) if value.ndim == 4 else value.shape[0]
            state[key] = rng.normal(0, np.sqrt(1.0 / fan_in), value.shape).astype(value.dtype)
    from ppcdnv2.weights import load_state_dict

    return load_state_dict(model, state)


def test_every_family_is_registered_with_its_models():
    fams = families()
    assert {"condensenetv2", "condensenet", "rexnet"} <= set(fams)
    for fam in fams.values():
        assert fam.presets, fam.name
        for preset, cfg in fam.presets.items():
            assert model_entry(preset).family is fam
            assert (CONVERTED + preset in NAMES) == ("converted" in fam.forms_of(cfg))
        for alias, target in fam.aliases.items():
            assert model_entry(alias).preset == target and alias not in NAMES


@pytest.mark.parametrize("name", [_param(n) for n in NAMES])
def test_preset_and_flops(name):
    entry = model_entry(name)
    cfg = ppcdnv2.preset(name)
    assert cfg == entry.family.presets[entry.preset]
    report = count_flops(name)
    assert report.flops > 0 and report.params > 0 and report.form == entry.form
    assert str(report).startswith(f"{name}: ")
    if report.published is not None and report.published_form == entry.form:  # (ReXNet's README: 0.40B/4.8M)
        mflops, mparams = report.published
        assert report.flops / 1e6 == pytest.approx(mflops, rel=0.025)
        assert report.params / 1e6 == pytest.approx(mparams, rel=0.025)


@pytest.mark.parametrize("name", [_param(n) for n in NAMES])
def test_build_forward_and_weights_round_trip(name, tmp_path):
    model = _randomize(ppcdnv2.create_model(name)).eval()
    cfg = model.cfg
    x = paddle.to_tensor(np.random.default_rng(1).standard_normal((1, 3, cfg.input_size, cfg.input_size))
                         .astype("float32"))
    with paddle.no_grad():
        out = model(x).numpy()
    steps = (cfg.T,) if model_entry(name).family.name == "gfnet" else ()  # GFNet: logits of every step
    assert out.shape == steps + (1, cfg.num_classes) and np.isfinite(out).all() and out.std() > 0
    path = tmp_path / "w.pdparams"
    save_weights(state_dict_numpy(model), path)
    again = ppcdnv2.create_model(name, pretrained=str(path)).eval()
    with paddle.no_grad():
        assert np.array_equal(again(x).numpy(), out)


def _smallest_per_family_and_form():
    best = {}
    for name in NAMES:
        entry = model_entry(name)
        if not entry.family.exportable:
            continue
        key = (entry.family.name, entry.form)
        flops = count_flops(name).flops
        if key not in best or flops < best[key][1]:
            best[key] = (name, flops)
    return sorted(n for n, _ in best.values())


@pytest.mark.parametrize("name", _smallest_per_family_and_form())
def test_export_trace_per_family(name, tmp_path):
    from ppcdnv2.deploy import PaddlePredictor, default_meta, export_inference

    model = _randomize(ppcdnv2.create_model(name), seed=2).eval()
    files = export_inference(model, tmp_path / "m", default_meta(name, model))
    size = model.cfg.input_size
    x = np.random.default_rng(3).standard_normal((2, 3, size, size)).astype("float32")
    with paddle.no_grad():
        expected = model(paddle.to_tensor(x)).numpy()
    got = PaddlePredictor(files.prefix, threads=1)(x)
    assert np.abs(got - expected).max() <= 1e-4 * max(1.0, np.abs(expected).max())
    info = family_of(model).weights_info(model.cfg)
    assert files.meta_file.exists() and info.crop == size or size == 32


@pytest.mark.parametrize("name", [_param(n) for n in NAMES if model_entry(n).family.forms == ("train",)])
def test_one_form_families_refuse_converted(name):
    fam = model_entry(name).family
    with pytest.raises(ValueError, match="form"):
        fam.build(model_entry(name).preset, form="converted")
    with pytest.raises(ValueError, match="one form"):
        ppcdnv2.condense(ppcdnv2.create_model(name))
