"""The notebooks under ``notebooks/`` run top to bottom, and the committed files carry no outputs.

Each notebook is executed with nbclient in a fresh kernel of *this* Python (a kernel spec written for
``sys.executable``, whatever ``jupyter kernelspec list`` says ``python3`` is), from the notebooks'
folder, in small mode (``PPCDNV2_NOTEBOOK_SMALL=1``), without installing anything
(``PPCDNV2_NOTEBOOK_SKIP_INSTALL=1``) and with the official-format fixture as the checkpoint
(``PPCDNV2_CHECKPOINT``). Any cell error fails the test with the cell and its traceback. A copy of the
quickstart with a deliberately broken cell shows that the runner does fail.
"""
import json
import os
import sys
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
CHECKPOINT = (REPO / ".." / "shared" / "fixtures" / "official" / "cdnv2_a_s0_converted.pth.tar").resolve()
KERNEL_NAME = "python3"
CELL_TIMEOUT = 900  # seconds per cell; the slowest (a short training, an ONNX export) takes well under a minute


def checkpoint_fixture() -> Path:
    if not CHECKPOINT.is_file():  # CI always has it: a missing fixture is an error, not a skip
        pytest.fail(f"official-format fixture not found: {CHECKPOINT} (the notebooks convert it; "
                    f"expected in ../shared/fixtures/official/ beside the repository)")
    return CHECKPOINT


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


def run_notebook(nb, spec_root: Path):
    """Execute ``nb`` in place like CI does; raises ``CellExecutionError`` naming the first failing cell."""
    env = dict(os.environ, PPCDNV2_NOTEBOOK_SMALL="1", PPCDNV2_NOTEBOOK_SKIP_INSTALL="1",
               PPCDNV2_CHECKPOINT=str(checkpoint_fixture()), PYDEVD_DISABLE_FILE_VALIDATION="1")
    client = NotebookClient(nb, km=kernel_manager(spec_root), kernel_name=KERNEL_NAME, timeout=CELL_TIMEOUT,
                            allow_errors=False, record_timing=True,
                            resources={"metadata": {"path": str(NOTEBOOK_DIR)}})
    return client.execute(env=env)


def test_notebooks_found():
    assert NOTEBOOKS, f"no notebooks under {NOTEBOOK_DIR}"
    assert NOTEBOOK_DIR / "quickstart.ipynb" in NOTEBOOKS


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_runs(path, tmp_path):
    nb = nbformat.read(path, as_version=4)
    failure = None
    try:
        run_notebook(nb, tmp_path)
    except CellExecutionError as e:
        failure = f"{path.name}: {e}"
    if failure:  # the failing cell and its traceback, without nbclient's internals
        pytest.fail(failure, pytrace=False)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code and all(c.execution_count is not None for c in code), "not every code cell ran"


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
    assert later and all(c.execution_count is None for c in later), "cells after the error must not run"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_committed_without_outputs(path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, \
                f"{path.name}: code cell {i} has outputs or an execution count; strip them before committing"
    assert nb.metadata.get("kernelspec", {}).get("name") == KERNEL_NAME
