"""Exported models (Paddle Inference, ONNX) give the dygraph model's logits; files and errors behave.

Small custom configuration with every parameter and index random (``helpers_convert.random_converted_state``)
so the comparisons mean something; one CLI run exports the official A fixture end to end.
"""
import json

import numpy as np
import paddle
import pytest

import ppcdnv2
from helpers_convert import random_converted_state
from ppcdnv2.deploy import (DygraphPredictor, ExportError, ExportMeta, OnnxPredictor, PaddlePredictor, Preprocess,
                            export_inference, export_onnx, find_exported, paddle_to_onnx, parallel)
from ppcdnv2.deploy.cli import export_main
from ppcdnv2.weights import load_state_dict

CFG = ppcdnv2.preset("cdnv2_a", stages=(1, 1, 2, 2, 2), growth=(8, 8, 8, 16, 16), fc_channel=48, num_classes=20)


@pytest.fixture(scope="module")
def small():
    model = ppcdnv2.build_condensenetv2(CFG, form="converted")
    load_state_dict(model, random_converted_state(model, seed=5))
    return model.eval()


@pytest.fixture(scope="module")
def exported(small, tmp_path_factory):
    meta = ExportMeta(model="small", num_classes=20, preprocess=Preprocess(interpolation="bilinear"), labels=None)
    return export_inference(small, tmp_path_factory.mktemp("export") / "small", meta)


def _batch(n, size, seed=0):
    return np.random.default_rng(seed).standard_normal((n, 3, size, size)).astype(np.float32)


def test_inference_files_and_meta(exported):
    assert exported.model_file.suffix in (".json", ".pdmodel") and exported.params_file.suffix == ".pdiparams"
    meta = ExportMeta.load(exported.meta_file)
    assert meta.num_classes == 20 and meta.preprocess.interpolation == "bilinear" and meta.labels is None
    for path in (exported.prefix, exported.model_file, exported.params_file):
        assert find_exported(path).params_file == exported.params_file
    assert not list(exported.prefix.parent.glob(".*"))  # no temporary leftovers


@pytest.mark.parametrize("batch,size", [(1, 224), (3, 224), (2, 240)])  # dynamic batch and image size
def test_paddle_inference_equals_dygraph(small, exported, batch, size):
    x = _batch(batch, size, seed=batch)
    expected = DygraphPredictor(small)(x)
    assert expected.std() > 0.05
    got = PaddlePredictor(exported.prefix, threads=1)(x)
    assert got.shape == (batch, 20)
    assert np.abs(got - expected).max() <= 1e-5


def test_parallel_predictors_equal_single(small, exported):
    x = _batch(5, 224, seed=7)  # odd batch: uneven split
    single = PaddlePredictor(exported.prefix, threads=1)
    expected = single(x)
    split = parallel(single, 2)
    np.testing.assert_allclose(split(x), expected, atol=1e-6)
    np.testing.assert_allclose(parallel(DygraphPredictor(small), 2)(x), DygraphPredictor(small)(x), atol=1e-6)
    assert split.meta is single.meta


def test_export_leaves_the_model_dygraph(small, tmp_path):
    before = type(small).forward
    export_inference(small, tmp_path / "again")
    assert small.forward.__func__ is before  # to_static ran on a copy
    with paddle.no_grad():
        small(paddle.to_tensor(_batch(1, 224)))


def test_onnx_equals_dygraph(small, tmp_path):
    pytest.importorskip("paddle2onnx")
    pytest.importorskip("onnxruntime")
    path = export_onnx(small, tmp_path / "small.onnx", ExportMeta(model="small", num_classes=20))
    x = _batch(2, 224, seed=11)
    predictor = OnnxPredictor(path, threads=1)
    assert predictor.meta.num_classes == 20
    assert np.abs(predictor(x) - DygraphPredictor(small)(x)).max() <= 1e-4
    assert np.abs(predictor(x[:1]) - DygraphPredictor(small)(x[:1])).max() <= 1e-4  # dynamic batch


def test_native_trace_fails_cleanly_in_paddle2onnx(exported, tmp_path):
    """The fast graph (channel_shuffle, index_add) is not ONNX-convertible: a clear error, no abort, no file."""
    pytest.importorskip("paddle2onnx")
    with pytest.raises(ExportError, match="paddle2onnx failed on .*small"):
        paddle_to_onnx(exported, tmp_path / "native.onnx")
    assert not list(tmp_path.iterdir())


def test_missing_files_are_named(tmp_path):
    with pytest.raises(ExportError, match="nothing.json"):
        find_exported(tmp_path / "nothing")
    (tmp_path / "half.json").write_text("{}")
    with pytest.raises(ExportError, match="half.pdiparams"):
        find_exported(tmp_path / "half")
    bad = tmp_path / "bad.meta.json"
    bad.write_text("not json")
    with pytest.raises(ExportError, match="bad.meta.json"):
        ExportMeta.load(bad)


@pytest.mark.slow
def test_export_cli_official_checkpoint(tmp_path, capsys):
    """Official converted torch checkpoint → Paddle Inference + ONNX, checked against dygraph by the CLI."""
    from conftest import fixture_path

    pytest.importorskip("paddle2onnx")
    pytest.importorskip("onnxruntime")
    src = fixture_path("cdnv2_a_s0_converted.pth.tar")
    out = tmp_path / "cdnv2_a"
    assert export_main(["cdnv2_a", "--weights", str(src), "-o", str(out), "--onnx", "--check",
                        "--threads", "1"]) == 0
    text = capsys.readouterr().out
    assert text.count("(ok,") == 2, text
    meta = json.loads((tmp_path / "cdnv2_a.meta.json").read_text())
    assert meta["model"] == "cdnv2_a" and meta["preprocess"]["interpolation"] == "bicubic"
    assert (tmp_path / "cdnv2_a.onnx").is_file() and (tmp_path / "cdnv2_a.meta.json").is_file()


def test_export_cli_errors(tmp_path, capsys):
    assert export_main(["cdnv2_z", "-o", str(tmp_path / "x")]) == 1
    assert "cdnv2_z" in capsys.readouterr().err
    assert export_main(["cdnv2_a", "--weights", str(tmp_path / "missing.pdparams"), "-o", str(tmp_path / "x")]) == 1
    assert "missing.pdparams" in capsys.readouterr().err


@pytest.mark.slow
def test_export_writes_onnx_by_default_and_infer_prefers_it(tmp_path, monkeypatch):
    """The fastest CPU path is the default: export writes <OUT>.onnx when paddle2onnx is there, and an export
    prefix runs in onnxruntime when its .onnx sits beside it (Paddle Inference otherwise)."""
    import ppcdnv2.deploy.cli as dcli
    from ppcdnv2.deploy import load_predictor

    out = tmp_path / "auto" / "m"
    assert export_main(["converted_cdnv2_a", "-o", str(out)]) == 0
    assert out.with_name("m.onnx").is_file() and out.with_name("m.pdiparams").is_file()
    assert load_predictor(out).name.startswith("onnxruntime")
    assert load_predictor(out, backend="paddle").name.startswith("paddle-inference")
    out.with_name("m.onnx").unlink()
    assert load_predictor(out).name.startswith("paddle-inference")
    monkeypatch.setattr(dcli, "_paddle2onnx_installed", lambda: False)
    assert export_main(["converted_cdnv2_a", "-o", str(tmp_path / "no" / "m")]) == 0
    assert not (tmp_path / "no" / "m.onnx").exists()
    assert export_main(["converted_cdnv2_a", "-o", str(tmp_path / "x"), "--no-onnx", "--onnx"]) == 2
