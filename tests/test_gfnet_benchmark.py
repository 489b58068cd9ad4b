"""``benchmarks/gfnet_benchmark.py``: its smoke run times both engines at every budget, finds their exit
decisions equal and exits 0; its decision check does catch an engine that exits elsewhere."""
import copy
import importlib.util
import json
import subprocess
import sys

import pytest

from conftest import REPO

BENCH = REPO / "benchmarks" / "gfnet_benchmark.py"
BUDGETS = ("1", "10", "20", "39", "all")
ROW_NAMES = ("p = 1", "p = 10", "p = 20", "p = 39", "all steps")
QUICK_CONFIG, QUICK_T, QUICK_IMAGES, QUICK_BATCH = "mobilenetv3_large_100_p96_t3", 3, 2, 8


def _orchestrator():
    """The benchmark module itself (it imports ``benchmark.py`` from its folder, never Paddle or torch)."""
    sys.path.insert(0, str(BENCH.parent))
    spec = importlib.util.spec_from_file_location("gfnet_benchmark", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow  # 20-45 s on 2 shared cores: three fresh interpreters, Paddle and torch
def test_quick_run_times_both_engines_at_every_budget_with_equal_exits(tmp_path):
    pytest.importorskip("torch")
    out = tmp_path / "quick.json"
    p = subprocess.run([sys.executable, str(BENCH), "--quick", "--json", str(out)], cwd=REPO, capture_output=True,
                       text=True, timeout=300)
    assert p.returncode == 0, p.stdout[-3000:] + "\n--- stderr\n" + p.stderr[-3000:]
    table = p.stdout
    for name in ROW_NAMES:
        row = next((line for line in table.splitlines() if line.startswith(f"| 1 | {name} |")), None)
        assert row is not None, f"no row for {name}:\n{table}"
        assert "failed" not in row and row.count("|") == 11, row
    assert "load average" in table.lower() and "ours vs torch-ref, 1 thread(s): identical" in table

    data = json.loads(out.read_text())
    assert data["failures"] == [] and data["args"]["budgets"] == list(BUDGETS)
    assert sorted(r["engine"] for r in data["runs"] if r["ok"]) == ["ours", "torch-ref"]
    cell = data["summary"][QUICK_CONFIG]["1"]
    assert cell["mismatches"] == [] and cell["compared"] == len(BUDGETS) * (QUICK_IMAGES + QUICK_BATCH)
    for b in BUDGETS:
        for engine in ("ours", "torch-ref"):
            s = cell["budgets"][b][engine]
            assert s["b1_ms"] > 0 and s["batch_ms"] > 0, (b, engine, s)
    every_step = cell["budgets"]["all"]["ours"]
    assert every_step["b1_exit"] == every_step["batch_exit"] == QUICK_T - 1
    flops = data["prep"][QUICK_CONFIG]["flops_mmacs"]
    assert every_step["batch_mmacs"] == pytest.approx(flops[-1])
    assert cell["budgets"]["1"]["ours"]["batch_mmacs"] < flops[-1]  # the smallest budget exits early


def test_decision_check_reports_an_engine_that_exits_elsewhere():
    bench = _orchestrator()
    decisions = {"b1_exit": [0, 1], "b1_class": [3, 4], "batch_exit": [0, 1, 2], "batch_class": [3, 4, 5],
                 "b1_ms_per_image": 1.0, "batch_ms_per_image": 0.5, "b1_mmacs": 1.0, "batch_mmacs": 1.0}
    ours = {"ok": True, "round": 1, "config": "c", "threads": 1, "engine": "ours", "budgets": {"1": decisions}}
    torch_ref = copy.deepcopy(ours)
    torch_ref["engine"] = "torch-ref"
    assert bench.compare_decisions(ours, torch_ref, ["1"]) == (5, [])
    torch_ref["budgets"]["1"]["batch_exit"][2] = 1
    compared, mismatches = bench.compare_decisions(ours, torch_ref, ["1"])
    assert compared == 5 and len(mismatches) == 1 and "batch B, image 2" in mismatches[0]
    cell = bench.summarise([ours, torch_ref], ["c"], [1], ["1"])["c"]["1"]
    assert cell["compared"] == 5 and cell["mismatches"] == [f"round 1: {mismatches[0]}"]
