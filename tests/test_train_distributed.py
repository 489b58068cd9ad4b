"""Two CPU processes under ``python -m paddle.distributed.launch`` (gloo): DataParallel training runs, and
its all-reduced gradients equal a single process running the same global batch.

BatchNorm normalises each device's batch separately (no synchronised BatchNorm), so the single-process
run that matches is the same global batch in 2 micro-batches, i.e. the same two shards: the sampler
gives device r the r-th half of every global batch, and ``train.micro_batches=2`` splits a batch the
same way. A full-batch single-process step differs, which the test also checks (so it can fail).
"""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.slow  # training runs, subprocesses: outside the quick subset (-m "not slow")

REPO = Path(__file__).resolve().parents[1]
QUICK = ["train.progress_bar=false", "data.limit_train=96", "data.limit_val=40", "train.batch_size=16",
         "train.epochs=2", "model.arch.stages=[1,1,1]", "model.arch.growth=[4,8,8]"]


def run(tmp, name, overrides, nproc=1):
    script = [str(REPO / "tools" / "train.py"), "-c", str(REPO / "configs" / "demo.yaml")]
    for o in QUICK + [f"train.output={tmp / name}"] + overrides:
        script += ["-o", o]
    if nproc > 1:
        cmd = [sys.executable, "-m", "paddle.distributed.launch", "--nproc_per_node", str(nproc),
               "--log_dir", str(tmp / f"{name}_logs")] + script
    else:
        cmd = [sys.executable] + script
    p = subprocess.run(cmd, cwd=tmp, capture_output=True, text=True, timeout=300)
    logs = "".join(f.read_text() for f in sorted((tmp / f"{name}_logs").glob("workerlog.*"))) if nproc > 1 else ""
    assert p.returncode == 0, (p.stdout + p.stderr)[-3000:] + logs[-3000:]
    return p.stdout + p.stderr + logs


def test_two_process_gradients_equal_single_process(tmp_path):
    run(tmp_path, "dist", [f"debug.dump_grads={tmp_path / 'g2'}"], nproc=2)
    run(tmp_path, "micro", ["train.micro_batches=2", f"debug.dump_grads={tmp_path / 'g1'}"])
    run(tmp_path, "full", [f"debug.dump_grads={tmp_path / 'g0'}"])
    r0, r1 = np.load(tmp_path / "g2" / "grads_rank0.npz"), np.load(tmp_path / "g2" / "grads_rank1.npz")
    single, full = np.load(tmp_path / "g1" / "grads_rank0.npz"), np.load(tmp_path / "g0" / "grads_rank0.npz")
    names = [k for k in single.files if k != "loss"]
    assert len(names) > 30 and set(names) == set(r0.files) - {"loss"}
    assert float(r0["loss"]) != float(r1["loss"])  # the two ranks saw different halves
    assert sum(float(np.abs(single[k]).sum()) > 0 for k in names) > len(names) // 2
    for k in names:
        np.testing.assert_array_equal(r0[k], r1[k], err_msg=k)  # all-reduced: identical on both ranks
        np.testing.assert_allclose(r0[k], single[k], rtol=1e-5, atol=1e-7, err_msg=k)
    rel = max(np.abs(full[k] - single[k]).max() / (np.abs(single[k]).max() + 1e-12) for k in names)
    assert rel > 1e-3  # per-device BatchNorm really matters: the test could tell the difference


def test_demo_config_trains_under_launch(tmp_path):
    log = run(tmp_path, "demo", ["train.epochs=2"], nproc=2)
    assert "on 2 cpu device(s)" in log
    summary = json.loads((tmp_path / "demo" / "summary.json").read_text())
    assert summary["same_predictions"] is True
    assert (tmp_path / "demo" / "model_condensed.pdparams").is_file()
    assert (tmp_path / "demo" / "log.csv").read_text().count("\n") == 3
