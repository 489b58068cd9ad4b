"""What a user sees: a training run whose output is not a terminal (a log file, a notebook) prints plain
progress lines, no tqdm carriage returns and none of Paddle's per-run warnings; an export prints no C++
trace noise, while other native stderr lines still get through."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

import ppcdnv2

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_training_to_a_pipe_logs_lines_without_noise(tmp_path):
    cmd = [sys.executable, str(REPO / "tools" / "train.py"), "-c", str(REPO / "configs" / "demo.yaml"),
           "-o", f"train.output={tmp_path / 'run'}", "-o", "train.epochs=2", "-o", "data.limit_train=320",
           "-o", "data.limit_val=40", "-o", "train.log_interval=4"]
    p = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=600)  # pipes: not terminals
    assert p.returncode == 0, p.stderr[-3000:]
    assert "\r" not in p.stdout + p.stderr
    assert "always track global mean" not in p.stderr and "Warning" not in p.stderr
    steps = [line for line in p.stdout.splitlines() if " step " in line and "img_s" in line]
    assert "epoch 1/2 step 4/10: loss" in p.stdout and len(steps) == 6  # steps 4, 8, 10 of each epoch


def test_export_drops_the_trace_noise_only(tmp_path, capfd):
    from ppcdnv2.deploy.export import _TRACE_NOISE, _native_stderr_without, export_inference

    export_inference(ppcdnv2.create_model("rexnet_090").eval(), tmp_path / "m")
    assert _TRACE_NOISE[0] not in capfd.readouterr().err
    with _native_stderr_without(_TRACE_NOISE):
        os.write(2, f"W0000 something else\nW0000 {_TRACE_NOISE[0]} for now\n".encode())
    err = capfd.readouterr().err
    assert "something else" in err and _TRACE_NOISE[0] not in err


@pytest.mark.slow
def test_amp_on_cpu_runs_the_amp_path_in_float32(tmp_path):
    """train.amp=true on CPU: Paddle has no CPU autocast or loss scaling; the run says so, trains (finite,
    falling loss) and its checkpoint resumes."""
    import csv
    import math

    out = tmp_path / "amp"
    base = [sys.executable, str(REPO / "tools" / "train.py"), "-c", str(REPO / "configs" / "demo.yaml"),
            "-o", f"train.output={out}", "-o", "data.limit_train=256", "-o", "data.limit_val=40",
            "-o", "train.amp=true", "-o", "train.progress_bar=false"]
    p = subprocess.run(base + ["-o", "train.epochs=3"], capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "train.amp on CPU" in p.stdout and "float32" in p.stdout
    losses = [float(r["train_loss"]) for r in csv.DictReader(open(out / "log.csv"))]
    assert len(losses) == 3 and all(math.isfinite(v) for v in losses) and losses[-1] < losses[0]
    p = subprocess.run(base + ["-o", "train.epochs=4", "--resume"], capture_output=True, text=True, timeout=600)
    assert p.returncode == 0 and "resumed from" in p.stdout, p.stderr[-3000:]
