"""The console scripts of ``pyproject.toml`` (``ppcdnv2-train`` ...): each names a callable that exists, and,
once the package is installed (``pip install -e .``, as .ci/run does), runs as a command."""
import importlib
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    tomllib = pytest.importorskip("tomli")

SCRIPTS = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
TOOLS = {"ppcdnv2-train": "train.py", "ppcdnv2-eval": "eval.py", "ppcdnv2-convert": "convert_torch_weights.py",
         "ppcdnv2-export": "export.py", "ppcdnv2-infer": "infer.py"}


def test_every_tool_has_a_console_script_and_the_same_entry():
    assert set(SCRIPTS) == set(TOOLS)
    for name, target in SCRIPTS.items():
        module, _, func = target.partition(":")
        assert callable(getattr(importlib.import_module(module), func)), target
        assert func in (REPO / "tools" / TOOLS[name]).read_text(), f"tools/{TOOLS[name]} does not call {target}"


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(TOOLS))
def test_console_script_runs(name):
    exe = shutil.which(name)
    assert exe, f"{name} is not on PATH: install the package with pip install -e ."
    p = subprocess.run([exe, "--help"], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0 and p.stdout.startswith(f"usage: {name}"), p.stdout[:300] + p.stderr[-2000:]
