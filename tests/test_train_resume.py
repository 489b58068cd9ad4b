"""Checkpoints: an interrupted run resumed with --resume ends bit-identical to an uninterrupted one (CPU),
and a process killed while writing a checkpoint leaves the previous one loadable."""
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ppcdnv2.engine.checkpoint import CheckpointError, read_checkpoint

pytestmark = pytest.mark.slow  # training runs, subprocesses: outside the quick subset (-m "not slow")

REPO = Path(__file__).resolve().parents[1]
# a small model on 96 digits: 6 iterations per epoch, 3 epochs
QUICK = ["train.progress_bar=false", "data.limit_train=96", "data.limit_val=40", "train.batch_size=16",
         "train.epochs=3", "model.arch.stages=[1,1,1]", "model.arch.growth=[4,8,8]"]


def train(out, *extra, resume=False, expect=0):
    cmd = [sys.executable, str(REPO / "tools" / "train.py"), "-c", str(REPO / "configs" / "demo.yaml")]
    for o in QUICK + [f"train.output={out}", *extra]:
        cmd += ["-o", o]
    if resume:
        cmd.append("--resume")
    p = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert p.returncode == expect, p.stdout[-2000:] + p.stderr[-3000:]
    return p.stdout + p.stderr


def assert_same_run(a: Path, b: Path):
    ca, cb = read_checkpoint(a / "checkpoint_last.safetensors"), read_checkpoint(b / "checkpoint_last.safetensors")
    for group in ("model", "ema", "opt"):
        A, B = ca.arrays[group], cb.arrays[group]
        assert sorted(A) == sorted(B) and A
        diff = [k for k in A if not np.array_equal(A[k], B[k])]
        assert not diff, f"{group}: {diff[:5]} differ"
    strip = lambda h: [{k: v for k, v in r.items() if k not in ("epoch_seconds", "images_per_second")} for r in h]
    assert strip(ca.meta["history"]) == strip(cb.meta["history"])
    assert ca.meta["step"] == cb.meta["step"] == 18
    for name in ("model_condensed.pdparams", "model_train.pdparams"):
        assert (a / name).read_bytes() == (b / name).read_bytes()


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    out = tmp_path_factory.mktemp("uninterrupted")
    train(out)
    return out


def test_uninterrupted_run_condenses_every_layer(reference):
    ck = read_checkpoint(reference / "checkpoint_last.safetensors")
    masks = {k: v for k, v in ck.model.items() if k.endswith("._mask")}
    assert masks
    for k, m in masks.items():
        assert ck.model[k.replace("_mask", "_stage")][0] == 3  # factor 4: stages 0..3, the last reached
        assert m.mean() == pytest.approx(0.25)  # 1/condense_factor of the connections kept
        assert np.array_equal(ck.ema[k], m)  # EMA masks copied, never averaged
    assert len(ck.meta["history"]) == 3 and (reference / "log.csv").read_text().count("\n") == 4
    assert (reference / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_killed_mid_epoch_then_resumed_is_bit_identical(reference, tmp_path):
    train(tmp_path, "debug.exit_after_iters=8", expect=3)  # dies in epoch 2; last checkpoint: end of epoch 1
    assert read_checkpoint(tmp_path / "checkpoint_last.safetensors").meta["step"] == 6
    assert not (tmp_path / "model_condensed.pdparams").exists()
    log = train(tmp_path, resume=True)
    assert "resumed from" in log and "at step 6" in log
    assert_same_run(reference, tmp_path)


def test_resume_from_an_iteration_checkpoint(reference, tmp_path):
    train(tmp_path, "train.save_every_iters=4", "debug.exit_after_iters=10", expect=3)
    assert read_checkpoint(tmp_path / "checkpoint_last.safetensors").meta["step"] == 8  # inside epoch 2
    log = train(tmp_path, "train.save_every_iters=4", resume=True)
    assert "at step 8 (epoch 1, batch 2 of 6)" in log
    assert_same_run(reference, tmp_path)


def test_kill_during_checkpoint_write_keeps_previous(reference, tmp_path):
    train(tmp_path, "debug.kill_in_checkpoint=2", expect=-signal.SIGKILL)  # SIGKILL halfway through write 2
    partial = list(tmp_path.glob(".checkpoint_last.safetensors.*.tmp"))
    assert len(partial) == 1
    with pytest.raises(CheckpointError, match="not a readable checkpoint"):
        read_checkpoint(partial[0])
    ck = read_checkpoint(tmp_path / "checkpoint_last.safetensors")  # the previous one, intact
    assert ck.meta["step"] == 6 and ck.model and ck.ema and ck.opt
    train(tmp_path, resume=True)
    assert not list(tmp_path.glob(".checkpoint_last.safetensors.*.tmp"))  # stale temporary cleaned up
    assert_same_run(reference, tmp_path)


def test_resume_refuses_a_different_batch(reference, tmp_path):
    import shutil

    shutil.copy(reference / "checkpoint_last.safetensors", tmp_path / "checkpoint_last.safetensors")
    log = train(tmp_path, "train.batch_size=32", resume=True, expect=1)
    assert "resume with the same data and batch" in log
    (tmp_path / "junk.safetensors").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="junk.safetensors"):
        read_checkpoint(tmp_path / "junk.safetensors")
