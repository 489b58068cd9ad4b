"""GFNet training runs (``tools/train.py`` on a GFNet config, ``ppcdnv2.families.gfnet.engine``): the three
stages end to end on the digits demo, bit-exact resume inside stages, the output-folder rules, the config."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ppcdnv2.engine.checkpoint import read_checkpoint

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "configs" / "gfnet_cdnv2_demo.yaml"
# the demo, tiny: 64 training images in batches of 32 (2 steps/epoch), 32 held out, one epoch per stage
TINY = ["train.progress_bar=false", "data.limit_train=64", "data.limit_val=32", "train.batch_size=32",
        "eval.batch_size=32", "gfnet.epochs_stage1=1", "gfnet.epochs_stage2=1", "gfnet.epochs_stage3=1",
        "gfnet.find_thresholds_on=32", "model.arch.backbone_arch={stages: [1,1,1,1,1], growth: [8,8,8,16,16], "
        "fc_channel: 32}"]


def train(out, *extra, resume=False, expect=0):
    cmd = [sys.executable, str(REPO / "tools" / "train.py"), "-c", str(DEMO)]
    for o in TINY + [f"train.output={out}", *extra]:
        cmd += ["-o", o]
    if resume:
        cmd.append("--resume")
    p = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert p.returncode == expect, (p.stdout + p.stderr)[-4000:]
    return p.stdout + p.stderr


def test_demo_runs_all_three_stages(tmp_path):
    """Every stage runs and reports the top-1 of every step; the thresholds and multiply-adds are stored in
    model_final (so tools/eval.py needs no training images), and the condensed model computes what the
    training form computes."""
    import paddle

    from ppcdnv2.engine.build import model_config
    from ppcdnv2.engine.config import load_config
    from ppcdnv2.weights import load_model, read_weights

    log = train(tmp_path)
    for name in ("checkpoint_last.safetensors", "config.yaml", "log.csv", "model_stage1.pdparams",
                 "model_stage2.pdparams", "model_stage3.pdparams", "model_final.pdparams",
                 "model_condensed.pdparams", "budget.png", "budget.json", "summary.json", "curves.png"):
        assert (tmp_path / name).is_file(), name
    for stage in (1, 2, 3):
        assert f"stage {stage} epoch 1/1:" in log and f"stage {stage} done" in log
    rows = (tmp_path / "log.csv").read_text().splitlines()
    assert rows[0].startswith("epoch,stage,") and len(rows) == 4
    for row in rows[1:]:  # three per-step top-1 values (T = 3) in every row
        assert len(row.split(",")[9].split()) == 3
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert set(summary["stages"]) == {"1", "2", "3"} and len(summary["val_step_top1"]) == 3
    assert summary["condensed_same_predictions"] is True
    final = read_weights(tmp_path / "model_final.pdparams")
    assert final["thresholds"].shape == (39, 3) and np.isfinite(final["thresholds"][:, :-1]).all()
    assert np.isfinite(final["flops"]).all() and np.all(np.diff(final["flops"]) > 0)
    assert len(summary["budget"]["budgets"]) == 39

    cfg = load_config(str(tmp_path / "config.yaml"))
    mcfg = model_config(cfg["model"], 10)
    train_form, _ = load_model(tmp_path / "model_final.pdparams", mcfg)
    condensed, form = load_model(tmp_path / "model_condensed.pdparams", mcfg)
    assert form == "converted" and train_form.form == "train"
    train_form.eval(), condensed.eval()
    x = paddle.to_tensor(np.random.default_rng(0).standard_normal([4, 3, 128, 128]).astype("float32"))
    np.testing.assert_allclose(condensed(x).numpy(), train_form(x).numpy(), rtol=1e-4, atol=1e-4)


def test_training_curves_draw_every_step_of_every_stage(tmp_path):
    """curves.png: one held-out top-1 line per step with the log's values, the PPO reward beside the losses."""
    from ppcdnv2.families.gfnet.visualize import save_training_curves, training_figure

    rows = [{"epoch": 1, "stage": 1, "train_loss": 2.1, "reward": "", "val_step_top1": "40.00 61.50 70.25"},
            {"epoch": 2, "stage": 1, "train_loss": 1.2, "reward": "", "val_step_top1": "45.00 70.00 80.00"},
            {"epoch": 3, "stage": 2, "train_loss": "", "reward": 0.031, "val_step_top1": "45.00 75.00 82.50"},
            {"epoch": 4, "stage": 3, "train_loss": 0.9, "reward": "", "val_step_top1": "46.00 78.00 85.00"}]
    fig = training_figure(rows)
    top1 = fig.axes[0]
    lines = top1.get_lines()
    assert [l.get_label() for l in lines] == ["step 1 (glance)", "step 2", "step 3"]
    np.testing.assert_array_equal(lines[1].get_xdata(), [1, 2, 3, 4])
    np.testing.assert_array_equal(lines[2].get_ydata(), [70.25, 80.0, 82.5, 85.0])
    assert [t.get_text() for t in top1.texts] == ["stage 1\nrandom patches", "stage 2\nPPO",
                                                  "stage 3\npolicy's patches"]
    loss_line, = fig.axes[1].get_lines()
    np.testing.assert_array_equal(loss_line.get_ydata(), [2.1, 1.2, 0.9])
    reward_line, = fig.axes[2].get_lines()  # the twin axis
    np.testing.assert_array_equal(reward_line.get_xdata(), [3])
    assert save_training_curves(rows, tmp_path / "c.png").read_bytes()[:4] == b"\x89PNG"
    assert training_figure([]) is None


@pytest.mark.slow
def test_killed_inside_stages_then_resumed_is_bit_identical(tmp_path):
    """Killed inside stage 1 (SGD, condensation progress) and again inside stage 2 (PPO's Adam), resumed
    each time: the final weights equal an uninterrupted run's byte for byte."""
    quick = ["gfnet.epochs_stage1=2", "train.save_every_iters=1", "export.condense=false"]
    ref = tmp_path / "ref"
    train(ref, *quick)  # 4 + 2 + 2 iterations
    run = tmp_path / "run"
    train(run, *quick, "debug.exit_after_iters=3", expect=3)
    ck = read_checkpoint(run / "checkpoint_last.safetensors")
    assert (ck.meta["gfnet"]["stage"], ck.meta["step"]) == (1, 3)
    log = train(run, *quick, "debug.exit_after_iters=3", resume=True, expect=3)  # iterations 4, 5, 6: dies in stage 2
    assert "resumed from" in log and "stage 1, step 3" in log
    ck = read_checkpoint(run / "checkpoint_last.safetensors")
    assert (ck.meta["gfnet"]["stage"], ck.meta["step"]) == (2, 1)
    assert any(k.endswith("moment1_0") for k in ck.opt)  # Adam's state is in the checkpoint
    train(run, *quick, resume=True)
    for name in ("model_stage1.pdparams", "model_stage2.pdparams", "model_final.pdparams"):
        assert (ref / name).read_bytes() == (run / name).read_bytes(), name
    strip = lambda rows: [{k: v for k, v in r.items() if k not in ("epoch_seconds", "images_per_second")} for r in rows]
    ca, cb = read_checkpoint(ref / "checkpoint_last.safetensors"), read_checkpoint(run / "checkpoint_last.safetensors")
    assert strip(ca.meta["history"]) == strip(cb.meta["history"]) and len(ca.meta["history"]) == 4


def test_refuses_a_folder_holding_a_run(tmp_path, capsys):
    """Like the main trainer, a GFNet run does not write over another run without --resume or --overwrite."""
    from ppcdnv2.engine.cli import train_main

    (tmp_path / "checkpoint_last.safetensors").write_bytes(b"an earlier run")
    argv = ["-c", str(DEMO), "-o", f"train.output={tmp_path}"]
    assert train_main(argv) == 1
    assert "--resume" in capsys.readouterr().err
    assert (tmp_path / "checkpoint_last.safetensors").read_bytes() == b"an earlier run"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint_last.safetensors"]


def test_hyperparameters_from_the_configuration_and_the_gfnet_section():
    """Upstream's per-backbone recipe by default, MobileNetV3's setup for GF-CondenseNetV2, the gfnet section
    overriding single values; a misspelt key or a bad stage list is refused."""
    from ppcdnv2.engine.build import model_config
    from ppcdnv2.engine.config import ConfigError, load_config
    from ppcdnv2.engine.trainer import TrainError
    from ppcdnv2.families.gfnet.engine import _check_stages, gfnet_hparams

    cfg = load_config(str(REPO / "configs" / "gfnet_regnety_600m_p96_t5.yaml"))
    hp = gfnet_hparams(model_config(cfg["model"]), cfg["gfnet"], cfg["train"]["batch_size"])
    assert (hp.kind, hp.backbone_lr, hp.weight_decay, hp.batch_size) == ("regnet", 0.02, 5e-5, 256)
    cfg = load_config(str(REPO / "configs" / "gfnet_cdnv2_demo.yaml"), ["gfnet.train_model_prime=null"])
    hp = gfnet_hparams(model_config(cfg["model"], 10), cfg["gfnet"], 8)
    assert (hp.kind, hp.dsn_ratio, hp.train_model_prime, hp.dropout) == ("mobilenetv3", 5.0, False, 0.0)
    assert hp.epochs_stage1 == 30 and hp.backbone_lr == 0.1  # the demo's own values
    with pytest.raises(ConfigError, match="epoch_stage1"):
        load_config(str(DEMO), ["gfnet.epoch_stage1=3"])
    with pytest.raises(TrainError, match="gfnet.stages"):
        _check_stages([2, 1])
    assert _check_stages([2, 3]) == [2, 3]
