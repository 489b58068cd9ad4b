"""Every command in README.md runs, in README order, in a scratch folder laid out like a user's.

``bash`` fences are executed line by line (``text`` fences are for commands that need a GPU and are not
run); ``python`` fences are executed as scripts. The scratch folder holds what the README assumes the user
has: the official-format checkpoints of ``../shared/fixtures/official`` under the README's file names, a
released-style CondenseNet V1 file made with our torch reference, a photo (``cat.jpg``), a tiny
ImageNet-layout folder and fake CIFAR batches. Long jobs get small-data overrides appended (one epoch, a
few images); the commands themselves run as written. The install commands and the test command are CI's own
(``.ci/run``): they are checked to be there rather than run again here.
"""
import os
import pickle
import re
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import fixture_path

pytestmark = pytest.mark.slow  # training runs, subprocesses: outside the quick subset (-m "not slow")

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text()
FENCE = re.compile(r"```(\w+)\n(.*?)```", re.S)
SMALL_TRAIN = ["train.progress_bar=false", "data.limit_train=64", "data.limit_val=32", "data.num_workers=0",
               "eval.batch_size=32"]


def fenced(lang):
    return [body for kind, body in FENCE.findall(README) if kind == lang]


def commands():
    out = []
    for body in fenced("bash"):
        for line in body.replace("\\\n", " ").splitlines():
            line = line.strip()
            if line and not line.startswith("#"):
                out.append(line)
    return out


CI_COMMANDS = {"python -m pytest -q tests"}  # run by .ci/run itself


def _is_ci_command(cmd):
    return cmd in CI_COMMANDS or cmd.startswith("pip install")


def test_readme_has_the_two_newcomer_commands_and_ci_runs_its_test_command():
    first_two = commands()[:2]
    assert first_two == ["python tools/train.py -c configs/demo.yaml", "python -m pytest -q tests"]
    ci = (REPO / ".ci" / "run").read_text()
    for cmd in commands():
        if _is_ci_command(cmd):
            assert cmd in ci, f"README command {cmd!r} is not run by .ci/run"
    assert "paddlepaddle-gpu" in README  # GPU users are told what to install


def test_readme_pictures_exist():
    """Every image the README shows is a PNG in the repository (a renamed or missing file shows as a broken link)."""
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", README)
    assert links
    for link in links:
        assert (REPO / link).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", link


def test_readme_python_api_names_exist():
    import ppcdnv2

    for name in re.findall(r"ppcdnv2\.(\w+)\(", README):
        assert hasattr(ppcdnv2, name), f"README uses ppcdnv2.{name}, which does not exist"


# --- the scratch folder ----------------------------------------------------------------------
def _imagenet_folder(root: Path, n_classes: int = 1000):
    """An ImageNet-layout folder with the 1000 class folders of ImageNet: real photos in two of them (val has
    only those), a small photo in every other training folder."""
    from skimage import data as skdata

    photos = {0: ["astronaut", "coffee"], 1: ["chelsea", "rocket"]}
    tiny = Image.fromarray(skdata.chelsea()).resize((40, 30))
    for split in ("train", "val"):
        for c in range(n_classes):
            d = root / split / f"n{c:08d}"
            d.mkdir(parents=True)
            for name in photos.get(c, []):
                Image.fromarray(getattr(skdata, name)()).save(d / f"{name}.jpg")
            if split == "train" and c not in photos:  # training refuses a class without images
                tiny.save(d / "tiny.jpg")


def _cifar10_folder(root: Path, n: int = 32):
    rng = np.random.default_rng(0)
    d = root / "cifar-10-batches-py"
    d.mkdir(parents=True)
    for f in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        with open(d / f, "wb") as fh:
            pickle.dump({b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                         b"labels": rng.integers(0, 10, n).tolist()}, fh)


def _released_condensenet_v1(path: Path):
    """Like upstream's ``converted_condensenet_4.pth.tar``: converted form, legacy format, ``module.`` keys."""
    import torch

    from ppcdnv2 import preset
    from test_condensenet_v1 import _random_reference

    model, _ = _random_reference(preset("condensenet74_c4_g4"), converted=True, batch=1)
    state = {f"module.{k}": v for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
    torch.save({"state_dict": state}, path, _use_new_zipfile_serialization=False)


def _released_gfnet(name: str, path: Path):
    """A released-format GFNet checkpoint, written by the fixtures' own writer (needs torch)."""
    script = fixture_path("write_checkpoint.py", "gfnet")
    p = subprocess.run([sys.executable, str(script), str(fixture_path(f"{name}_s0.json", "gfnet")), str(path)],
                       capture_output=True, text=True, cwd=script.parent, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]


def _pycls_regnet(path: Path):
    """pycls' RegNetY-600MF ImageNet file, as its model zoo writes it: ``model_state``, classifier ``head.fc``
    (the weights: the GFNet fixture's glance encoder)."""
    import torch

    from gfnet_fixtures import weights

    state = {("head." + k if k.startswith("fc.") else k): torch.from_numpy(np.ascontiguousarray(v))
             for k, v in weights("regnety_600m_p96_t5", "model_prime_state_dict").items()}
    torch.save({"epoch": 99, "model_state": state, "optimizer_state": {}}, path)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    pytest.importorskip("torch")
    root = tmp_path_factory.mktemp("user")
    for name in ("tools", "configs", "benchmarks"):
        (root / name).symlink_to(REPO / name)
    (root / "cdnv2_a_converted.pth.tar").symlink_to(fixture_path("cdnv2_a_s0_converted.pth.tar"))
    (root / "cdnv2_a_unconverted.pth.tar").symlink_to(fixture_path("cdnv2_a_s0_unconverted.pth.tar"))
    _released_condensenet_v1(root / "converted_condensenet_4.pth.tar")
    (root / "rexnetv1_1.0x.pth").symlink_to(fixture_path("rexnet_1.0x_s0.pth", "rexnet"))
    _released_gfnet("regnety_600m_p96_t5", root / "gfnet_regnety_600m_p96_t5.pth.tar")
    _pycls_regnet(root / "RegNetY-600MF_dds_8gpu.pyth")
    (root / "rexnet_100_timm.safetensors").symlink_to(fixture_path("timm_rexnet_100_s0.safetensors", "rexnet"))
    from skimage import data as skdata

    Image.fromarray(skdata.chelsea()).save(root / "cat.jpg")
    _imagenet_folder(root / "data" / "imagenet")
    _cifar10_folder(root / "data" / "cifar")
    return root


def _small(argv):
    """Small-data overrides appended to long jobs; the README's own arguments stay as written."""
    line = " ".join(argv)
    if "tools/train.py" in line:
        extra = SMALL_TRAIN + ["schedule.warmup_epochs=0"]
        if "train.epochs=" not in line:
            extra.append("train.epochs=1")
        if "configs/cdnv2_" in line or "configs/condensenet74" in line:
            extra += ["train.batch_size=4", "eval.batch_size=4"]
        if "configs/gfnet_" in line:  # one epoch of each stage, thresholds on a few images
            extra += ["train.batch_size=32", "gfnet.epochs_stage1=1", "gfnet.epochs_stage2=1",
                      "gfnet.epochs_stage3=1", "gfnet.find_thresholds_on=32"]
        return [a for o in extra for a in ("-o", o)]
    if "tools/eval.py" in line:
        return ["-b", "4", "--no-progress"]
    if "benchmarks/benchmark.py" in line:  # one model, one round, batch 1: the smoke run's size
        return ["--models", "cdnv2_a", "--rounds", "1", "--threads", "2", "--iters", "2", "--batches", "1"]
    return []


def _run(cmd, cwd):
    argv = shlex.split(cmd)
    assert argv[0] == "python", f"README command {cmd!r}: expected a python command"
    argv = [sys.executable, *argv[1:]]
    if "--resume" in argv:  # keep --resume last: its argument is optional
        argv.remove("--resume")
        argv = argv + _small(argv) + ["--resume"]
    else:
        argv = argv + _small(argv)
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.run(argv, cwd=cwd, capture_output=True, text=True, env=env, timeout=900)


@pytest.mark.parametrize("cmd", [c for c in commands() if not _is_ci_command(c)])
def test_readme_command_runs(cmd, workdir):
    p = _run(cmd, workdir)
    assert p.returncode == 0, f"{cmd}\n--- stdout\n{p.stdout[-3000:]}\n--- stderr\n{p.stderr[-3000:]}"


def test_readme_python_blocks_run(workdir):
    """After the commands (pytest runs this file's tests in order): the files they wrote exist, and the
    multi-process launch kept its logs in the run's folder (not a log/ beside the user's files)."""
    assert not (workdir / "log").exists()
    if any("--log_dir" in c for c in commands()):
        assert list((workdir / "output" / "demo_2proc" / "launch_log").glob("workerlog.*"))
    for i, block in enumerate(fenced("python")):
        p = subprocess.run([sys.executable, "-c", block], cwd=workdir, capture_output=True, text=True,
                           timeout=600)
        assert p.returncode == 0, f"python block {i}:\n{block}\n--- stderr\n{p.stderr[-3000:]}"
