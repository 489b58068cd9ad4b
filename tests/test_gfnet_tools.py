"""tools/eval.py and tools/infer.py on GFNet, on a small ImageNet-layout folder of real photos
(scikit-image's samples): every step's top-1, the 39 budgets with stored or found thresholds, the plot and
JSON; early-exit classification with the exit step, the multiply-adds and the patch positions, pictures.

The weights are the GFNet fixtures' (``rule.py``, proven against the official code in test_gfnet.py). The
expected values come from the model's own ``glance_and_focus`` on the same photos (all steps of every
image, no early exit, no data pipeline of eval.py) and the budget rule proven exactly against upstream
(``evaluate_budget``); the class folders are named after what the last step predicts, so the per-step top-1
is not trivially 0.
"""
import json

import numpy as np
import paddle
import pytest
from PIL import Image

from conftest import REPO
from gfnet_fixtures import description, fields, fixture_model

NAME = "regnety_600m_p96_t5"
MODEL = f"gfnet_{NAME}"
PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field", "immunohistochemistry")
CLASS_IDS = [f"c{i:04d}" for i in range(1000)]  # a --labels file: the model's classes in index order


def _photo(name):
    from skimage import data as skdata

    img = getattr(skdata, name)()
    return Image.fromarray(img if img.ndim == 3 else np.stack([img] * 3, -1)).convert("RGB")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from ppcdnv2.data.transforms import EvalTransform
    from ppcdnv2.weights import save_weights, state_dict_numpy

    root = tmp_path_factory.mktemp("gfnet_tools")
    model = fixture_model(NAME)
    f = fields(NAME)
    model.set_budget_data(component_flops=[f["model_flops"], f["policy_flops"], f["fc_flops"]],
                          anytime_classification=f["anytime_classification"],
                          budgeted_batch_classification=f["budgeted_batch_classification"])
    weights = root / "gf.pdparams"
    save_weights(state_dict_numpy(model), weights)

    # upstream's evaluation preprocessing of this configuration, from the fixture's own record
    c = description(NAME)["config"]
    tf = EvalTransform(int(c["image_size"] / c["crop_pct"]), c["image_size"], c["dataset_interpolation"].lower())
    x = np.stack([tf(_photo(n)) for n in PHOTOS])
    with paddle.no_grad():
        r = model.glance_and_focus(paddle.to_tensor(x))
    softmax = paddle.nn.functional.softmax(r.logits, axis=-1).numpy()  # [T, N, C]
    labels = softmax[-1].argmax(1)  # each photo filed under its last-step prediction
    for split in ("val", "train"):
        for n, cls in zip(PHOTOS, labels):
            (root / "data" / split / CLASS_IDS[cls]).mkdir(parents=True, exist_ok=True)
            _photo(n).save(root / "data" / split / CLASS_IDS[cls] / f"{n}.png")
    (root / "labels.txt").write_text("\n".join(CLASS_IDS) + "\n")
    order = np.argsort([f"{CLASS_IDS[c]}/{n}.png" for n, c in zip(PHOTOS, labels)])  # the folder's order
    return dict(root=root, weights=weights, model=model, softmax=softmax[:, order], labels=labels[order],
                coords=r.coords.numpy()[:, order], photos=[PHOTOS[i] for i in order])


def _eval(setup, *extra):
    from ppcdnv2.engine.cli import eval_main

    return eval_main(["-c", str(REPO / "configs" / "gfnet.yaml"), "-o", f"model.name={MODEL}",
                      "-o", f"data.root={setup['root'] / 'data'}", "-o", "data.num_workers=0",
                      "--weights", str(setup["weights"]), "--labels", str(setup["root"] / "labels.txt"),
                      "--no-progress", *extra])


def test_eval_anytime_and_budgets_with_stored_thresholds(setup, tmp_path, capsys):
    from ppcdnv2.gfnet import evaluate_budget

    out_json, out_png = tmp_path / "r.json", tmp_path / "budget.png"
    assert _eval(setup, "--json", str(out_json), "--plot", str(out_png)) == 0
    text = capsys.readouterr().out
    rep = json.loads(out_json.read_text())
    sm, labels = setup["softmax"], setup["labels"]
    assert rep["count"] == len(PHOTOS) and rep["threshold_source"] == "stored"
    want_top1 = [100.0 * float(np.mean(sm[t].argmax(1) == labels)) for t in range(sm.shape[0])]
    assert [a["top1"] for a in rep["anytime"]] == pytest.approx(want_top1)
    assert want_top1[-1] == 100.0 and min(want_top1) < 100.0  # the steps do differ on these photos
    flops = fields(NAME)["flops"]
    assert [a["mmacs"] for a in rep["anytime"]] == flops
    stored = setup["model"].thresholds.numpy()
    for p, row in enumerate(rep["budgets"]):
        top1, cost = evaluate_budget(sm, labels, stored[p], flops)
        assert (row["budget"], row["top1"], row["mmacs"]) == (p + 1, top1, cost)
    # the released record is shown beside ours
    assert rep["record"]["anytime_top1"] == fields(NAME)["anytime_classification"]
    assert rep["record"]["budget_top1"] == fields(NAME)["budgeted_batch_classification"][1]
    assert "anytime classification" in text and "weights' record" in text and f"plot: {out_png}" in text
    with Image.open(out_png) as im:
        assert im.format == "PNG" and im.size[0] > 300


def test_eval_thresholds_found_on_training_images(setup, tmp_path):
    from ppcdnv2.gfnet import evaluate_budget

    out = tmp_path / "r.json"
    assert _eval(setup, "--thresholds", "train", "--train-images", "4", "--json", str(out)) == 0
    rep = json.loads(out.read_text())
    assert rep["threshold_source"] == "train" and rep["threshold_images"] == 4
    found = np.asarray([row["thresholds"] for row in rep["budgets"]], np.float32)
    assert found.shape == (39, 5) and (found[:, -1] == np.float32(-1e8)).all()
    assert not np.array_equal(found, setup["model"].thresholds.numpy())
    for row, thr in zip(rep["budgets"], found):  # each budget's figures follow from its thresholds
        assert (row["top1"], row["mmacs"]) == evaluate_budget(setup["softmax"], setup["labels"], thr,
                                                              fields(NAME)["flops"])


def test_eval_without_thresholds_says_how_to_find_them_and_writes_nothing(setup, tmp_path, capsys):
    import ppcdnv2
    from ppcdnv2.weights import save_weights, state_dict_numpy

    bare = ppcdnv2.create_model(MODEL)  # thresholds NaN: e.g. converted from an upstream train.py checkpoint
    bare.set_state_dict({k: v for k, v in setup["model"].state_dict().items() if k != "thresholds"})
    path = tmp_path / "bare.pdparams"
    save_weights(state_dict_numpy(bare), path)
    setup = dict(setup, weights=path)
    capsys.readouterr()
    assert _eval(setup, "--thresholds", "stored", "--json", str(tmp_path / "r.json"),
                 "--plot", str(tmp_path / "p.png")) == 1
    err = capsys.readouterr().err
    assert "no thresholds" in err and "--thresholds train" in err and "Traceback" not in err
    assert not (tmp_path / "r.json").exists() and not (tmp_path / "p.png").exists()


def test_infer_exits_where_the_thresholds_say_and_draws_the_patches(setup, tmp_path, capsys):
    from ppcdnv2.deploy.cli import infer_main

    budget = 10
    draw = tmp_path / "draw"
    assert infer_main([str(setup["root"] / "data" / "val"), "--model", str(setup["weights"]), "--arch", MODEL,
                       "--budget", str(budget), "--draw", str(draw), "--json", "--labels",
                       str(setup["root"] / "labels.txt")]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["image"].rsplit("/", 1)[1] for r in rows] == [f"{n}.png" for n in setup["photos"]]
    thr = setup["model"].thresholds.numpy()[budget - 1]
    sm = setup["softmax"]
    exits = []
    for i, r in enumerate(rows):
        passed = sm[:, i].max(1) >= thr
        t = int(np.argmax(passed)) if passed.any() else sm.shape[0] - 1
        exits.append(t)
        assert r["exit_step"] == t + 1 and r["steps"] == 5
        assert r["top"][0]["class"] == int(sm[t, i].argmax()) and r["top"][0]["label"] == CLASS_IDS[r["top"][0]["class"]]
        assert r["mmacs"] == fields(NAME)["flops"][t]
        assert [[p["row"], p["column"]] for p in r["patches"]] == setup["coords"][:t, i].tolist()
        with Image.open(r["picture"]) as im:
            assert im.format == "PNG"
    assert len(set(exits)) > 1  # some photos exit early, some run longer: the budget does act


def test_infer_without_budget_runs_every_step_and_prints_text(setup, capsys):
    from ppcdnv2.deploy.cli import infer_main

    photo = next((setup["root"] / "data" / "val").rglob("coffee.png"))
    assert infer_main([str(photo), "--model", str(setup["weights"]), "--arch", MODEL, "-k", "2"]) == 0
    out = capsys.readouterr().out
    assert "exit at step 5 of 5, 588 M multiply-adds" in out and len(out.strip().splitlines()) == 3


def test_stepwise_options_are_refused_for_single_output_models(tmp_path, capsys):
    from ppcdnv2.deploy.cli import infer_main
    from ppcdnv2.engine.cli import eval_main

    img = tmp_path / "a.png"
    _photo("coffee").save(img)
    assert infer_main([str(img), "--model", str(tmp_path / "x.pdparams"), "--arch", "cdnv2_a", "--budget", "3"]) == 1
    assert "step-wise models" in capsys.readouterr().err
    assert eval_main(["-c", str(REPO / "configs" / "demo.yaml"), "--weights", str(tmp_path / "x.pdparams"),
                      "--plot", str(tmp_path / "p.png")]) == 1
    assert "step-wise models" in capsys.readouterr().err
