"""GFNet training on many devices (``python -m paddle.distributed.launch``, two CPU processes over gloo) and
with ``train.amp``: stages 1 and 3 give the gradients of one process, the whole run works under launch, and
AMP on CPU takes the AMP code path in float32 (Paddle autocasts and scales on GPU only).

As in ``test_train_distributed.py``, BatchNorm normalises each device's half-batch, so the single process that
matches two devices runs the same global batch in ``train.micro_batches=2`` (the same two shards, the same
columns of the positions / policy noise); a full-batch step differs, which is checked too (so it can fail).
"""
import json
import subprocess
import sys

import numpy as np
import pytest

from test_gfnet_train_engine import DEMO, REPO, TINY


def run(tmp, name, overrides, nproc=1):
    script = [str(REPO / "tools" / "train.py"), "-c", str(DEMO)]
    for o in TINY + [f"train.output={tmp / name}"] + overrides:
        script += ["-o", o]
    logs = tmp / f"{name}_logs"
    launch = [sys.executable, "-m", "paddle.distributed.launch", "--nproc_per_node", str(nproc), "--log_dir", str(logs)]
    p = subprocess.run((launch if nproc > 1 else [sys.executable]) + script, cwd=tmp, capture_output=True, text=True,
                       timeout=600)
    text = p.stdout + p.stderr + "".join(f.read_text() for f in sorted(logs.glob("workerlog.*")))
    assert p.returncode == 0, text[-5000:]
    return text


@pytest.mark.slow
@pytest.mark.parametrize("stage", [1, 3])
def test_two_processes_give_the_gradients_of_one(tmp_path, stage):
    """Stage 1 (uniform positions) / stage 3 (policy actions from noise): the all-reduced gradients after
    the first backward are identical on both ranks and equal one process's with 2 micro-batches within 1e-6
    relative; the ranks saw different halves; a full-batch single process differs (BatchNorm)."""
    common = [f"gfnet.stages=[{stage}]", "export.condense=false"]
    run(tmp_path, "dist", common + [f"debug.dump_grads={tmp_path / 'g2'}"], nproc=2)
    run(tmp_path, "micro", common + ["train.micro_batches=2", f"debug.dump_grads={tmp_path / 'g1'}"])
    run(tmp_path, "full", common + [f"debug.dump_grads={tmp_path / 'g0'}"])
    r0, r1 = np.load(tmp_path / "g2" / "grads_rank0.npz"), np.load(tmp_path / "g2" / "grads_rank1.npz")
    single, full = np.load(tmp_path / "g1" / "grads_rank0.npz"), np.load(tmp_path / "g0" / "grads_rank0.npz")
    assert int(r0["stage"]) == int(single["stage"]) == stage
    names = [k for k in single.files if k not in ("loss", "stage")]
    assert set(names) == set(r0.files) - {"loss", "stage"} == set(full.files) - {"loss", "stage"}
    assert any(k.startswith("model.") for k in names) and any(k.startswith("fc.") for k in names)
    assert any(k.startswith("model_prime.") for k in names)  # the demo trains the glance encoder
    assert not any(k.startswith("policy.") for k in names)  # the policy only acts in stage 3
    assert float(r0["loss"]) != float(r1["loss"])  # the two ranks saw different halves
    assert sum(float(np.abs(single[k]).sum()) > 0 for k in names) > len(names) // 2
    rel = lambda a, b: float(np.abs(a - b).max() / (np.abs(b).max() + 1e-30))
    for k in names:
        np.testing.assert_array_equal(r0[k], r1[k], err_msg=k)  # all-reduced: identical on both ranks
        assert rel(r0[k], single[k]) <= 1e-6, (k, rel(r0[k], single[k]))
    assert max(rel(full[k], single[k]) for k in names) > 1e-3  # per-device BatchNorm matters: the test can tell


@pytest.mark.slow
def test_all_three_stages_run_under_launch(tmp_path):
    """Two processes run stages 1-3 (PPO on every rank), validate with summed counts, and rank 0 writes the
    run's files and finishes it (thresholds, condensed weights)."""
    log = run(tmp_path, "demo", [], nproc=2)
    assert "on 2 cpu device(s)" in log
    for stage in (1, 2, 3):
        assert f"stage {stage} done" in log
    rows = (tmp_path / "demo" / "log.csv").read_text().splitlines()
    assert len(rows) == 4
    summary = json.loads((tmp_path / "demo" / "summary.json").read_text())
    assert summary["condensed_same_predictions"] is True and len(summary["val_step_top1"]) == 3
    for name in ("model_stage1.pdparams", "model_stage2.pdparams", "model_stage3.pdparams", "model_final.pdparams"):
        assert (tmp_path / "demo" / name).is_file(), name


@pytest.mark.slow
def test_amp_on_cpu_notes_it_and_trains_as_float32(tmp_path):
    """train.amp=true on CPU: the main trainer's note, a GradScaler in the checkpoint (the AMP path ran), and
    stage 1's weights byte-identical to an amp=false run (Paddle's CPU autocast and scaler are no-ops)."""
    from ppcdnv2.engine.checkpoint import read_checkpoint

    common = ["gfnet.stages=[1]", "export.condense=false", "gfnet.find_thresholds_on=0"]
    log = run(tmp_path, "amp", common + ["train.amp=true"])
    assert "train.amp on CPU" in log and "float32" in log
    run(tmp_path, "fp32", common)
    # the scaler's state ({} on CPU, where Paddle disables it) is stored only when the AMP path ran
    assert read_checkpoint(tmp_path / "amp" / "checkpoint_last.safetensors").meta["scaler"] is not None
    assert read_checkpoint(tmp_path / "fp32" / "checkpoint_last.safetensors").meta["scaler"] is None
    weights = [(tmp_path / name / "model_stage1.pdparams").read_bytes() for name in ("amp", "fp32")]
    assert weights[0] == weights[1]


def test_rank_shares_are_the_single_process_batches_and_draws():
    """Validation batches split over 2 ranks keep their single-process index and together cover it once; the
    ranks' columns of stage 1's positions / stage 3's noise put together are one process's draw."""
    from ppcdnv2.data import EvalBatchSampler
    from ppcdnv2.families.gfnet.engine import StridedEvalBatches, _draw

    one = list(EvalBatchSampler(50, 8))
    parts = [list(StridedEvalBatches(50, 8, r, 2)) for r in (0, 1)]
    assert [len(StridedEvalBatches(50, 8, r, 2)) for r in (0, 1)] == [len(p) for p in parts] == [4, 3]
    assert parts[0] == one[0::2] and parts[1] == one[1::2]
    for stage in (1, 3):
        whole = _draw(stage, np.random.default_rng([0, stage, 0, 5]), 2, 8, 0, 1)
        shares = [_draw(stage, np.random.default_rng([0, stage, 0, 5]), 2, 8, r, 2) for r in (0, 1)]
        assert whole.shape == (2, 8, 2) and shares[0].shape == (2, 4, 2)
        np.testing.assert_array_equal(np.concatenate(shares, axis=1), whole)
        assert not np.array_equal(shares[0], shares[1])
