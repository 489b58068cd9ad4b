"""The notebooks under ``notebooks/`` run top to bottom, and the committed files carry the outputs of such a run.

Each notebook is executed with nbclient in a fresh kernel of *this* Python (a kernel spec written for
``sys.executable``, whatever ``jupyter kernelspec list`` says ``python3`` is), from the notebooks' folder, in
small mode (``PPCDNV2_NOTEBOOK_SMALL=1``) and without installing anything (``PPCDNV2_NOTEBOOK_SKIP_INSTALL=1``).
A notebook that reads checkpoints (it mentions one of the variables of ``CHECKPOINTS``) runs three times:

* ``fixtures``: the official-format fixtures are its checkpoints (``PPCDNV2_CHECKPOINT``,
  ``PPCDNV2_REXNET_CHECKPOINT``; ``PPCDNV2_GFNET_CHECKPOINT``, a released-format GFNet file written by the
  fixture's own writer, which needs PyTorch);
* ``fresh``: a fresh machine where nothing was downloaded (the variables point at files that do not exist), so
  the notebook makes and uses its random-weights stand-ins;
* ``minimal``: the same on a machine with the requirements only (PyTorch, paddle2onnx and onnxruntime fail to
  import), where the notebook skips what needs a checkpoint or PyTorch and still runs the rest.

Any cell error fails the test with the cell and its traceback. The runs work on in-memory copies with the
outputs cleared: the committed files are never written. A copy of the quickstart with a deliberately broken
cell shows that the runner does fail.

What each run must show is checked per notebook (``CHECKS``). The committed notebooks carry the outputs of a
``fresh`` run in small mode, which a reader sees on GitHub or AI Studio; write them again with
``python tests/test_notebooks.py --write`` from the repository root.
"""
import copy
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import nbformat
import pytest
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import AsyncKernelManager
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

pytestmark = pytest.mark.slow  # training runs, subprocesses: outside the quick subset (-m "not slow")

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK_DIR = REPO / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))
FIXTURES = REPO / ".." / "shared" / "fixtures"
# environment variable -> (the fixture CI converts, the file a fresh machine lacks in notebooks/)
CHECKPOINTS = {
    "PPCDNV2_CHECKPOINT": ((FIXTURES / "official" / "cdnv2_a_s0_converted.pth.tar").resolve(),
                           "work/cdnv2_a_converted.pth.tar"),
    "PPCDNV2_REXNET_CHECKPOINT": ((FIXTURES / "rexnet" / "rexnet_1.0x_s0.pth").resolve(), "work/rexnetv1_1.0x.pth"),
    # not a file: the fixture's description, written as a released checkpoint when a run needs it (gfnet_fixture)
    "PPCDNV2_GFNET_CHECKPOINT": ((FIXTURES / "gfnet" / "regnety_600m_p96_t5_s0.json").resolve(),
                                 "work/gfnet_regnety_600m_p96_t5.pth.tar"),
}
KERNEL_NAME = "python3"
KERNELSPEC = {"display_name": "Python 3", "language": "python", "name": KERNEL_NAME}
CELL_TIMEOUT = 900  # seconds per cell; the slowest (a short training, an ONNX export) takes well under a minute
VERIFIED = "verify: max |torch reference - paddle|"  # the converter's parity line (verify=True)


def checkpoint_vars(path: Path) -> list:
    """The variables of ``CHECKPOINTS`` the notebook reads (mentions)."""
    text = path.read_text()
    return [var for var in CHECKPOINTS if var in text]


def reads_checkpoints(path: Path) -> bool:
    return bool(checkpoint_vars(path))


RUNS = [pytest.param(p, mode, id=f"{p.name}-{mode}")
        for p in NOTEBOOKS
        for mode in (("fixtures", "fresh", "minimal") if reads_checkpoints(p) else ("plain",))]


def gfnet_fixture(description: Path, target: Path) -> Path:
    """The GFNet fixture as a released checkpoint (legacy torch format), by the fixtures' own writer."""
    pytest.importorskip("torch", reason="the GFNet fixture is written with PyTorch")
    script = description.parent / "write_checkpoint.py"
    target.parent.mkdir(parents=True, exist_ok=True)
    p = subprocess.run([sys.executable, str(script), str(description), str(target)], capture_output=True,
                       text=True, cwd=script.parent, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    return target


def fixture_env(path: Path, tmp_path: Path) -> dict:
    """The fixtures as the checkpoints ``path`` reads."""
    env = {}
    for var in checkpoint_vars(path):
        fixture, default = CHECKPOINTS[var]
        if not fixture.is_file():  # CI always has them: a missing fixture is an error, not a skip
            pytest.fail(f"fixture not found: {fixture} (the notebook converts it; expected in "
                        f"../shared/fixtures/ beside the repository)")
        if fixture.suffix == ".json":
            fixture = gfnet_fixture(fixture, tmp_path / "fixtures" / Path(default).name)
        env[var] = str(fixture)
    return env


def kernel_manager(spec_root: Path) -> AsyncKernelManager:
    """A kernel manager whose ``python3`` runs ``sys.executable``: the interpreter (and packages) of this test."""
    spec_dir = spec_root / KERNEL_NAME
    spec_dir.mkdir(parents=True, exist_ok=True)
    spec = {"argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
            "display_name": f"Python 3 ({sys.executable})", "language": "python"}
    (spec_dir / "kernel.json").write_text(json.dumps(spec))
    ksm = KernelSpecManager(kernel_dirs=[str(spec_root)], ensure_native_kernel=False)
    km = AsyncKernelManager(kernel_name=KERNEL_NAME, kernel_spec_manager=ksm)
    assert km.kernel_spec.argv[0] == sys.executable
    return km


def clear_outputs(nb):
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
            cell.metadata.pop("execution", None)
    return nb


OPTIONAL = ("torch", "paddle2onnx", "onnxruntime")  # not in requirements.txt: a fresh AI Studio machine lacks them


def hide_packages(root: Path, names=OPTIONAL) -> str:
    """A folder to put first on ``PYTHONPATH`` where each of ``names`` fails to import as a missing package does."""
    for name in names:
        (root / name).mkdir(parents=True, exist_ok=True)
        (root / name / "__init__.py").write_text(f'raise ModuleNotFoundError("No module named {name!r} (hidden by '
                                                 f'tests/test_notebooks.py)", name={name!r})\n')
    return str(root)


def run_notebook(nb, spec_root: Path, checkpoints: dict = None, minimal: bool = False):
    """Execute ``nb`` in place like CI does, outputs cleared first; raises ``CellExecutionError`` naming the
    first failing cell. ``checkpoints``: the ``PPCDNV2_*CHECKPOINT`` variables to set (the others are unset);
    ``minimal``: the optional packages (``OPTIONAL``) fail to import in the kernel and its children."""
    env = {k: v for k, v in os.environ.items() if k not in CHECKPOINTS}
    env.update(checkpoints or {}, PPCDNV2_NOTEBOOK_SMALL="1", PPCDNV2_NOTEBOOK_SKIP_INSTALL="1",
               PYDEVD_DISABLE_FILE_VALIDATION="1")
    if minimal:
        env["PYTHONPATH"] = os.pathsep.join([hide_packages(spec_root / "hidden")] +
                                            ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    client = NotebookClient(clear_outputs(nb), km=kernel_manager(spec_root), kernel_name=KERNEL_NAME,
                            timeout=CELL_TIMEOUT, allow_errors=False, record_timing=True,
                            resources={"metadata": {"path": str(NOTEBOOK_DIR)}})
    return client.execute(env=env)


def code_cells(nb):
    return [c for c in nb.cells if c.cell_type == "code"]


def text_of(nb) -> str:
    """All stream and text/plain output of ``nb``."""
    parts = []
    for c in code_cells(nb):
        for o in c.outputs:
            parts.append(o.get("text", "") if o.output_type == "stream" else o.get("data", {}).get("text/plain", ""))
    return "\n".join(parts)


def have_torch() -> bool:
    import importlib.util

    return importlib.util.find_spec("torch") is not None


def test_notebooks_found():
    assert NOTEBOOKS, f"no notebooks under {NOTEBOOK_DIR}"
    assert NOTEBOOK_DIR / "quickstart.ipynb" in NOTEBOOKS
    assert any(p.name == "quickstart.ipynb" and mode == "fresh" for p, mode in (r.values for r in RUNS))


@pytest.mark.parametrize("path, mode", RUNS)
def test_notebook_runs(path, mode, tmp_path):
    before = hashlib.sha256(path.read_bytes()).hexdigest()
    nb = nbformat.read(path, as_version=4)
    if mode == "fixtures":
        checkpoints = fixture_env(path, tmp_path)
    elif mode in ("fresh", "minimal"):  # nothing downloaded: point where no file is (work/ may hold real ones)
        checkpoints = {var: str(tmp_path / "not-downloaded" / Path(default).name)
                       for var, (_, default) in CHECKPOINTS.items()}
    else:
        checkpoints = None
    failure = None
    try:
        run_notebook(nb, tmp_path / "kernels", checkpoints, minimal=mode == "minimal")
    except CellExecutionError as e:
        failure = f"{path.name} ({mode}): {e}"
    if failure:  # the failing cell and its traceback, without nbclient's internals
        pytest.fail(failure, pytrace=False)
    assert hashlib.sha256(path.read_bytes()).hexdigest() == before, f"running {path.name} changed the committed file"
    code = code_cells(nb)
    assert code and all(c.execution_count is not None for c in code), "not every code cell ran"
    assert not [o for c in code for o in c.outputs if o.output_type == "error"]
    text = text_of(nb)
    if mode == "fixtures":
        assert "RANDOM" not in text and "not found" not in text, "the fixtures were not used"
    CHECKS.get(path.name, lambda *_: None)(mode, text, code)


def shows_image(code) -> bool:
    return any("image/png" in o.get("data", {}) for c in code for o in c.outputs)


def check_quickstart(mode: str, text: str, code) -> None:
    if mode == "fresh":
        for stand_in in ("random_cdnv2_a_converted.pth.tar", "random_rexnetv1_1.0x.pth"):
            assert f"Wrote work/{stand_in} instead" in text, f"no random-weights stand-in {stand_in} written"
    elif mode == "minimal":
        assert "torch not installed" in text and text.count("PyTorch is not installed, so no stand-in") == 2
        assert "Wrote work/random" not in text and VERIFIED not in text
        assert "ONNX export skipped" in text
        assert "curves.png" in "".join(c.source for c in code) and shows_image(code), "the training part did not run"
    if mode in ("fixtures", "fresh") and have_torch():  # both conversions verified against the torch references
        assert text.count(VERIFIED) == 2, text


def check_gfnet(mode: str, text: str, code) -> None:
    """The released-format fixture converted (verified with PyTorch) and its stored thresholds used; else the
    Paddle stand-in, which needs no PyTorch, in both fresh and minimal mode. Every part runs in every mode."""
    if mode == "fixtures":
        assert "the thresholds stored in the weights" in text and "weights' record" in text, text
        assert text.count(VERIFIED) == (1 if have_torch() else 0), text
    else:
        assert "Wrote work/random_gfnet_regnety_600m_p96_t5.pdparams instead" in text, "no stand-in written"
        assert VERIFIED not in text
    if mode == "minimal":
        assert "torch not installed" in text
    assert "anytime classification" in text and "budgeted batch classification" in text
    assert "gfnet_budget.png" in "".join(c.source for c in code) and shows_image(code), "no budget plot shown"


CHECKS = {"quickstart.ipynb": check_quickstart, "gfnet.ipynb": check_gfnet}  # what a run must show, per notebook


def test_runner_fails_on_a_broken_cell(tmp_path):
    nb = nbformat.read(NOTEBOOK_DIR / "quickstart.ipynb", as_version=4)
    first_code = next(i for i, c in enumerate(nb.cells) if c.cell_type == "code")
    nb.cells.insert(first_code + 1, nbformat.v4.new_code_cell('raise RuntimeError("deliberately broken")'))
    with pytest.raises(CellExecutionError) as info:
        run_notebook(nb, tmp_path)
    err = info.value
    assert err.ename == "RuntimeError" and err.evalue == "deliberately broken"
    assert 'raise RuntimeError("deliberately broken")' in str(err)
    later = [c for c in nb.cells[first_code + 2:] if c.cell_type == "code"]
    assert later and all(c.execution_count is None and not c.outputs for c in later), \
        "cells after the error must not run"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_committed_with_outputs(path):
    """Committed as run top to bottom: counts 1, 2, 3, ... in order, no errors, its main picture shown (the
    training curves; GFNet's budget plot)."""
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    assert nb.metadata.get("kernelspec", {}).get("name") == KERNEL_NAME
    code = code_cells(nb)
    counts = [c.execution_count for c in code]
    assert counts == list(range(1, len(code) + 1)), (f"{path.name}: execution counts {counts}; run it top to "
                                                    f"bottom in one kernel: python tests/test_notebooks.py --write")
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "code":
            errors = [o for o in cell.outputs if o.output_type == "error"]
            assert not errors, f"{path.name}: cell {i} was committed with an error: {errors[0].get('ename')}"
    images = [o for c in code for o in c.outputs
              if o.output_type in ("display_data", "execute_result") and "image/png" in o.get("data", {})]
    picture = PICTURES.get(path.name, "curves.png")
    assert images, f"{path.name}: no image output ({picture})"
    assert picture in "".join(c.source for c in code)


PICTURES = {"gfnet.ipynb": "gfnet_budget.png"}  # the picture a committed notebook shows; the others: curves.png


# --- writing the committed outputs -------------------------------------------------------------------------
GLOG_INFO = re.compile(r"^I\d{4} \d\d:\d\d:\d\d\.\d+ +\d+ \S+:\d+\] ")  # Paddle's native info lines


def tidy_outputs(nb):
    """Drop Paddle's native info lines (timestamps, process ids) from stderr; merge consecutive stream pieces."""
    for cell in code_cells(nb):
        outputs = []
        for o in cell.outputs:
            if o.output_type == "stream":
                if o.name == "stderr":
                    o.text = "".join(line for line in o.text.splitlines(True) if not GLOG_INFO.match(line))
                    if not o.text:
                        continue
                if outputs and outputs[-1].output_type == "stream" and outputs[-1].name == o.name:
                    outputs[-1].text += o.text
                    continue
            outputs.append(o)
        cell.outputs = outputs
        cell.metadata.pop("execution", None)
    return nb


def write_outputs(paths) -> None:
    """Run each notebook as on a fresh machine in small mode and save it with its outputs: no checkpoint
    variables, an empty ``notebooks/work/`` (removed first; refused while it holds checkpoints at the default
    paths), timings and kernel details left out."""
    present = [d for _, d in CHECKPOINTS.values() if (NOTEBOOK_DIR / d).exists()]
    if present:
        sys.exit(f"notebooks/{', notebooks/'.join(present)} exist: the saved outputs must show the fresh-machine "
                 f"path (random-weights stand-ins); move them away first")
    shutil.rmtree(NOTEBOOK_DIR / "work", ignore_errors=True)
    for path in paths:
        nb = nbformat.read(path, as_version=4)
        metadata = copy.deepcopy(nb.metadata)
        with tempfile.TemporaryDirectory() as tmp:
            run_notebook(nb, Path(tmp))
        tidy_outputs(nb)
        metadata["kernelspec"] = dict(KERNELSPEC)
        nb.metadata = metadata
        nbformat.validate(nb)
        nbformat.write(nb, path)
        print(f"wrote {path.relative_to(REPO)}: {len(code_cells(nb))} code cells")


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description="Run the notebooks in small mode as on a fresh machine and "
                                                 "save them with their outputs (what is committed).")
    parser.add_argument("--write", action="store_true", required=True, help="overwrite the notebooks")
    parser.add_argument("names", nargs="*", help="notebook file names (default: all)")
    args = parser.parse_args()
    write_outputs([NOTEBOOK_DIR / n for n in args.names] if args.names else NOTEBOOKS)
