import os
import warnings
from pathlib import Path

import numpy as np
import pytest

warnings.filterwarnings("ignore")
REPO = Path(__file__).resolve().parents[1]
SHARED_FIXTURES = REPO / ".." / "shared" / "fixtures"
FIXTURES = SHARED_FIXTURES / "official"


def run_training(config: str, out: Path, *overrides: str, timeout: int = 1200) -> str:
    """``tools/train.py -c configs/<config>`` into ``out`` as a user runs it (a subprocess, no progress
    bar); fails the test with the end of the log on a non-zero exit. Returns the log."""
    import subprocess
    import sys

    cmd = [sys.executable, str(REPO / "tools" / "train.py"), "-c", str(REPO / "configs" / config),
           "-o", f"train.output={out}", "-o", "train.progress_bar=false"]
    for o in overrides:
        cmd += ["-o", o]
    p = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout)
    assert p.returncode == 0, (p.stdout + p.stderr)[-4000:]
    return p.stdout + p.stderr


def fixture_path(name: str, folder: str = "official") -> Path:
    """``../shared/fixtures/<folder>/<name>``; skipped when missing, except in CI (which always has it)."""
    p = SHARED_FIXTURES / folder / name
    if not p.exists():
        if os.environ.get("CI"):  # CI always has ../shared beside the clone: a missing fixture is a failure
            pytest.fail(f"{folder} fixture {name} not found beside the repo ({p.parent})")
        pytest.skip(f"{folder} fixture {name} not found beside the repo ({p.parent})")
    return p


@pytest.fixture(scope="module")
def one_torch_thread():
    """One torch intra-op thread for the module (restored after): with Paddle's OpenMP pool in the same
    process, more torch threads than free cores spin against it (measured ~15x slower on 2 busy cores)."""
    torch = pytest.importorskip("torch")
    from ppcdnv2.torch_tools import torch_threads

    with torch_threads(1):
        yield torch


@pytest.fixture(scope="session")
def official_io():
    return dict(np.load(fixture_path("cdnv2_a_s0_io.npz")))


@pytest.fixture(scope="session")
def official_checkpoints():
    """The fixtures read with torch (weights_only, Namespace allowed) as numpy state dicts."""
    torch = pytest.importorskip("torch")
    import argparse

    def read(name):
        with torch.serialization.safe_globals([argparse.Namespace]):
            ck = torch.load(fixture_path(name), weights_only=True, map_location="cpu")
        return ck

    unconv, conv = read("cdnv2_a_s0_unconverted.pth.tar"), read("cdnv2_a_s0_converted.pth.tar")
    np_sd = lambda sd: {k: v.numpy() for k, v in sd.items()}
    return {"state_dict": np_sd(unconv["state_dict"]), "state_dict_ema": np_sd(unconv["state_dict_ema"]),
            "converted": np_sd(conv["state_dict"]), "args": unconv["args"]}
