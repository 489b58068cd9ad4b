"""CPU inference benchmark of condensed CondenseNetV2 A/B/C: ours vs ppim vs the official PyTorch layout.

In one process, with the same random (but fully condensed, BN-calibrated) weights in every engine:

  ours-dygraph      ppcdnv2 converted model, Paddle dygraph (no grad: in-place dense blocks)
  ours-infer        the same model exported with paddle.jit.save, Paddle Inference CPU predictor
  ours-*-1t         the same with 1 math thread (Paddle's BLAS threads only slow its small GEMMs down at batch 1)
  ours-dygraph-x2   ours-dygraph with each batch split over 2 worker threads, 1 math thread each
  ours-infer-x2     ours-infer split over 2 cloned predictors (not run by default: scales poorly)
  ours-onednn       Paddle Inference with oneDNN (not run by default: slower here)
  ppim              ppim's cdnv2 (dense C'xC SFR matrix), Paddle dygraph, weights converted from ours
  torch             PyTorch model with the official module layout and dense SFR index matrix
                    (``ppcdnv2.families.condensenet.reference.build_reference(cfg, 'converted', sfr_index='dense')``)
  torch-x2          torch with each batch split over 2 worker threads, 1 intra-op thread each

Every engine gets the same thread budget (``--threads``, default 2). Engines are timed round-robin so a
load change on the machine hits them alike; each figure is the median over ``--repeats`` runs. Batch 1
gives latency (ms), batch 16 throughput (images/s). Also: ``ppcdnv2.condense()`` time on the
training-form model and the size of the converted ``.pdparams`` (vs the official-layout torch file).

  python benchmarks/benchmark.py                      # A, B, C, all default engines
  python benchmarks/benchmark.py --quick              # C only, fewer repeats
  python benchmarks/benchmark.py --models c --engines ours-dygraph,torch --repeats 10 --json out.json
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ALL_ENGINES = ("ours-dygraph", "ours-dygraph-1t", "ours-infer", "ours-infer-1t", "ours-dygraph-x2", "ours-infer-x2",
               "ours-onednn", "ppim", "torch", "torch-x2")
DEFAULT_ENGINES = ("ours-dygraph", "ours-dygraph-1t", "ours-infer", "ours-infer-1t", "ours-dygraph-x2", "ppim",
                   "torch", "torch-x2")
SPLIT_ENGINES = ("ours-dygraph-x2", "ours-infer-x2", "torch-x2")  # batch split: nothing to split at batch 1
OURS = tuple(e for e in ALL_ENGINES if e.startswith("ours"))


def machine_info() -> dict:
    cpu = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import paddle
    import torch

    info = {"date": datetime.date.today().isoformat(), "cpu": cpu, "cores": os.cpu_count(),
            "python": platform.python_version(), "paddle": paddle.__version__, "torch": torch.__version__}
    try:
        import ppim

        info["ppim"] = getattr(ppim, "__version__", "installed")
    except ImportError:
        info["ppim"] = None
    return info


def load_average() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "n/a"


# --- models ---------------------------------------------------------------------------------------
class Bench:
    """All engines of one preset, with the same weights."""

    def __init__(self, name: str, engines, threads: int, workdir: Path, seed: int = 0):
        import paddle
        import torch

        import ppcdnv2
        from ppcdnv2.convert import official_state_to_model
        from ppcdnv2.deploy import DygraphPredictor, PaddlePredictor, export_inference, parallel
        from ppcdnv2.families.condensenet.reference import build_reference, condense_reference, randomize_, state_dict_numpy
        from ppcdnv2.weights import load_state_dict

        self.name, self.threads = name, threads
        cfg = ppcdnv2.preset(name)
        # weights: upstream-style training form, masks driven through every stage, BN calibrated
        ref_train = randomize_(build_reference(cfg, "train", sfr_index="dense"), seed=seed)
        train = ppcdnv2.build_condensenetv2(cfg, form="train")
        load_state_dict(train, official_state_to_model(state_dict_numpy(ref_train), train))
        times = []
        for _ in range(3):
            t = time.perf_counter()
            ours = ppcdnv2.condense(train)
            times.append(time.perf_counter() - t)
        self.condense_s = statistics.median(times)
        ours.eval()
        self.ours = ours
        torch_model = condense_reference(ref_train, "dense").eval()

        paddle_path = workdir / f"{name}.pdparams"
        paddle.save(ours.state_dict(), str(paddle_path))
        torch_path = workdir / f"{name}_official_layout.pth"
        torch.save(torch_model.state_dict(), str(torch_path))
        self.sizes_mb = {"ours .pdparams": paddle_path.stat().st_size / 2**20,
                         "official layout .pth": torch_path.stat().st_size / 2**20}

        self.engines = {}
        need = set(engines)
        if need & {"ours-dygraph", "ours-dygraph-1t", "ours-dygraph-x2"}:
            dy = DygraphPredictor(ours)
            self.engines["ours-dygraph"] = (dy, threads)
            self.engines["ours-dygraph-1t"] = (dy, 1)
            self.engines["ours-dygraph-x2"] = (parallel(dy, 2), 1)
        if need & {"ours-infer", "ours-infer-1t", "ours-infer-x2", "ours-onednn"}:
            files = export_inference(ours, workdir / name)
            self.engines["ours-infer"] = (PaddlePredictor(files.prefix, threads=threads), threads)
            if "ours-infer-1t" in need:
                self.engines["ours-infer-1t"] = (PaddlePredictor(files.prefix, threads=1), 1)
            if "ours-infer-x2" in need:
                self.engines["ours-infer-x2"] = (parallel(PaddlePredictor(files.prefix, threads=1), 2), 1)
            if "ours-onednn" in need:
                self.engines["ours-onednn"] = (PaddlePredictor(files.prefix, threads=threads, onednn=True), threads)
        if "ppim" in need:
            from ppcdnv2.families.condensenet.ppim import build_ppim_model, to_ppim_state

            ppim_model = build_ppim_model(cfg)
            ppim_model.set_state_dict({k: paddle.to_tensor(v) for k, v in to_ppim_state(ours).items()})
            self.engines["ppim"] = (_ModelCall(ppim_model.eval(), "paddle"), threads)
        if need & {"torch", "torch-x2"}:
            self.engines["torch"] = (_ModelCall(torch_model, "torch"), threads)
            self.engines["torch-x2"] = (_Split(_ModelCall(torch_model, "torch"), 2), 1)
        self.engines = {k: v for k, v in self.engines.items() if k in need}

    def check(self, batch: int = 2) -> dict:
        """Max |logit difference| of every engine against ours-dygraph (also a sanity check of the weights)."""
        x = np.random.default_rng(1).standard_normal((batch, 3, 224, 224)).astype(np.float32)
        from ppcdnv2.deploy import DygraphPredictor

        ref = DygraphPredictor(self.ours)(x)
        out = {"logit std": float(ref.std())}
        for name, (engine, threads) in self.engines.items():
            set_threads(threads)
            out[name] = float(np.abs(engine(x) - ref).max())
        return out


class _ModelCall:
    """numpy batch → numpy logits through a Paddle or torch model, gradients off."""

    def __init__(self, model, framework: str):
        self.model, self.framework = model, framework

    def __call__(self, x):
        if self.framework == "torch":
            import torch

            with torch.no_grad():
                return self.model(torch.from_numpy(x)).numpy()
        import paddle

        with paddle.no_grad():
            return self.model(paddle.to_tensor(x)).numpy()


class _Split:
    """Batch halves on worker threads (torch releases the GIL in its ops too)."""

    def __init__(self, fn, workers: int):
        self.fn, self.workers = fn, workers

    def __call__(self, x):
        if len(x) < 2:
            return self.fn(x)
        chunks = np.array_split(x, self.workers)
        out = [None] * len(chunks)

        def run(i):
            out[i] = self.fn(chunks[i])

        threads = [threading.Thread(target=run, args=(i,)) for i in range(len(chunks))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return np.concatenate(out)


def set_threads(n: int) -> None:
    import torch

    from ppcdnv2.deploy import set_threads as paddle_threads

    paddle_threads(n)
    torch.set_num_threads(n)


def time_engines(bench: Bench, batch: int, repeats: int, warmup: int) -> dict:
    x = np.random.default_rng(2).standard_normal((batch, 3, 224, 224)).astype(np.float32)
    engines = {k: v for k, v in bench.engines.items() if not (batch == 1 and k in SPLIT_ENGINES)}
    for engine, threads in engines.values():
        set_threads(threads)
        for _ in range(warmup):
            engine(x)
    times = {k: [] for k in engines}
    for _ in range(repeats):
        for name, (engine, threads) in engines.items():
            set_threads(threads)
            if batch == 1:
                engine(x)  # warm this engine's caches after the others ran: latency of back-to-back calls
            t = time.perf_counter()
            engine(x)
            times[name].append(time.perf_counter() - t)
    return {k: {"median_s": statistics.median(v), "min_s": min(v)} for k, v in times.items()}


# --- report ---------------------------------------------------------------------------------------
def _fmt(res, batch):
    if res is None:
        return "—"
    s = res["median_s"]
    return f"{s * 1000:.0f} ms" if batch == 1 else f"{batch / s:.2f} img/s"


def report(results: dict, info: dict, engines) -> str:
    lines = [f"CPU inference, {info['date']}, {info['cpu']} ({info['cores']} cores), {info['threads']} threads "
             f"per engine; Paddle {info['paddle']}, torch {info['torch']}, ppim {info['ppim']}; "
             f"load average {info['load_before']} → {info['load_after']}", ""]
    cols = [(name, batch) for name, r in results.items() for batch in sorted(r["timing"], key=int)]
    lines += ["| engine | " + " | ".join(f"{n.replace('cdnv2_', '').upper()} batch {b}" for n, b in cols) + " |",
              "|---|" + "---|" * len(cols)]
    for e in engines:
        lines.append(f"| {e} | " + " | ".join(_fmt(results[n]["timing"][b].get(e), int(b)) for n, b in cols) + " |")
    lines += ["", "Speed-up of ours (median time ratio; > 1 = ours faster):", "",
              "| model | batch | best ours | vs torch | vs torch-x2 | vs ppim |", "|---|---|---|---|---|---|"]
    for name, r in results.items():
        for batch, t in sorted(r["timing"].items(), key=lambda kv: int(kv[0])):
            ours = {e: t[e]["median_s"] for e in OURS if e in t}
            if not ours:
                continue
            best = min(ours, key=ours.get)
            ratio = lambda other: f"{t[other]['median_s'] / ours[best]:.2f}×" if other in t else "—"
            lines.append(f"| {name} | {batch} | {best} | {ratio('torch')} | {ratio('torch-x2')} | {ratio('ppim')} |")
    lines += ["", "| model | condense() | ours .pdparams | official-layout .pth | max |Δlogit| vs ours-dygraph |",
              "|---|---|---|---|---|"]
    for name, r in results.items():
        diffs = ", ".join(f"{k} {v:.1e}" for k, v in r["check"].items() if k != "logit std")
        lines.append(f"| {name} | {r['condense_s']:.3f} s | {r['sizes_mb']['ours .pdparams']:.1f} MB | "
                     f"{r['sizes_mb']['official layout .pth']:.1f} MB | {diffs} (logit std "
                     f"{r['check']['logit std']:.2f}) |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="a,b,c", help="comma list of a, b, c (default a,b,c)")
    p.add_argument("--engines", default=",".join(DEFAULT_ENGINES),
                   help=f"comma list of {', '.join(ALL_ENGINES)} (default: {', '.join(DEFAULT_ENGINES)})")
    p.add_argument("--batches", default="1,16", help="comma list of batch sizes (default 1,16)")
    p.add_argument("--repeats", type=int, default=10, help="timed runs per engine at batch 1 (default 10; "
                                                            "batch > 1: a third of it, at least 3)")
    p.add_argument("--threads", type=int, default=2, help="threads per engine (default 2)")
    p.add_argument("--quick", action="store_true", help="C only, 3 repeats: a smoke run")
    p.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    args = p.parse_args(argv)
    if args.quick:
        args.models, args.repeats = "c", 3
    names = []
    for m in args.models.split(","):
        m = m.strip().lower()
        if m not in ("a", "b", "c"):
            p.error(f"unknown model {m!r}; expected a, b or c")
        names.append(f"cdnv2_{m}")
    engines = [e.strip() for e in args.engines.split(",") if e.strip()]
    unknown = sorted(set(engines) - set(ALL_ENGINES))
    if unknown:
        p.error(f"unknown engines {unknown}; known: {', '.join(ALL_ENGINES)}")
    try:
        batches = [int(b) for b in args.batches.split(",")]
    except ValueError:
        p.error(f"--batches must be integers, got {args.batches!r}")
    if args.threads < 1 or args.repeats < 1 or min(batches) < 1:
        p.error("--threads, --repeats and batch sizes must be >= 1")
    if "ppim" in engines:
        try:
            import ppim  # noqa: F401
        except ImportError:
            print("ppim not installed: skipping its engine", file=sys.stderr)
            engines.remove("ppim")

    set_threads(args.threads)
    info = machine_info()
    info.update(threads=args.threads, load_before=load_average())
    results = {}
    with tempfile.TemporaryDirectory(prefix="ppcdnv2-bench-") as tmp:
        for name in names:
            print(f"[{name}] building engines ...", file=sys.stderr, flush=True)
            bench = Bench(name, engines, args.threads, Path(tmp))
            res = {"condense_s": bench.condense_s, "sizes_mb": bench.sizes_mb, "check": bench.check(), "timing": {}}
            for batch in batches:
                reps = args.repeats if batch == 1 else max(3, args.repeats // 3)
                print(f"[{name}] batch {batch}: {reps} rounds ...", file=sys.stderr, flush=True)
                res["timing"][str(batch)] = time_engines(bench, batch, reps, warmup=2 if batch == 1 else 1)
            results[name] = res
            del bench
    info["load_after"] = load_average()
    text = report(results, info, [e for e in ALL_ENGINES if e in engines])
    print(text)
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": info, "results": results}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
