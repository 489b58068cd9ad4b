"""GFNet early exit on CPU, one process per engine: ours (Paddle dygraph ``GFNet.predict``) vs our torch
reference (``GFNetReference.predict``: upstream's layout and arithmetic), time per image at a few budgets.

All engines run the same budgeted loop: the glance, then only the images whose max softmax is still below
their step's threshold go on to the next patch. So the time per image depends on the budget and on the
images; each figure comes with the mean exit step and multiply-adds of the images it was measured on.

Like ``benchmark.py`` (whose machine info, load average and child runner this reuses), this script only
orchestrates and never imports Paddle or torch; every job is a fresh ``benchmarks/gfnet_engines.py`` child:

1. prepare, one child per configuration: every parameter random, BatchNorm statistics and classifiers
   calibrated on random images; our ``.pdparams`` and the same weights in upstream's torch layout; per
   budget p = 1..39 the thresholds ``find_thresholds`` gives on the softmax of ``--calibration`` random
   images (so budget p exits as upstream's would), stored with the weights; a fixed batch of ``--batch``
   images.
2. ``--rounds`` rounds; in each, per configuration and thread count, one child per engine (order rotated
   each round), threads set explicitly (and ``OMP_NUM_THREADS`` etc. in its environment). Per budget it
   times batch 1 (median of ``--iters`` calls per image, averaged over the first ``--images`` images) and
   batch ``--batch`` (median call ÷ batch), and returns every image's exit step and class at both batch
   sizes; the parent checks that each of ours agrees with torch-ref. Load average recorded around every
   round; figures are medians over rounds.

Engines: ours (dygraph, Paddle's default kernels; GFNet is not exportable, its crops depend on the data, so
dygraph is its deployment), torch-ref, and on request ours-onednn (dygraph with ``FLAGS_use_onednn``:
measured no faster at equal threads on an AMD EPYC, kept to check elsewhere). Exit status 0 only if every
child ran and each of ours made the same exit decisions and classes as torch-ref.

  python benchmarks/gfnet_benchmark.py                       # regnety_600m_p96_t5, resnet50_p96_t5; 1 and 2 threads
  python benchmarks/gfnet_benchmark.py --quick               # smoke run: mobilenetv3_large_100_p96_t3, 1 thread
  python benchmarks/gfnet_benchmark.py --configs efficientnet_b2_p128_t4 --budgets 5,39,all --json out.json
  python benchmarks/gfnet_benchmark.py --workdir W --reuse-prep --rounds 1   # time again, weights kept in W
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import benchmark as cnn  # benchmarks/benchmark.py: the CNN benchmark (this script's folder is on sys.path)
from benchmark import _csv, load_average, machine_info, say

HERE = Path(__file__).resolve().parent
CHILD = HERE / "gfnet_engines.py"
ENGINES = ("ours", "ours-onednn", "torch-ref")
RIVAL = "torch-ref"  # every other engine is ours, compared with it
ALL_STEPS = "all"
N_BUDGETS = 39


# --- decisions ----------------------------------------------------------------------------------------
def compare_decisions(ours: dict, torch_ref: dict, budgets) -> tuple:
    """``(decisions compared, mismatches)`` between a run of ours and one of torch-ref: exit step and class
    of every image, per budget, at batch 1 and at batch B."""
    compared, mismatches = 0, []
    for b in budgets:
        mine, theirs = ours["budgets"][b], torch_ref["budgets"][b]
        for size, key in (("1", "b1"), ("B", "batch")):
            pairs = list(zip(mine[f"{key}_exit"], mine[f"{key}_class"], theirs[f"{key}_exit"], theirs[f"{key}_class"]))
            if len(mine[f"{key}_exit"]) != len(theirs[f"{key}_exit"]):
                mismatches.append(f"budget {b}, batch {size}: {len(mine[f'{key}_exit'])} vs "
                                  f"{len(theirs[f'{key}_exit'])} images")
            for i, (e1, c1, e2, c2) in enumerate(pairs):
                compared += 1
                if (e1, c1) != (e2, c2):
                    mismatches.append(f"budget {b}, batch {size}, image {i}: {ours['engine']} exits at step {e1} "
                                      f"(class {c1}), {RIVAL} at step {e2} (class {c2})")
    return compared, mismatches


def summarise(runs, configs, threads_list, budgets, engines=ENGINES) -> dict:
    """Per configuration, threads, budget and engine: median over rounds of ms per image (batch 1 and B),
    the mean exit step and multiply-adds of the images measured; per configuration and threads the
    decisions compared between the engines in each round and every mismatch."""
    out = {}
    for c in configs:
        for n in threads_list:
            mine = [r for r in runs if (r["config"], r["threads"]) == (c, n)]
            cell = {"budgets": {}, "compared": 0, "mismatches": [], "errors": {}}
            ok = {e: [r for r in mine if r["engine"] == e and r.get("ok")] for e in engines}
            for e in engines:
                errors = sorted({r["error"] for r in mine if r["engine"] == e and not r.get("ok")})
                if errors:
                    cell["errors"][e] = errors
            for b in budgets:
                row = {}
                for e in engines:
                    if not ok[e]:
                        continue
                    per = [r["budgets"][b] for r in ok[e]]
                    b1, bb = [p["b1_ms_per_image"] for p in per], [p["batch_ms_per_image"] for p in per]
                    first = per[0]
                    row[e] = {"b1_ms": statistics.median(b1), "b1_rounds": b1, "batch_ms": statistics.median(bb),
                              "batch_rounds": bb, "b1_exit": statistics.mean(first["b1_exit"]),
                              "batch_exit": statistics.mean(first["batch_exit"]), "b1_mmacs": first["b1_mmacs"],
                              "batch_mmacs": first["batch_mmacs"]}
                cell["budgets"][b] = row
            for rnd in sorted({r["round"] for r in mine}):
                done = {r["engine"]: r for r in mine if r["round"] == rnd and r.get("ok")}
                for e in engines:
                    if e != RIVAL and e in done and RIVAL in done:
                        compared, bad = compare_decisions(done[e], done[RIVAL], budgets)
                        cell["compared"] += compared
                        cell["mismatches"] += [f"round {rnd}: {m}" for m in bad]
            out.setdefault(c, {})[str(n)] = cell
    return out


# --- report -------------------------------------------------------------------------------------------
def _ms(v: float) -> str:
    return f"{v:.1f}" if v >= 10 else f"{v:.2f}"


def _with_spread(s: dict, key: str, spread: bool) -> str:
    rounds = s[f"{key}_rounds"]
    text = _ms(s[f"{key}_ms"])
    return text + (f" ({_ms(min(rounds))}–{_ms(max(rounds))})" if spread and len(rounds) > 1 else "")


def _budget_name(b: str) -> str:
    return "all steps" if b == ALL_STEPS else f"p = {b}"


def report(data: dict) -> str:
    info, args = data["machine"], data["args"]
    v = info["versions"]
    ver = ", ".join(f"{k} {v[k]}" for k in ("paddlepaddle", "torch", "numpy") if v.get(k))
    spread = args["rounds"] > 1
    bsz, engines = args["batch"], args["engines"]
    ours = [e for e in engines if e != RIVAL]
    lines = ["## GFNet early exit on CPU, one process per engine", "",
             f"{info['date']}, {info['cpu']} ({info['cores']} cores), Python {info['python']}; {ver}.",
             "ours: Paddle dygraph `GFNet.predict(x, budget=p)` (ours-onednn: the same with `FLAGS_use_onednn`); "
             "torch-ref: our torch reference `GFNetReference.predict` (upstream's layout and arithmetic). All: "
             "exit at the first step whose max softmax ≥ the budget's threshold; only images not yet exited run "
             "the next step. Same weights (every parameter random, BN statistics and classifiers calibrated), "
             f"thresholds from `find_thresholds` on the softmax of {args['calibration']} random images. Batch 1: "
             f"ms per image = mean over {args['images']} images of the median of {args['iters']} calls each; batch "
             f"{bsz}: median of {max(2, args['iters'] // 4)} calls ÷ {bsz}. Each figure the median over "
             f"{args['rounds']} round(s)" + (" (min–max over rounds)" if spread else "")
             + "; ÷torch < 1: ours faster. Load average (1/5/15 min) before → after each round: "
             + "; ".join(f"{l['before']} → {l['after']}" for l in data["loads"]) + "."]
    for c in args["configs"]:
        p = data["prep"].get(c, {})
        lines += ["", f"### {c}", ""]
        if not p.get("ok"):
            lines.append(f"prepare failed: {p.get('error', '?')}")
            continue
        steps = ", ".join(f"{m:.0f}" for m in p["flops_mmacs"])
        head = ["threads", "budget", f"mean exit step (b1 / b{bsz})", f"MMAC/img (calib. set / b1 / b{bsz})"]
        for key in ("b1 ms", f"b{bsz} ms/img"):
            head += [f"{key}: {e}" for e in engines] + [f"{e} ÷torch" for e in ours if RIVAL in engines]
        lines += [f"T = {p['T']}; MMAC to reach each step's prediction: {steps}. Weights, ours vs torch-ref on the "
                  f"fixed batch, every step: max |Δlogit| {p['max_abs_logit_diff']:.1e} (logit std "
                  f"{p['logit_std']:.1f}), max |Δ max-softmax| {p['max_abs_pmax_diff']:.1e}; smallest gap between a "
                  f"max-softmax and its threshold {p['min_threshold_gap']:.1e}.", "",
                  "| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
        for n in args["threads"]:
            cell = data["summary"][c][str(n)]
            for b in args["budgets"]:
                row = cell["budgets"][b]
                first = next((row[e] for e in engines if e in row), None)
                if first is None:
                    lines.append(f"| {n} | {_budget_name(b)} | failed: "
                                 + "; ".join(f"{e}: {', '.join(x)}" for e, x in cell["errors"].items()) + " |")
                    continue
                expected = p["budgets"][b]["expected_mmacs"]
                cells = [str(n), _budget_name(b), f"{first['b1_exit']:.2f} / {first['batch_exit']:.2f}",
                         f"{expected:.0f} / {first['b1_mmacs']:.0f} / {first['batch_mmacs']:.0f}"]
                rival = row.get(RIVAL)
                for key in ("b1", "batch"):
                    cells += [_with_spread(row[e], key, spread) if e in row else "failed" for e in engines]
                    if RIVAL in engines:
                        cells += [f"{row[e][f'{key}_ms'] / rival[f'{key}_ms']:.2f}" if e in row and rival else "—"
                                  for e in ours]
                lines.append("| " + " | ".join(cells) + " |")
        for n in args["threads"]:
            cell = data["summary"][c][str(n)]
            verdict = ("identical" if not cell["mismatches"] else f"{len(cell['mismatches'])} differ")
            lines.append(f"\nExit step and class, {', '.join(ours)} vs {RIVAL}, {n} thread(s): {verdict} "
                         f"({cell['compared']} decisions: engines × budgets × images × batch 1 and {bsz} × rounds)"
                         + "".join(f"\n- {m}" for m in cell["mismatches"][:20]))
        foreign = sorted({f"{r['engine']} imported {f}" for r in data["runs"] if r["config"] == c and r.get("ok")
                          for f in r.get("foreign_frameworks", [])})
        if foreign:
            lines.append(f"\nAlso imported, not run: {', '.join(foreign)} (the torch reference backbone takes its "
                         "layer plan from the Paddle backbone module).")
    if data["failures"]:
        lines += ["", "Failed: " + "; ".join(data["failures"])]
    return "\n".join(lines)


# --- main ---------------------------------------------------------------------------------------------
def earlier_prep(folder: Path, args):
    """The prepare result kept in ``folder`` if it was made for these settings (and its files are there)."""
    try:
        res = json.loads((folder / "prep.json").read_text())
    except (OSError, ValueError):
        return None
    same = (res.get("config"), res.get("seed"), res.get("calibration_images"), res.get("batch")) == \
        (folder.name, args.seed, args.calibration, args.batch)
    files = all((folder / f).exists() for f in ("ours.pdparams", "reference.npz", "inputs.npz"))
    return {**res, "ok": True, "reused": True, "wall_s": 0.0} if same and files else None


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--configs", help="comma list of GFNet configurations, gfnet_ prefix optional "
                                     "(default regnety_600m_p96_t5,resnet50_p96_t5)")
    p.add_argument("--engines", help=f"comma list of {', '.join(ENGINES)} (default ours,{RIVAL})")
    p.add_argument("--threads", help="comma list of thread counts per engine (default 1,2)")
    p.add_argument("--budgets", help=f"comma list of budgets 1..{N_BUDGETS} or '{ALL_STEPS}' (default 1,10,20,39,all)")
    p.add_argument("--rounds", type=int, help="rounds over all engines (default 3)")
    p.add_argument("--iters", type=int, help="timed calls per image at batch 1 (default 5; batch B: a quarter, >= 2)")
    p.add_argument("--images", type=int, help="images timed one by one at batch 1 (default 4)")
    p.add_argument("--batch", type=int, help="size of the fixed batch (default 16)")
    p.add_argument("--calibration", type=int, help="random images the thresholds are found on (default 128)")
    p.add_argument("--quick", action="store_true", help="smoke run: mobilenetv3_large_100_p96_t3 (unless --configs), "
                                                        "1 thread, 1 round, 2 images x 2 calls, batch 8")
    p.add_argument("--workdir", help="keep the weights and child logs here (default: a temporary folder)")
    p.add_argument("--reuse-prep", action="store_true",
                   help="with --workdir: keep weights prepared there before (same configuration, seed, calibration "
                        "and batch) instead of preparing them again (minutes for ResNet-50)")
    p.add_argument("--timeout", type=float, default=900, help="seconds before a child is given up (default 900)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", metavar="PATH", help="also write everything measured as JSON")
    p.add_argument("--from-json", metavar="PATH", help="measure nothing: print the report of an earlier --json file")
    args = p.parse_args(argv)
    quick = dict(configs="mobilenetv3_large_100_p96_t3", threads="1", rounds=1, iters=2, images=2, batch=8,
                 calibration=32)
    full = dict(configs="regnety_600m_p96_t5,resnet50_p96_t5", engines=f"ours,{RIVAL}", threads="1,2",
                budgets=f"1,10,20,39,{ALL_STEPS}", rounds=3, iters=5, images=4, batch=16, calibration=128)
    for k, v in full.items():
        if getattr(args, k) is None:
            setattr(args, k, quick.get(k, v) if args.quick else v)
    args.configs = [c[len("gfnet_"):] if c.startswith("gfnet_") else c for c in _csv(args.configs)]
    engines = _csv(args.engines)
    unknown = sorted(set(engines) - set(ENGINES))
    if unknown:
        p.error(f"unknown engines {unknown}; known: {', '.join(ENGINES)}")
    args.engines = [e for e in ENGINES if e in engines]
    try:
        args.threads = [int(t) for t in _csv(args.threads)]
    except ValueError:
        p.error("--threads takes a comma list of integers")
    budgets = _csv(args.budgets)
    bad = [b for b in budgets if b != ALL_STEPS and not (b.isdigit() and 1 <= int(b) <= N_BUDGETS)]
    if bad:
        p.error(f"budgets are 1..{N_BUDGETS} or '{ALL_STEPS}', got {bad}")
    args.budgets = list(dict.fromkeys(budgets))
    if not args.configs or not args.engines or not args.threads or not args.budgets:
        p.error("--configs, --engines, --threads and --budgets need at least one entry each")
    if args.reuse_prep and not args.workdir:
        p.error("--reuse-prep needs --workdir (the folder prepared before)")
    if min(args.threads) < 1 or min(args.rounds, args.iters, args.images, args.batch) < 1 or args.calibration < 2:
        p.error("thread counts, --rounds, --iters, --images and --batch must be >= 1, --calibration >= 2")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.from_json:
        data = json.loads(Path(args.from_json).read_text())
        print(report(data))
        return 1 if data["failures"] else 0
    t_start = time.perf_counter()
    with cnn.work_folder(args.workdir, "ppcdnv2-gfnet-bench-") as (work, temporary):
        child = cnn.Child(work / "logs", args.timeout, script=CHILD)
        data = {"machine": machine_info(), "args": dict(vars(args)), "workdir": str(work), "prep": {}, "runs": [],
                "loads": [], "failures": []}
        failures = data["failures"]
        prep_threads = max(args.threads)
        for c in args.configs:
            res = earlier_prep(work / c, args) if args.reuse_prep else None
            if res:
                say(f"[prepare {c}] reusing {work / c}")
                data["prep"][c] = res
                continue
            say(f"[prepare {c}] weights, thresholds, inputs ...")
            res = child(f"prep-{c}", ["prep", "--config", c, "--dir", str(work / c), "--threads", str(prep_threads),
                                      "--seed", str(args.seed), "--calibration", str(args.calibration),
                                      "--batch", str(args.batch)], prep_threads)
            data["prep"][c] = res
            say(f"[prepare {c}] " + (f"done in {res['wall_s']:.0f} s" if res.get("ok") else f"FAILED: {res['error']}"))
            if not res.get("ok"):
                failures.append(f"prepare {c}: {res['error']}")
        for r in range(args.rounds):
            before = load_average()
            say(f"[round {r + 1}/{args.rounds}] load average {before}")
            for c in args.configs:
                for n in args.threads:
                    k = r % len(args.engines)
                    for e in args.engines[k:] + args.engines[:k]:
                        base = {"round": r + 1, "config": c, "threads": n, "engine": e}
                        if not data["prep"][c].get("ok"):
                            res = {"ok": False, "error": "prepare failed"}
                        else:
                            res = child(f"r{r + 1}-{c}-{n}t-{e}",
                                        ["run", "--engine", e, "--config", c, "--dir", str(work / c), "--threads",
                                         str(n), "--budgets", ",".join(args.budgets), "--images", str(args.images),
                                         "--iters", str(args.iters)], n)
                        res.update(base)
                        data["runs"].append(res)
                        if res.get("ok"):
                            say(f"  {c} {n}t {e:<11} " + " ".join(
                                f"[{b}] {t['b1_ms_per_image']:.0f}/{t['batch_ms_per_image']:.0f}"
                                for b, t in res["budgets"].items()) + f" ms/img (b1/bB), {res['wall_s']:.0f} s")
                        else:
                            say(f"  {c} {n}t {e:<11} FAILED: {res['error']}")
                            if data["prep"][c].get("ok"):
                                failures.append(f"round {r + 1} {c} {n}t {e}: {res['error']}")
            data["loads"].append({"round": r + 1, "before": before, "after": load_average()})
        data["summary"] = summarise(data["runs"], args.configs, args.threads, args.budgets, args.engines)
        for c, by_threads in data["summary"].items():
            for n, cell in by_threads.items():
                if cell["mismatches"]:
                    failures.append(f"{c} {n}t: {len(cell['mismatches'])} exit decisions differ between the engines")
        cnn.finish(data, t_start, work, temporary, args.json, report)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
