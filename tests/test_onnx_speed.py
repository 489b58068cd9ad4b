"""The faster ONNX deployment path: exact graph rewrites, onnxruntime settings, micro-batches, opt-in int8.

A small CondenseNetV2 with C's group structure (one layer per block: grouped 3x3 convolutions of 4→1, 8→2,
16→4, 32→8 and 64→16 channels per group, so every rewrite of ``ppcdnv2.deploy.onnx_opt`` applies) and every
parameter and index random; rewrites are also checked one by one on hand-made graphs.
"""
import json

import numpy as np
import pytest

import ppcdnv2
from ppcdnv2.deploy import DygraphPredictor, ExportMeta, OnnxPredictor, Preprocess, export_onnx
from ppcdnv2.weights import load_state_dict

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
pytest.importorskip("paddle2onnx")

from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from ppcdnv2.deploy.onnx_opt import _Graph, _regroup_small_group_convs, optimize_onnx, optimize_onnx_file  # noqa: E402
from ppcdnv2.deploy.ort_session import session_options  # noqa: E402

CFG = ppcdnv2.preset("cdnv2_c", stages=(1, 1, 1, 1, 1), fc_channel=64, num_classes=10)


def _batch(n, size=224, seed=0):
    return np.random.default_rng(seed).standard_normal((n, 3, size, size)).astype(np.float32)


@pytest.fixture(scope="module")
def small():
    """Trained-looking random weights: the torch reference randomised with its BatchNorms fitted to N(0, 1)
    images (logits that depend on the image), converted and condensed as a user's checkpoint would be."""
    pytest.importorskip("torch")
    from ppcdnv2.convert import official_state_to_model
    from ppcdnv2.families.condensenet.reference import build_reference, randomize_
    from ppcdnv2.torch_tools import state_dict_numpy

    ref = randomize_(build_reference(CFG, "train", sfr_index="dense"), seed=3)
    train = ppcdnv2.build_condensenetv2(CFG, form="train")
    load_state_dict(train, official_state_to_model(state_dict_numpy(ref), train))
    return ppcdnv2.condense(train).eval()


@pytest.fixture(scope="module")
def exports(small, tmp_path_factory):
    d = tmp_path_factory.mktemp("onnx")
    meta = ExportMeta(model="small", num_classes=10, preprocess=Preprocess(interpolation="bilinear"), labels=None)
    raw = export_onnx(small, d / "raw.onnx", meta, optimize=False)
    optimize_onnx_file(raw, d / "opt.onnx")  # what export_onnx does by default (test_export checks that path)
    meta.save(d / "opt.meta.json")
    return {"raw": raw, "opt": d / "opt.onnx"}


def _session(model_or_path):
    data = model_or_path.SerializeToString() if hasattr(model_or_path, "SerializeToString") else str(model_or_path)
    return ort.InferenceSession(data, session_options(1), providers=["CPUExecutionProvider"])


def test_every_rewrite_fires_and_the_logits_stay_the_dygraph_models(small, exports):
    """The exported (rewritten) graph gives the dygraph logits at any batch and image size; each rewrite was
    applied (a rewrite that silently stops matching paddle2onnx's output would lose its speed-up unseen)."""
    _, counts = optimize_onnx(onnx.load(str(exports["raw"])))
    assert counts["bn_folded_through_shuffle"] == 5 and counts["activation_moved_before_shuffle"] == 5, counts
    assert counts["group_conv_merged"] == 2 and counts["group_conv_as_depthwise"] == 2, counts
    assert counts["conv_add_as_matmul"] >= 4 and counts["identity_removed"] > 0, counts
    ops = [n.op_type for n in onnx.load(str(exports["opt"])).graph.node]
    raw_ops = [n.op_type for n in onnx.load(str(exports["raw"])).graph.node]
    assert "Identity" not in ops and ops.count("BatchNormalization") == raw_ops.count("BatchNormalization") - 5
    predictor = OnnxPredictor(exports["opt"], threads=1)
    for n, size in ((3, 224), (1, 240)):
        x = _batch(n, size, seed=n)
        expected = DygraphPredictor(small)(x)
        if n > 1:
            assert expected.std(0).mean() > 0.2  # the logits depend on the image: the comparison means something
        assert np.abs(predictor(x) - expected).max() <= 1e-4


def _conv_gather_bn_graph(index, act="Relu"):
    rng = np.random.default_rng(0)
    c = len(index)
    inits = {"w": rng.standard_normal((c, 4, 1, 1)).astype(np.float32), "idx": np.asarray(index, np.int64),
             "s": rng.uniform(0.5, 1.5, c).astype(np.float32), "b": rng.standard_normal(c).astype(np.float32),
             "m": rng.standard_normal(c).astype(np.float32), "v": rng.uniform(0.5, 2, c).astype(np.float32)}
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"]), helper.make_node("Gather", ["c", "idx"], ["g"], axis=1),
             helper.make_node("BatchNormalization", ["g", "s", "b", "m", "v"], ["n"]),
             helper.make_node(act, ["n"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 4, 5, 5])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(v, k) for k, v in inits.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)


def test_bn_folds_through_a_permutation_only():
    """BatchNorm after a channel permutation folds into the conv (same outputs, BN gone, activation next to the
    conv); a Gather that repeats channels is not a permutation and must be left alone."""
    x = np.random.default_rng(1).standard_normal((2, 4, 5, 5)).astype(np.float32)
    perm = [3, 0, 5, 1, 4, 2]
    model = _conv_gather_bn_graph(perm)
    expected = _session(model).run(None, {"x": x})[0]
    folded, counts = optimize_onnx(_conv_gather_bn_graph(perm))
    assert counts["bn_folded_through_shuffle"] == 1 and counts["activation_moved_before_shuffle"] == 1
    assert [n.op_type for n in folded.graph.node] == ["Conv", "Relu", "Gather"]
    np.testing.assert_allclose(_session(folded).run(None, {"x": x})[0], expected, rtol=1e-5, atol=1e-5)
    kept, counts = optimize_onnx(_conv_gather_bn_graph([0, 0, 1, 2, 3, 4]))
    assert counts["bn_folded_through_shuffle"] == 0
    assert "BatchNormalization" in [n.op_type for n in kept.graph.node]


@pytest.mark.parametrize("in_g,out_g,expect", [(4, 1, "depthwise"), (8, 2, "depthwise"), (16, 4, "merged"),
                                               (32, 8, "merged"), (64, 16, None)])
def test_grouped_convs_rewritten_exactly(in_g, out_g, expect):
    """Each of C's grouped 3x3 shapes (8 groups) gets the form measured fastest and computes the same outputs;
    the one already in onnxruntime's blocked layout (64 → 16 per group) is left as it is."""
    groups, rng = 8, np.random.default_rng(in_g)
    w = rng.standard_normal((out_g * groups, in_g, 3, 3)).astype(np.float32)
    perm = rng.permutation(in_g * groups).astype(np.int64)  # a shuffle before it, as in the LGC
    nodes = [helper.make_node("Gather", ["x", "p"], ["s"], axis=1),
             helper.make_node("Conv", ["s", "w"], ["y"], group=groups, pads=[1, 1, 1, 1])]
    x_info = helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, in_g * groups, 9, 9])
    graph = helper.make_graph(nodes, "g", [x_info],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, out_g * groups, 9, 9])],
                              [numpy_helper.from_array(w, "w"), numpy_helper.from_array(perm, "p")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
    x = rng.standard_normal((2, in_g * groups, 9, 9)).astype(np.float32)
    expected = _session(model).run(None, {"x": x})[0]
    merged, depthwise = _regroup_small_group_convs(_Graph(model.graph))
    assert (merged, depthwise) == {"merged": (1, 0), "depthwise": (0, 1), None: (0, 0)}[expect]
    onnx.checker.check_model(model)
    np.testing.assert_allclose(_session(model).run(None, {"x": x})[0], expected, rtol=1e-4, atol=1e-4)


def test_micro_batches_give_the_whole_batchs_logits(exports):
    """A batch cut into micro-batches (the default) gives the logits of one whole-batch call, any batch size."""
    x = _batch(5, seed=9)
    whole = OnnxPredictor(exports["opt"], threads=1, micro_batch=None)(x)
    assert whole.shape == (5, 10)
    np.testing.assert_allclose(OnnxPredictor(exports["opt"], threads=1)(x), whole, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(OnnxPredictor(exports["opt"], threads=1, micro_batch=3)(x), whole, rtol=1e-5, atol=1e-5)


def test_session_options():
    """Worker threads must not spin between operators when there are several (a descheduled spinner stalls every
    operator on a busy machine); one thread has no pool; spinning=True restores onnxruntime's default."""
    key = "session.intra_op.allow_spinning"
    assert session_options(2).get_session_config_entry(key) == "0"
    assert session_options(1).get_session_config_entry(key) == "1"
    assert session_options(2, spinning=True).get_session_config_entry(key) == "1"
    opts = session_options(3)
    assert opts.intra_op_num_threads == 3 and opts.inter_op_num_threads == 1
    assert opts.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_ALL


def test_spin_reaches_the_session_from_the_api_and_infer(exports, tmp_path, monkeypatch):
    """load_predictor(spinning=True) and `infer.py --spin` give a spinning session; the default does not."""
    import ppcdnv2.deploy.predictor as pred
    from ppcdnv2.deploy.cli import infer_main
    from PIL import Image

    assert pred.load_predictor(exports["opt"], threads=2).spinning is False
    assert pred.load_predictor(exports["opt"], threads=2, spinning=True).spinning is True
    made = []
    real = pred.OnnxPredictor

    def spy(*args, **kwargs):
        made.append(real(*args, **kwargs))
        return made[-1]

    monkeypatch.setattr(pred, "OnnxPredictor", spy)
    Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(tmp_path / "img.png")
    for flags, expect in (([], False), (["--spin"], True)):
        assert infer_main(["-m", str(exports["opt"]), str(tmp_path / "img.png"), "--threads", "2", *flags]) == 0
        assert made[-1].spinning is expect


def test_int8_quantisation(exports, tmp_path):
    """int8 goes to its own file, says so in its metadata, leaves the float32 file untouched, and agrees with
    float32 on the top-1 class of images from the calibration distribution (not the calibration images)."""
    from ppcdnv2.deploy.quantize import compare_logits, quantization_of, quantize_onnx

    before = exports["opt"].read_bytes()
    dst = tmp_path / "opt.int8.onnx"
    record = quantize_onnx(exports["opt"], dst, _batch(8, seed=21), "noise")
    assert exports["opt"].read_bytes() == before and quantization_of(exports["opt"]) is None
    assert quantization_of(dst) == record and record["scheme"] == "int8" and record["calibration_images"] == 8
    assert any(n.op_type == "QuantizeLinear" for n in onnx.load(str(dst)).graph.node)
    x = _batch(32, seed=22)
    cmp = compare_logits(OnnxPredictor(exports["opt"], threads=1)(x), OnnxPredictor(dst, threads=1)(x))
    assert cmp["top1_agreement"] >= 0.9 and cmp["max_abs_diff"] < 0.5 * cmp["reference_std"], cmp
    with pytest.raises(ValueError, match="must not replace"):
        quantize_onnx(exports["opt"], exports["opt"], _batch(2), "noise")


def test_calibration_sources(tmp_path):
    """Folder, digits and scikit-image sources give preprocessed float32 batches; anything else is refused."""
    from PIL import Image

    from ppcdnv2.deploy.quantize import calibration_batch

    pre = Preprocess(resize=32, crop=32, interpolation="bilinear", mean=(0.5,) * 3, std=(0.5,) * 3)
    digits = calibration_batch("digits", pre, 6)
    assert digits.shape == (6, 3, 32, 32) and digits.dtype == np.float32
    assert -1.01 <= digits.min() < digits.max() <= 1.01
    for i in range(3):
        Image.fromarray(np.full((40, 50, 3), 60 * i, np.uint8)).save(tmp_path / f"{i}.png")
    folder = calibration_batch(tmp_path, pre, 2)
    assert folder.shape == (2, 3, 32, 32) and not np.allclose(folder[0], folder[1])
    with pytest.raises(ValueError, match="not a folder"):
        calibration_batch(tmp_path / "missing", pre)
    pytest.importorskip("skimage")
    photos = calibration_batch("skimage", Preprocess(), 4)
    assert photos.shape == (4, 3, 224, 224) and photos.std() > 0.3


@pytest.mark.slow
def test_export_cli_int8_and_infer(tmp_path, capsys):
    """``--quantize int8`` writes <OUT>.int8.onnx with quantisation metadata beside an unchanged float32
    <OUT>.onnx, ``--check`` reports the int8 deviation, and infer.py classifies with the int8 file."""
    from PIL import Image

    from ppcdnv2.deploy.cli import export_main, infer_main

    out = tmp_path / "c"
    assert export_main(["converted_cdnv2_a", "-o", str(out), "--quantize", "int8", "--calibration", "noise",
                        "--calibration-images", "4", "--check", "--threads", "1"]) == 0
    text = capsys.readouterr().out
    assert text.count("(ok,") == 2 and "check int8 vs float32" in text and "c.int8.onnx" in text, text
    meta = json.loads((tmp_path / "c.int8.meta.json").read_text())
    assert meta["quantization"]["scheme"] == "int8" and meta["quantization"]["calibration"] == "noise"
    assert json.loads((tmp_path / "c.meta.json").read_text()).get("quantization") is None
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 80, 3), dtype=np.uint8)).save(tmp_path / "img.png")
    assert infer_main(["-m", str(tmp_path / "c.int8.onnx"), str(tmp_path / "img.png"), "--json", "-k", "2"]) == 0
    assert len(json.loads(capsys.readouterr().out)["top"]) == 2
    assert export_main(["converted_cdnv2_a", "-o", str(tmp_path / "x"), "--quantize", "int8", "--no-onnx"]) == 2
