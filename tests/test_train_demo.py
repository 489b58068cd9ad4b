"""The README demo, exactly as documented: trains on the embedded digits on CPU, condenses, >= 95 % held-out
top-1, the condensed model predicts exactly as the training form, and eval.py reproduces the numbers."""
import csv
import json
from pathlib import Path

import pytest

from conftest import run_training

pytestmark = pytest.mark.slow  # training runs, subprocesses: outside the quick subset (-m "not slow")

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    return out, run_training("demo.yaml", out)


def test_demo_reaches_95_percent_and_condenses_exactly(demo_run):
    out, log = demo_run
    s = json.loads((out / "summary.json").read_text())
    assert s["weights"] == "ema"
    assert s["converted_form"]["count"] == 359  # the whole held-out split
    assert s["converted_form"]["top1"] >= 95.0, log[-3000:]
    assert s["same_predictions"] is True
    assert s["converted_form"]["top1"] == s["train_form"]["top1"]
    assert s["converted_form"]["loss"] == pytest.approx(s["train_form"]["loss"], abs=1e-4)
    rows = list(csv.DictReader(open(out / "log.csv")))
    assert [int(r["epoch"]) for r in rows] == list(range(1, 11))
    assert float(rows[-1]["train_loss"]) < float(rows[0]["train_loss"])
    assert all(float(r["images_per_second"]) > 0 for r in rows)
    assert (out / "curves.png").read_bytes()[:4] == b"\x89PNG"


def test_condensed_weights_evaluate_the_same_with_eval_tool(demo_run, capsys):
    out, _ = demo_run
    from ppcdnv2.engine.evalrun import run_eval
    from ppcdnv2.weights import read_weights

    s = json.loads((out / "summary.json").read_text())
    state = read_weights(out / "model_condensed.pdparams")
    assert not any(k.endswith("._mask") for k in state) and any(k.endswith(".index") for k in state)
    rep = run_eval(str(out / "model_condensed.pdparams"), str(REPO / "configs" / "demo.yaml"), progress_bar=False)
    assert rep["form"] == "converted" and rep["top1"] == s["converted_form"]["top1"]
    # the training checkpoint alone (config read from it), condensed on the fly
    rep2 = run_eval(str(out / "checkpoint_last.safetensors"), form="converted", progress_bar=False)
    assert rep2["top1"] == rep["top1"] and rep2["count"] == 359
    assert "MFLOPs" in capsys.readouterr().out
