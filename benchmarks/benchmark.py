"""CPU inference benchmark, one process per engine: ours (Paddle dygraph, Paddle Inference, ONNX) vs the
official-layout PyTorch model (eager and exported to ONNX) vs ppim, on CondenseNetV2 A/B/C (condensed
form) and ReXNet-1.0.

Why one process per engine: OpenMP runtimes do not share a process well. torch, onnxruntime and Paddle
(MKL/oneDNN) each keep their own spinning thread pool; after onnxruntime or Paddle Inference had run in
a process, torch took 6 s instead of 0.1 s per image there. So this script only orchestrates (it never
imports Paddle, torch or onnxruntime) and every measurement is a fresh ``benchmarks/engines.py`` child:

1. prepare, one child per model: random but fully trained-looking weights (CondenseNetV2: the
   upstream-layout training-form torch model with masks driven through every stage and BN calibrated,
   converted to ours and ``ppcdnv2.condense``-d; ReXNet: every parameter random, BN calibrated), then
   every artefact: our ``.pdparams``, Paddle Inference export, our ONNX, the official-layout torch
   state dict and its own ``torch.onnx`` export, a ppim ``.pdparams``, a reference input and our
   dygraph logits. ``ppcdnv2.condense()`` is timed in its own Paddle-only child.
2. ``--rounds`` rounds; in each, for every model and thread count, one child per engine (the order
   rotates each round, so a load change on the machine hits every engine alike). A child loads its
   artefact, sets its thread count explicitly (and ``OMP_NUM_THREADS`` etc. in its environment),
   checks its logits against ours-dygraph's (max |Δlogit|), warms up and times batch-1 latency
   (median over ``--iters`` calls) and batch-16 throughput. The load average is recorded around
   every round; figures are medians over rounds.
3. Utilisation: a numpy float32 2048² GEMM per thread count gives the machine's attainable MAC/s;
   the multiply-adds our counter says the condensed model executes per image, times images/s, over
   that, is the share of it a model reaches (the official layout executes more: its dense SFR matmul).

Engines: ours-dygraph, ours-infer, ours-onnx (our export as ``tools/infer.py`` runs it: the graph rewrites of
``ppcdnv2.deploy.onnx_opt``, ``OnnxPredictor``'s session settings and micro-batches), ours-onnx-spin (the same
with ``OnnxPredictor(spinning=True)``: worker threads spin between operators, onnxruntime's default; faster on
an idle machine with > 1 thread, slower under load), ours-onnx-int8 (the same
after ``tools/export.py --quantize int8``, calibrated on N(0, 1) images like the BatchNorms of the random
weights), ours-onnx-plain (the export as paddle2onnx writes it in a plain session, whole batches: the state
before those changes, not counted as "ours" in the speed-up table), ours-openvino (if ``openvino`` is
installed), torch (official layout, eager, no_grad), torch-onnx (the same exported by ``torch.onnx`` in a
plain onnxruntime session, whole batches: what a user of upstream alone gets), torch-onnx-tuned (that file
with our session settings and micro-batches: how much of our lead is the model itself), ppim (as its users run
it: its child gets ``PPCDNV2_CPU_TUNING=0``, because ``import ppcdnv2``, which builds its CondenseNetV2,
would otherwise give its Paddle the AVX2 MKL kernels of ``ppcdnv2._cpu``: ~2× faster on AMD CPUs).
``--train-step`` adds one SGD step of CondenseNetV2-A, training form, ours vs the upstream-layout torch model. An engine that fails is reported with its reason; the exit status
is 0 only if every requested engine ran (optional engines that are not installed excepted).

  python benchmarks/benchmark.py                                  # A, B, C, ReXNet; 1 and 2 threads
  python benchmarks/benchmark.py --quick                          # smoke run: cdnv2_a, 2 threads, batch 1
  python benchmarks/benchmark.py --models cdnv2_c,rexnet_100 --rounds 3 --json out.json
  python benchmarks/benchmark.py --engines ours-onnx,torch-onnx --threads 1 --batches 16 --train-step
  python benchmarks/benchmark.py --train-only --threads 2 --rounds 5      # the training step alone
"""
from __future__ import annotations

import argparse
import contextlib
import datetime
import importlib.metadata
import importlib.util
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
CHILD = HERE / "engines.py"
MARK = "@@BENCH@@"
MODELS = ("cdnv2_a", "cdnv2_b", "cdnv2_c", "rexnet_100")
ALIASES = {"a": "cdnv2_a", "b": "cdnv2_b", "c": "cdnv2_c", "rexnet": "rexnet_100"}
ENGINES = ("ours-dygraph", "ours-infer", "ours-onnx", "ours-onnx-spin", "ours-onnx-int8", "ours-onnx-plain",
           "ours-openvino", "torch",
           "torch-onnx", "torch-onnx-tuned", "ppim")
# not "ours" in the speed-up table: the export before this project's ONNX work, kept to show its effect
BASELINES = ("ours-onnx-plain",)
OURS = tuple(e for e in ENGINES if e.startswith("ours") and e not in BASELINES)
RIVALS = ("torch", "torch-onnx", "torch-onnx-tuned", "ppim")
OPTIONAL = {"ours-openvino": "openvino", "ppim": "ppim"}  # engine → module; skipped if not installed
PACKAGES = ("paddlepaddle", "torch", "onnxruntime", "onnx", "paddle2onnx", "ppim", "openvino", "numpy", "ppcdnv2")
THREAD_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
AS_SHIPPED = {"ppim": {"PPCDNV2_CPU_TUNING": "0"}}  # engine → environment: a peer without our process settings


# --- machine ------------------------------------------------------------------------------------------
def machine_info() -> dict:
    """CPU, cores, versions: read from metadata, never by importing the frameworks here."""
    cpu = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    versions = {}
    for pkg in PACKAGES:
        try:
            versions[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            versions[pkg] = None
    return {"date": datetime.datetime.now().isoformat(timespec="seconds"), "cpu": cpu, "cores": os.cpu_count(),
            "python": platform.python_version(), "versions": versions}


def load_average() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "n/a"


# --- children -----------------------------------------------------------------------------------------
class Child:
    """Run one job of ``script`` (default ``engines.py``) in a fresh interpreter with ``threads`` everywhere in
    its environment; its last ``MARK`` line is the result."""

    def __init__(self, logdir: Path, timeout: float, script: Path = CHILD):
        self.logdir, self.timeout, self.count, self.script = logdir, timeout, 0, script
        logdir.mkdir(parents=True, exist_ok=True)

    def __call__(self, label: str, job_args, threads: int, env=None) -> dict:
        env = dict(os.environ, PYTHONUNBUFFERED="1", **{k: str(threads) for k in THREAD_ENV}, **(env or {}))
        # the checkout's ppcdnv2 even where it is not pip-installed (the child runs from benchmarks/)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(HERE.parent), env.get("PYTHONPATH")) if p)
        self.count += 1
        log = self.logdir / f"{self.count:03d}-{label.replace('/', '_')}.log"
        t = time.perf_counter()
        try:
            proc = subprocess.run([sys.executable, str(self.script), *job_args], capture_output=True, text=True, env=env,
                                  timeout=self.timeout)
        except subprocess.TimeoutExpired as e:
            log.write_text(_text(e.stdout) + "\n--- stderr\n" + _text(e.stderr))
            return {"ok": False, "error": f"timed out after {self.timeout:.0f} s", "wall_s": self.timeout,
                    "log": str(log)}
        log.write_text(proc.stdout + "\n--- stderr\n" + proc.stderr)
        wall = time.perf_counter() - t
        lines = [l for l in proc.stdout.splitlines() if l.startswith(MARK)]
        if lines:
            res = json.loads(lines[-1][len(MARK):])
        else:  # crashed before it could say why: its last words
            tail = [l.strip() for l in proc.stderr.splitlines() if l.strip() and "Warning" not in l]
            res = {"ok": False, "error": f"exit {proc.returncode}: " + (tail[-1][:300] if tail else "no output")}
        res.update(wall_s=wall, log=str(log))
        return res


def _text(b) -> str:
    return b.decode(errors="replace") if isinstance(b, bytes) else (b or "")


def say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


@contextlib.contextmanager
def work_folder(workdir, prefix: str):
    """The run's folder: ``workdir`` (kept), or a temporary one removed at the end, also on error.

    Yields ``(path, temporary)``.
    """
    if workdir:
        work = Path(workdir)
        work.mkdir(parents=True, exist_ok=True)
        yield work, False
        return
    tmp = tempfile.mkdtemp(prefix=prefix)
    try:
        yield Path(tmp), True
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def finish(data: dict, t_start: float, work: Path, temporary: bool, json_path, report_of) -> None:
    """End of a run: total time, the report on stdout, where the child logs are, the JSON if asked for."""
    data["total_s"] = time.perf_counter() - t_start
    print(report_of(data))
    say(f"total {data['total_s']:.0f} s; child logs in {work / 'logs'}" + (" (temporary)" if temporary else ""))
    if json_path:
        Path(json_path).write_text(json.dumps(data, indent=2, default=str) + "\n")


# --- aggregation --------------------------------------------------------------------------------------
def summarise(runs, models, threads_list, engines, batches) -> dict:
    """Per model, threads, engine: median over rounds of each round's median time, spread, worst |Δlogit|."""
    out = {}
    for m in models:
        for n in threads_list:
            for e in engines:
                mine = [r for r in runs if (r["model"], r["threads"], r["engine"]) == (m, n, e)]
                ok = [r for r in mine if r.get("ok")]
                s = {"runs": len(mine), "ok": len(ok), "errors": sorted({r["error"] for r in mine if not r.get("ok")})}
                if ok:
                    s["max_abs_diff"] = max(r["max_abs_diff"] for r in ok)
                    s["foreign_frameworks"] = sorted({f for r in ok for f in r.get("foreign_frameworks", [])})
                    for b in batches:
                        per_round = [r["timing"][str(b)]["median_s"] for r in ok if str(b) in r["timing"]]
                        busy = [r["timing"][str(b)]["cores_busy"] for r in ok if str(b) in r["timing"]]
                        cpu = [r["timing"][str(b)]["cpu_per_call_s"] for r in ok
                               if "cpu_per_call_s" in r["timing"].get(str(b), {})]
                        if per_round:
                            s[str(b)] = {"median_s": statistics.median(per_round), "min_s": min(per_round),
                                         "max_s": max(per_round), "rounds": per_round,
                                         "cores_busy": statistics.median(busy)}
                            if cpu:
                                s[str(b)]["cpu_per_call_s"] = statistics.median(cpu)
                out.setdefault(m, {}).setdefault(str(n), {})[e] = s
    return out


def best_ours(cell: dict, batch: int):
    """(engine, seconds) of our fastest engine at ``batch`` in one (model, threads) cell, or None."""
    times = {e: cell[e][str(batch)]["median_s"] for e in OURS if e in cell and str(batch) in cell[e]}
    return min(times.items(), key=lambda kv: kv[1]) if times else None


# --- report -------------------------------------------------------------------------------------------
def _latency(s, batch, spread):
    if s is None:
        return "—"
    v = s["median_s"] * 1000 if batch == 1 else batch / s["median_s"]
    lo, hi = (s["min_s"] * 1000, s["max_s"] * 1000) if batch == 1 else (batch / s["max_s"], batch / s["min_s"])
    prec = 1 if v >= 10 else 2
    text = f"{v:.{prec}f}"
    return text + (f" ({lo:.{prec}f}–{hi:.{prec}f})" if spread and len(s["rounds"]) > 1 else "")


def train_report(data: dict) -> list:
    """The training-step table: per thread count, each side's median over rounds and torch/ours per round."""
    lines = ["", "### One SGD step, CondenseNetV2-A training form (batch 16, 224², cross-entropy)", "",
             "| threads | ours (Paddle) s/step | upstream layout (torch) s/step | torch / ours "
             "| CPU s/step: ours, torch | load before → after |",
             "|---|---|---|---|---|---|"]
    for n, t in data["train_step"].items():
        o, r = t.get("paddle", {}), t.get("torch", {})
        fmt = lambda x: f"{x['median_s']:.2f}" if x.get("ok") else f"failed: {x.get('error')}"
        ratios = t.get("ratios") or ([r["median_s"] / o["median_s"]] if o.get("ok") and r.get("ok") else [])
        ratio = f"{statistics.median(ratios):.2f}×" if ratios else "—"
        if len(ratios) > 1:  # the same-round ratios: a load change between rounds cancels out of each
            ratio += f" ({min(ratios):.2f}–{max(ratios):.2f} over {len(ratios)} rounds)"
        loads = "; ".join(f"{l['before']} → {l['after']}" for l in t.get("loads", [])) or "—"
        cpu = ", ".join(f"{x['cpu_s']:.2f}" if x.get("cpu_s") is not None else "—" for x in (o, r))
        lines.append(f"| {n} | {fmt(o)} | {fmt(r)} | {ratio} | {cpu} | {loads} |")
    return lines


def report(data: dict) -> str:
    info, args = data["machine"], data["args"]
    if args.get("train_only"):
        v = info["versions"]
        lines = ["## Training step, one process per framework", "",
                 f"{info['date']}, {info['cpu']} ({info['cores']} cores), Python {info['python']}; paddlepaddle "
                 f"{v.get('paddlepaddle')}, torch {v.get('torch')}. {args['train_rounds']} round(s) of one child "
                 f"per framework (order alternating); each child: 1 warm-up step, median of {args['train_steps']}."]
        lines += train_report(data)
        if data["failures"]:
            lines += ["", "Failed: " + "; ".join(data["failures"])]
        return "\n".join(lines)
    batches, models, threads_list = args["batches"], args["models"], args["threads"]
    engines = data["engines_run"]
    summary, prep = data["summary"], data["prep"]
    v = info["versions"]
    ver = ", ".join(f"{k} {v[k]}" for k in ("paddlepaddle", "torch", "onnxruntime", "paddle2onnx", "ppim", "openvino")
                    if v.get(k))
    lines = ["## CPU inference, one process per engine", "",
             f"{info['date']}, {info['cpu']} ({info['cores']} cores), Python {info['python']}; {ver}.",
             f"{args['rounds']} round(s); batch 1: median of {args['iters']} calls; batch 16: median of "
             f"{max(3, args['iters'] // 4)} calls; each figure the median over rounds (min–max over rounds in "
             "brackets). Load average (1/5/15 min) before → after each round: "
             + "; ".join(f"{l['before']} → {l['after']}" for l in data["loads"]) + "."]
    if data["skipped"]:
        lines.append("Not run: " + "; ".join(f"{e} ({why})" for e, why in data["skipped"].items()) + ".")
    spread = args["rounds"] > 1
    gemm = data["gemm"]
    for m in models:
        macs = prep.get(m, {}).get("macs_ours")
        for n in threads_list:
            cell = summary[m][str(n)]
            g = gemm.get(str(n))
            lines += ["", f"### {m}, {n} thread{'s' if n > 1 else ''}", ""]
            head = "| engine |" + "".join(f" batch {b}: {'ms' if b == 1 else 'img/s'} |" for b in batches)
            head += "".join(f" util. b{b} |" for b in batches if macs and g) + " cores busy |" + " max \\|Δlogit\\| |"
            lines += [head, "|---" * (head.replace("\\|", "").count("|") - 1) + "|"]
            for e in engines:
                s = cell[e]
                if not s["ok"]:
                    lines.append(f"| {e} | failed: {'; '.join(s['errors'])} |")
                    continue
                row = f"| {e} |" + "".join(f" {_latency(s.get(str(b)), b, spread)} |" for b in batches)
                if macs and g:
                    row += "".join(f" {b / s[str(b)]['median_s'] * macs / (g * 1e9) * 100:.1f}% |" if str(b) in s
                                   else " — |" for b in batches)
                busy = "/".join(f"{s[str(b)]['cores_busy']:.2f}" for b in batches if str(b) in s)
                note = " (also imported " + ", ".join(s["foreign_frameworks"]) + ")" if s["foreign_frameworks"] else ""
                lines.append(row + f" {busy} | {s['max_abs_diff']:.1e}{note} |")
            fastest = [f"batch {b}: **{best_ours(cell, b)[0]}**" for b in batches if best_ours(cell, b)]
            if fastest:
                lines += ["", "Fastest of ours: " + ", ".join(fastest) + "."]
    # ratios
    lines += ["", "### Speed-up of our fastest engine (rival's time / ours; > 1: ours faster)", "",
              "| model | threads | batch | ours (fastest) | " + " | ".join(f"vs {r}" for r in RIVALS) + " |",
              "|---|---|---|---|" + "---|" * len(RIVALS)]
    for m in models:
        for b in batches:
            for n in [*threads_list, "best"]:
                if n == "best":  # each side with its best thread count
                    if len(threads_list) < 2:
                        continue
                    cands = [(best_ours(summary[m][str(t)], b), t) for t in threads_list]
                    cands = [(c[0], c[1], t) for c, t in cands if c]
                    if not cands:
                        continue
                    eng, secs, t = min(cands, key=lambda c: c[1])
                    ours_txt = f"{eng} ({t}t)"

                    def rival(r):
                        ts = [(summary[m][str(t)][r][str(b)]["median_s"], t) for t in threads_list
                              if r in summary[m][str(t)] and str(b) in summary[m][str(t)][r]]
                        return min(ts) if ts else None
                    cells = []
                    for r in RIVALS:
                        rv = rival(r)
                        cells.append(f"{rv[0] / secs:.2f}× ({rv[1]}t)" if rv else "—")
                    lines.append(f"| {m} | best of {','.join(map(str, threads_list))} | {b} | {ours_txt} | "
                                 + " | ".join(cells) + " |")
                    continue
                cell = summary[m][str(n)]
                best = best_ours(cell, b)
                if not best:
                    continue
                cells = [f"{cell[r][str(b)]['median_s'] / best[1]:.2f}×" if r in cell and str(b) in cell[r] else "—"
                         for r in RIVALS]
                lines.append(f"| {m} | {n} | {b} | {best[0]} | " + " | ".join(cells) + " |")
    if lines[-1].startswith("|---"):
        lines[-2:] = ["(no engine of ours ran: nothing to compare)"]
    # with one thread the process's CPU time per call is the work itself, whatever else the machine runs
    if 1 in threads_list:
        rows = []
        for m in models:
            cell = summary[m]["1"]
            for b in batches:
                cpu = {e: cell[e][str(b)]["cpu_per_call_s"] for e in cell
                       if str(b) in cell[e] and "cpu_per_call_s" in cell[e][str(b)]}
                mine = {e: t for e, t in cpu.items() if e in OURS}
                if not mine:
                    continue
                eng, secs = min(mine.items(), key=lambda kv: kv[1])
                per_img = secs / b * 1000
                cells = [f"{cpu[r] / secs:.2f}×" if r in cpu else "—" for r in RIVALS]
                util = ""
                macs, g = prep.get(m, {}).get("macs_ours"), gemm.get("1")
                if macs and g:
                    util = f"{b / secs * macs / (g * 1e9) * 100:.1f}%"
                rows.append(f"| {m} | {b} | {eng} | {per_img:.1f} | {util or '—'} | " + " | ".join(cells) + " |")
        if rows:
            lines += ["", "### The same from CPU time (1 thread): robust to other load on the machine", "",
                      "CPU seconds the engine's process used per call (user + system, over the timed calls); with "
                      "one thread that is its work, while wall time also counts the waits for a core.", "",
                      "| model | batch | ours (least CPU) | ours CPU ms/img | util. (CPU) | "
                      + " | ".join(f"vs {r}" for r in RIVALS) + " |", "|---|---|---|---|---|" + "---|" * len(RIVALS)]
            lines += rows
    # utilisation basis, condense, sizes
    if gemm:
        lines += ["", "GEMM baseline (numpy float32 2048², best of 6 calls, best over rounds): "
                  + ", ".join(f"{n} thread(s) {g:.1f} GMAC/s" for n, g in gemm.items())
                  + ". Utilisation = executed multiply-adds per image (ours, by `ppcdnv2.flops`) × images/s ÷ "
                  "GEMM MAC/s; the same per-image count for every engine (the useful work: the official "
                  "layout's dense SFR matmul executes more, see below). Cores busy: process CPU time ÷ wall time "
                  "while timing (batch " + "/".join(map(str, batches)) + ")."]
    lines += ["", "| model | MMAC/img executed: ours | official layout | condense() | reference logit std | "
              "file sizes (MB) |", "|---|---|---|---|---|---|"]
    for m in models:
        p = prep.get(m, {})
        if not p.get("ok"):
            lines.append(f"| {m} | prepare failed: {p.get('error', '?')} | | | | |")
            continue
        c = data["condense"].get(m)
        ctext = (f"{c['condense_s']:.3f} s" if c and c.get("ok") else f"failed: {c['error']}" if c else "—")
        sizes = ", ".join(f"{k} {s:.1f}" for k, s in p["sizes_mb"].items())
        errs = "; ".join(f"{k}: {e}" for k, e in p["errors"].items())
        lines.append(f"| {m} | {p['macs_ours'] / 1e6:.1f} | {p['macs_official'] / 1e6:.1f} | {ctext} | {p['logit_std']:.2f} | {sizes}"
                     + (f"; failed: {errs}" if errs else "") + " |")
    if data.get("train_step"):
        lines += train_report(data)
    if data["failures"]:
        lines += ["", "Failed: " + "; ".join(data["failures"])]
    return "\n".join(lines)


# --- training step ------------------------------------------------------------------------------------
def train_steps(child, args, failures) -> dict:
    """``--train-rounds`` rounds per thread count, each a Paddle then a torch child (order alternating).

    Per thread count and framework: ``median_s``, the median over rounds of each child's median step;
    ``ratios``: torch / ours of each round, so that a load change between rounds cancels out.
    """
    out = {}
    for i, n in enumerate(args.threads):
        runs, loads, ratios = {"paddle": [], "torch": []}, [], []
        for r in range(args.train_rounds):
            before = load_average()
            for fw in (("paddle", "torch") if (i + r) % 2 == 0 else ("torch", "paddle")):
                say(f"[train step] round {r + 1}/{args.train_rounds}, {fw}, {n} thread(s) ...")
                res = child(f"train-r{r + 1}-{fw}-{n}t", ["train", "--framework", fw, "--threads", str(n), "--steps",
                                                         str(args.train_steps)], n)
                runs[fw].append(res)
                if res.get("ok"):
                    say(f"  {fw} {res['median_s']:.3f} s/step (CPU {res.get('cpu_s', float('nan')):.3f} s)")
                else:
                    failures.append(f"train step {fw} {n}t round {r + 1}: {res['error']}")
            loads.append({"round": r + 1, "before": before, "after": load_average()})
            if runs["paddle"][-1].get("ok") and runs["torch"][-1].get("ok"):
                ratios.append(runs["torch"][-1]["median_s"] / runs["paddle"][-1]["median_s"])
        cell = {"ratios": ratios, "loads": loads}
        for fw, rs in runs.items():
            ok = [x for x in rs if x.get("ok")]
            cpu = [x["cpu_s"] for x in ok if x.get("cpu_s") is not None]
            cell[fw] = ({"ok": True, "median_s": statistics.median(x["median_s"] for x in ok),
                         "cpu_s": statistics.median(cpu) if cpu else None,
                         "rounds_s": [x["median_s"] for x in ok], "runs": rs} if ok else
                        {"ok": False, "error": "; ".join(sorted({x["error"] for x in rs})), "runs": rs})
        out[str(n)] = cell
    return out


# --- main ---------------------------------------------------------------------------------------------
def _csv(text):
    return [t.strip() for t in str(text).split(",") if t.strip()]


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", help=f"comma list of {', '.join(MODELS)} (or a, b, c; default all four)")
    p.add_argument("--engines", help=f"comma list of {', '.join(ENGINES)} (default all)")
    p.add_argument("--threads", help="comma list of thread counts per engine (default 1,2)")
    p.add_argument("--batches", help="comma list of batch sizes (default 1,16)")
    p.add_argument("--rounds", type=int, help="rounds over all engines (default 3)")
    p.add_argument("--iters", "--repeats", type=int, dest="iters",
                   help="timed calls at batch 1 (default 20; larger batches: a quarter, at least 3)")
    p.add_argument("--quick", action="store_true",
                   help="smoke run: cdnv2_a (unless --models), 2 threads, 1 round, 5 calls, batch 1")
    p.add_argument("--train-step", action="store_true", help="also time one SGD step of CondenseNetV2-A, training form")
    p.add_argument("--train-steps", type=int, default=3, help="timed steps for --train-step (default 3)")
    p.add_argument("--train-only", action="store_true",
                   help="time only the training step (no artefacts, no inference engines); implies --train-step")
    p.add_argument("--train-rounds", type=int,
                   help="rounds of the training step, each a Paddle and a torch child "
                        "(default 1; with --train-only: --rounds)")
    p.add_argument("--workdir", help="keep the artefacts and child logs here (default: a temporary folder)")
    p.add_argument("--timeout", type=float, default=900, help="seconds before a child is given up (default 900)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", metavar="PATH", help="also write everything measured as JSON")
    p.add_argument("--from-json", metavar="PATH", help="measure nothing: print the report of an earlier --json file")
    args = p.parse_args(argv)
    quick = dict(models="cdnv2_a", threads="2", rounds=1, iters=5, batches="1")
    full = dict(models=",".join(MODELS), threads="1,2", rounds=3, iters=20, batches="1,16", engines=",".join(ENGINES))
    for k, v in full.items():
        if getattr(args, k) is None:
            setattr(args, k, quick.get(k, v) if args.quick else v)
    models = []
    for m in _csv(args.models):
        m = ALIASES.get(m.lower(), m.lower())
        if m not in MODELS:
            p.error(f"unknown model {m!r}; known: {', '.join(MODELS)}")
        models.append(m)
    engines = _csv(args.engines)
    unknown = sorted(set(engines) - set(ENGINES))
    if unknown:
        p.error(f"unknown engines {unknown}; known: {', '.join(ENGINES)}")
    try:
        threads, batches = [int(t) for t in _csv(args.threads)], [int(b) for b in _csv(args.batches)]
    except ValueError:
        p.error("--threads and --batches take comma lists of integers")
    if not models or not engines or not threads or not batches:
        p.error("--models, --engines, --threads and --batches need at least one entry each")
    if min(threads + batches) < 1 or args.rounds < 1 or args.iters < 1:
        p.error("thread counts, batch sizes, --rounds and --iters must be >= 1")
    args.models, args.engines, args.threads, args.batches = models, [e for e in ENGINES if e in engines], threads, batches
    if args.train_only:
        args.train_step, args.models = True, []
    if args.train_rounds is None:
        args.train_rounds = args.rounds if args.train_only else 1
    if args.train_rounds < 1 or args.train_steps < 1:
        p.error("--train-rounds and --train-steps must be >= 1")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.from_json:
        data = json.loads(Path(args.from_json).read_text())
        data["gemm"] = {n: max(v) for n, v in data["gemm_rounds"].items()}
        print(report(data))
        return 1 if data["failures"] else 0
    t_start = time.perf_counter()
    skipped = {}
    engines = []
    for e in args.engines:
        mod = OPTIONAL.get(e)
        if mod and importlib.util.find_spec(mod) is None:  # find_spec does not import the package
            skipped[e] = f"{mod} not installed"
        else:
            engines.append(e)
    with work_folder(args.workdir, "ppcdnv2-bench-") as (work, temporary):
        child = Child(work / "logs", args.timeout)
        data = {"machine": machine_info(), "args": {k: v for k, v in vars(args).items()}, "engines_run": engines,
                "skipped": skipped, "workdir": str(work), "prep": {}, "condense": {}, "gemm": {}, "gemm_rounds": {},
                "runs": [], "loads": [], "failures": []}
        failures = data["failures"]
        # 1. artefacts
        prep_threads = max(args.threads)
        for m in args.models:
            say(f"[prepare {m}] weights and artefacts ...")
            res = child(f"prep-{m}", ["prep", "--model", m, "--dir", str(work / m), "--engines", ",".join(engines),
                                      "--threads", str(prep_threads), "--seed", str(args.seed)], prep_threads)
            data["prep"][m] = res
            say(f"[prepare {m}] " + (f"done in {res['wall_s']:.1f} s" if res.get("ok") else f"FAILED: {res['error']}"))
            if res.get("ok") and m.startswith("cdnv2_"):
                data["condense"][m] = child(f"condense-{m}", ["condense", "--model", m, "--dir", str(work / m),
                                                              "--threads", str(prep_threads)], prep_threads)
        needs = {"ours-infer": "ours Paddle Inference .pdiparams", "ours-onnx": "ours .onnx",
                 "ours-onnx-spin": "ours .onnx", "ours-onnx-int8": "ours .int8.onnx", "ours-onnx-plain": "ours .onnx as paddle2onnx writes it",
                 "ours-openvino": "ours .onnx", "torch-onnx": "official-layout .onnx (torch.onnx)",
                 "torch-onnx-tuned": "official-layout .onnx (torch.onnx)",
                 "ppim": "ppim .pdparams", "torch": "official-layout .pth", "ours-dygraph": "ours .pdparams"}
        # 2. rounds
        for r in range(0 if args.train_only else args.rounds):
            before = load_average()
            say(f"[round {r + 1}/{args.rounds}] load average {before}")
            for n in args.threads:
                g = child(f"r{r + 1}-gemm-{n}t", ["gemm", "--threads", str(n)], n)
                if g.get("ok"):
                    data["gemm_rounds"].setdefault(str(n), []).append(g["gmacs"])
                else:
                    failures.append(f"GEMM baseline, {n} threads: {g['error']}")
            for m in args.models:
                p = data["prep"][m]
                for n in args.threads:
                    k = r % len(engines)
                    for e in engines[k:] + engines[:k]:
                        base = {"round": r + 1, "model": m, "threads": n, "engine": e}
                        if not p.get("ok"):
                            res = {"ok": False, "error": f"prepare failed: {p['error']}"}
                        elif needs[e] in p["errors"]:
                            res = {"ok": False, "error": f"export failed: {p['errors'][needs[e]]}"}
                        else:
                            res = child(f"r{r + 1}-{m}-{n}t-{e}",
                                        ["run", "--engine", e, "--model", m, "--dir", str(work / m), "--threads", str(n),
                                         "--batches", ",".join(map(str, args.batches)), "--iters", str(args.iters)], n,
                                        env=AS_SHIPPED.get(e))
                        res.update(base)
                        data["runs"].append(res)
                        if res.get("ok"):
                            t1 = res["timing"].get("1")
                            say(f"  {m} {n}t {e:<14} " + (f"b1 {t1['median_s'] * 1000:.1f} ms " if t1 else "")
                                + " ".join(f"b{b} {int(b) / t['median_s']:.1f} img/s" for b, t in res["timing"].items()
                                           if b != "1") + f"  (|Δ| {res['max_abs_diff']:.1e}, {res['wall_s']:.0f} s)")
                        else:
                            say(f"  {m} {n}t {e:<14} FAILED: {res['error']}")
            data["loads"].append({"round": r + 1, "before": before, "after": load_average()})
        data["gemm"] = {n: max(v) for n, v in data["gemm_rounds"].items()}  # attainable rate: load only lowers it
        # 3. optional training step
        if args.train_step:
            data["train_step"] = train_steps(child, args, failures)
        data["summary"] = summarise(data["runs"], args.models, args.threads, engines, args.batches)
        for m, by_threads in data["summary"].items():
            for n, cell in by_threads.items():
                for e, s in cell.items():
                    if s["ok"] < s["runs"]:
                        failures.append(f"{m} {n}t {e}: " + "; ".join(s["errors"]))
        finish(data, t_start, work, temporary, args.json, report)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
