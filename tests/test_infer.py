"""tools/infer.py and ppcdnv2.deploy.classify: images → top-k labels, from exports and from weights files."""
import json

import numpy as np
import paddle
import pytest
from PIL import Image

import ppcdnv2
from helpers_convert import random_converted_state
from ppcdnv2.data.transforms import EvalTransform
from ppcdnv2.deploy import (DygraphPredictor, ExportMeta, Preprocess, classify, export_inference, imagenet_classes,
                            iter_images, load_labels, topk)
from ppcdnv2.deploy.cli import infer_main
from ppcdnv2.weights import load_state_dict, save_weights, state_dict_numpy

CFG = ppcdnv2.preset("cdnv2_a", stages=(1, 1, 1, 2, 1), growth=(8, 8, 8, 16, 16), fc_channel=32, num_classes=12)


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """A folder of small varied images: RGB jpg, grayscale png, RGBA png in a subfolder, plus a non-image file."""
    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (300, 400, 3), dtype=np.uint8)).save(root / "wide.jpg")
    Image.fromarray(rng.integers(0, 255, (260, 230), dtype=np.uint8)).save(root / "gray.png")
    (root / "sub").mkdir()
    Image.fromarray(rng.integers(0, 255, (240, 240, 4), dtype=np.uint8)).save(root / "sub" / "rgba.png")
    (root / "notes.txt").write_text("not an image")
    return root


@pytest.fixture(scope="module")
def small():
    model = ppcdnv2.build_condensenetv2(CFG, form="converted")
    load_state_dict(model, random_converted_state(model, seed=2))
    return model.eval()


def _expected(model, paths, preprocess, k):
    tf = EvalTransform(preprocess.resize, preprocess.crop, preprocess.interpolation, preprocess.mean, preprocess.std)
    x = np.stack([tf(Image.open(p).convert("RGB")) for p in paths])
    with paddle.no_grad():
        logits = model(paddle.to_tensor(x)).numpy().astype(np.float64)
    probs = np.exp(logits - logits.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    return [(list(np.argsort(-p)[:k]), np.sort(p)[::-1][:k]) for p in probs]


def test_imagenet_class_names():
    names = imagenet_classes()
    assert len(names) == 1000 and len(set(names)) == 1000  # the two repeated WordNet names are told apart
    # well-known ILSVRC-2012 indexes (sorted WordNet ids)
    assert (names[0], names[1], names[281], names[409], names[999]) == (
        "tench", "goldfish", "tabby", "analog clock", "toilet tissue")
    assert load_labels(None, 10) is None


def test_topk_orders_probabilities():
    logits = np.random.default_rng(1).standard_normal((4, 30))
    out = topk(logits, 5, [f"c{i}" for i in range(30)])
    for row, top in zip(logits, out):
        assert [i for i, _, _ in top] == list(np.argsort(-row)[:5])
        probs = [p for _, _, p in top]
        assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1 + 1e-9
        assert all(name == f"c{i}" for i, name, _ in top)


def test_iter_images_expands_folders_and_names_missing(images):
    found = list(iter_images([images]))
    assert [p.name for p in found] == ["gray.png", "rgba.png", "wide.jpg"]
    with pytest.raises(FileNotFoundError, match="nope.jpg"):
        list(iter_images([images / "nope.jpg"]))


def test_cli_on_export_matches_dygraph(small, images, tmp_path, capsys):
    pre = Preprocess(interpolation="bicubic")
    labels = tmp_path / "labels.txt"
    labels.write_text("# twelve classes\n" + "\n".join(f"class {i}" for i in range(12)) + "\n")
    export_inference(small, tmp_path / "small", ExportMeta(model="small", num_classes=12, preprocess=pre, labels=None))
    assert infer_main(["-m", str(tmp_path / "small"), str(images), "--json", "-k", "3", "--labels", str(labels),
                       "--batch-size", "2", "--threads", "1"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    paths = [r["image"] for r in rows]
    assert [p.rsplit("/", 1)[-1] for p in paths] == ["gray.png", "rgba.png", "wide.jpg"]
    for row, (classes, probs) in zip(rows, _expected(small, paths, pre, 3)):
        assert [t["class"] for t in row["top"]] == classes
        assert [t["label"] for t in row["top"]] == [f"class {c}" for c in classes]
        np.testing.assert_allclose([t["prob"] for t in row["top"]], probs, atol=1e-5)


def test_cli_on_weights_file_with_imagenet_labels(images, tmp_path, capsys):
    """A .pdparams of the A preset (1000 classes) runs in dygraph with the packaged ImageNet names."""
    model = ppcdnv2.create_model("converted_cdnv2_a")
    load_state_dict(model, random_converted_state(model, seed=4))
    weights = save_weights(state_dict_numpy(model), tmp_path / "a.pdparams")
    img = images / "wide.jpg"
    assert infer_main(["-m", str(weights), "--arch", "cdnv2_a", str(img), "-k", "2", "--threads", "1"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == str(img) and len(lines) == 3
    (classes, probs), = _expected(model.eval(), [img], Preprocess.for_model("cdnv2_a"), 2)
    names = imagenet_classes()
    for line, c, p in zip(lines[1:], classes, probs):
        assert line.split()[0] == f"{p:.4f}" and line.endswith(f"{names[c]} ({c})")


def test_classify_with_parallel_workers_equals_single(small, images):
    single = classify(DygraphPredictor(small), [images], k=4, batch_size=3)
    from ppcdnv2.deploy import parallel

    split = classify(parallel(DygraphPredictor(small), 2), [images], k=4, batch_size=3)
    for a, b in zip(single, split):
        assert [t[0] for t in a.top] == [t[0] for t in b.top]
        np.testing.assert_allclose([t[2] for t in a.top], [t[2] for t in b.top], atol=1e-6)


def test_cli_errors_name_the_problem(images, tmp_path, capsys):
    assert infer_main(["-m", str(tmp_path / "none"), str(images)]) == 1
    assert "none.json" in capsys.readouterr().err
    assert infer_main(["-m", str(tmp_path / "w.pdparams"), str(images)]) == 1
    assert "model name" in capsys.readouterr().err
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8 not really a jpeg")
    model = ppcdnv2.create_model("converted_cdnv2_a")
    weights = save_weights(state_dict_numpy(model), tmp_path / "a.pdparams")
    assert infer_main(["-m", str(weights), "--arch", "cdnv2_a", str(bad)]) == 1
    assert "broken.jpg" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        infer_main(["-m", str(weights), str(bad), "--topk", "x"])
    assert e.value.code == 2


def test_topk_ranks_by_logits_when_probabilities_underflow():
    from ppcdnv2.deploy.classify import topk

    logits = np.array([[0.0, -800.0, -900.0, -1000.0, 50.0]], np.float32)  # softmax of ranks 2..5: 0.0
    (top,) = topk(logits, k=5)
    assert [i for i, _, _ in top] == [4, 0, 1, 2, 3]
    assert top[0][2] == pytest.approx(1.0) and top[2][2] == 0.0


def test_infer_image_backend_option_and_meta_field(tmp_path, capsys):
    """--image-backend cv2 classifies with OpenCV preprocessing; an export's .meta.json records a backend."""
    pytest.importorskip("cv2")
    from PIL import Image
    from skimage import data as skdata

    import ppcdnv2
    from ppcdnv2.deploy import ExportMeta, Preprocess, export_inference
    from ppcdnv2.deploy.cli import infer_main

    img = tmp_path / "cat.jpg"
    Image.fromarray(skdata.chelsea()).save(img)
    model = ppcdnv2.create_model("rexnet_090").eval()
    meta = ExportMeta(model="rexnet_090", num_classes=1000, preprocess=Preprocess(backend="cv2"))
    files = export_inference(model, tmp_path / "m", meta)
    assert ExportMeta.load(files.meta_file).preprocess.backend == "cv2"
    capsys.readouterr()
    for backend in ("pil", "cv2"):
        assert infer_main(["-m", str(files.prefix), str(img), "--json", "-k", "1", "--backend", "paddle",
                           "--image-backend", backend]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2 and all(json.loads(line)["top"] for line in lines)
