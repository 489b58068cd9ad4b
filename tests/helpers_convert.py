"""Fixture makers for the converter tests: re-saved official checkpoints, torch-free subprocess runs."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
TOOL = REPO / "tools" / "convert_torch_weights.py"

# Makes `import torch` fail in a fresh interpreter, as on a machine without torch.
NO_TORCH = textwrap.dedent('''
    import importlib.abc, sys
    class _NoTorch(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "torch" or name.startswith("torch."):
                raise ModuleNotFoundError(f"No module named {name!r}", name=name)
    sys.meta_path.insert(0, _NoTorch())
    sys.modules.pop("torch", None)
''')

# Runs the CLI script once per argv list in ONE interpreter (Paddle is imported once), recording
# exit codes and output; `import torch` is blocked throughout.
_DRIVER = NO_TORCH + textwrap.dedent('''
    import contextlib, io, json, runpy
    cases, out = json.loads(sys.argv[1]), sys.argv[2]
    try:
        import torch  # noqa: F401
        blocked = False
    except ImportError:
        blocked = True
    results = {}
    for name, argv in cases.items():
        stdout, stderr = io.StringIO(), io.StringIO()
        sys.argv = [TOOL] + argv
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            try:
                runpy.run_path(TOOL, run_name="__main__")
                code = 0
            except SystemExit as e:
                code = e.code if isinstance(e.code, int) else 1
        results[name] = {"code": code, "stdout": stdout.getvalue(), "stderr": stderr.getvalue()}
    results["__env__"] = {"torch_blocked": blocked, "torch_loaded": "torch" in sys.modules}
    with open(out, "w") as f:
        json.dump(results, f)
''')


def run_cli_without_torch(cases: dict, workdir: Path) -> dict:
    """``{name: argv}`` → ``{name: {code, stdout, stderr}}`` plus ``__env__``, torch unimportable."""
    out = workdir / "cli_results.json"
    script = f"TOOL = {str(TOOL)!r}\n" + _DRIVER
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    run = subprocess.run([sys.executable, "-c", script, json.dumps(cases), str(out)], capture_output=True,
                         text=True, cwd=workdir, timeout=600, env=env)
    assert run.returncode == 0 and out.exists(), run.stderr[-3000:]
    return json.loads(out.read_text())


def read_official(path):
    """An official fixture through torch (the test's own trusted reader)."""
    import argparse

    import torch

    with torch.serialization.safe_globals([argparse.Namespace]):
        return torch.load(path, weights_only=True, map_location="cpu")


def with_prefix(state, prefix="module."):
    return type(state)((prefix + k, v) for k, v in state.items())


def resave_official(src, dst, legacy=False, prefix=False, bare=False, key=None):
    """Re-save an official fixture: legacy (torch < 1.6) format, ``module.`` keys, bare or under ``key``."""
    import torch

    ck = read_official(src)
    if prefix:
        ck = {k: with_prefix(v) if k.startswith("state_dict") else v for k, v in ck.items()}
    if bare:
        ck = ck["state_dict"]
    elif key:
        ck = {key: ck["state_dict"]}
    torch.save(ck, dst, _use_new_zipfile_serialization=not legacy)
    return dst


def random_converted_state(model, seed=0):
    """Every parameter/buffer of a converted-form Paddle ``model`` random but sane (valid indexes)."""
    from ppcdnv2.layers import CondenseLGC, CondenseSFR

    rng = np.random.default_rng(seed)
    kinds = {name: layer for name, layer in model.named_sublayers()}
    state = {}
    for key, value in model.state_dict().items():
        owner, _, leaf = key.rpartition(".")
        shape = tuple(value.shape)
        layer = kinds.get(owner)
        if leaf == "index" and isinstance(layer, CondenseLGC):
            in_channels = shape[0] * model.cfg.condense_factor // model.cfg.group_1x1  # of the whole layer
            state[key] = rng.integers(0, in_channels, shape).astype(np.int64)
        elif leaf == "index" and isinstance(layer, CondenseSFR):
            state[key] = rng.integers(0, layer.out_channels, shape).astype(np.int64)
        elif leaf == "_variance":
            state[key] = rng.uniform(0.5, 1.5, shape).astype(np.float32)
        elif leaf == "_mean":
            state[key] = rng.normal(0, 0.1, shape).astype(np.float32)
        elif leaf == "weight" and len(shape) == 1:  # BatchNorm gamma
            state[key] = rng.uniform(0.5, 1.0, shape).astype(np.float32)
        elif leaf == "weight" and len(shape) == 4:
            fan_in = int(np.prod(shape[1:]))
            state[key] = rng.normal(0, np.sqrt(2.0 / fan_in), shape).astype(np.float32)
        else:
            fan_in = shape[0] if len(shape) == 2 else 1
            state[key] = rng.uniform(-1, 1, shape) / np.sqrt(fan_in)
        state[key] = state[key].astype(value.numpy().dtype)
    return state


def paddle_logits(model, x):
    import paddle

    model.eval()
    with paddle.no_grad():
        return model(paddle.to_tensor(np.asarray(x))).numpy()
