import os
import warnings
from pathlib import Path

import numpy as np
import pytest

warnings.filterwarnings("ignore")
REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO / ".." / "shared" / "fixtures" / "official"


def fixture_path(name: str) -> Path:
    p = FIXTURES / name
    if not p.exists():
        if os.environ.get("CI"):  # CI always has ../shared beside the clone: a missing fixture is a failure
            pytest.fail(f"official fixture {name} not found beside the repo ({FIXTURES})")
        pytest.skip(f"official fixture {name} not found beside the repo ({FIXTURES})")
    return p


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
