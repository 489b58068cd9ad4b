"""Child-process side of ``benchmarks/benchmark.py``: one job per process, one JSON result line.

Every job (prepare a model's artefacts, time one engine, the GEMM baseline, one training step) runs in
its own interpreter, started by ``benchmark.py``, so no two OpenMP runtimes (torch's, onnxruntime's,
Paddle's MKL/oneDNN) ever share a process: after onnxruntime or Paddle Inference ran in a process,
torch was measured 60x slower there. A timing job imports only its own framework: the torch and
onnxruntime engines load ``ppcdnv2``'s torch references through :func:`_torch_references`, which
skips the package ``__init__`` (that one imports Paddle). The result is the last stdout line
starting with ``@@BENCH@@``; everything else a framework prints is ignored.

    python benchmarks/engines.py run --engine torch --model cdnv2_a --dir WORK/cdnv2_a --threads 2
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
import traceback
import warnings
from pathlib import Path

import numpy as np

MARK = "@@BENCH@@"
REPO = Path(__file__).resolve().parents[1]
FRAMEWORKS = ("paddle", "torch", "onnxruntime", "openvino")
ENGINE_FRAMEWORK = {"ours-dygraph": "paddle", "ours-infer": "paddle", "ours-onnx": "onnxruntime", "ours-onnx-spin": "onnxruntime",
                    "ours-onnx-int8": "onnxruntime", "ours-onnx-plain": "onnxruntime", "ours-openvino": "openvino",
                    "torch": "torch", "torch-onnx": "onnxruntime", "torch-onnx-tuned": "onnxruntime", "ppim": "paddle"}
IMAGE = 224

warnings.filterwarnings("ignore")  # framework import chatter would bury the one line that matters


def emit(result: dict) -> None:
    print(MARK + " " + json.dumps(result), flush=True)


def is_condensenetv2(model: str) -> bool:
    return model.startswith("cdnv2_")


# --- imports that keep a process to one framework ---------------------------------------------------
def _torch_references():
    """``(V2 presets, ReXNet presets, cdnv2 reference module, rexnet reference module)`` without Paddle.

    ``import ppcdnv2`` imports Paddle (its ``__init__`` registers the Paddle models). The torch
    references and configs need only numpy and torch, so the packages above them are stood in for by
    empty package modules pointing at the real folders; submodules then import as usual.
    """
    import importlib
    import types

    if "ppcdnv2" not in sys.modules:
        import importlib.util

        spec = importlib.util.find_spec("ppcdnv2")
        root = Path(spec.submodule_search_locations[0])
        for name in ("ppcdnv2", "ppcdnv2.families", "ppcdnv2.families.condensenet", "ppcdnv2.families.rexnet"):
            pkg = types.ModuleType(name)
            pkg.__path__ = [str(root.joinpath(*name.split(".")[1:]))]
            sys.modules[name] = pkg
    v2 = importlib.import_module("ppcdnv2.families.condensenet.config").V2_PRESETS
    rx = importlib.import_module("ppcdnv2.families.rexnet.config").PRESETS
    return (v2, rx, importlib.import_module("ppcdnv2.families.condensenet.reference.condensenetv2"),
            importlib.import_module("ppcdnv2.families.rexnet.reference"))


def official_torch_model(model: str):
    """The official-layout torch model of ``model`` (converted form, dense SFR index for CondenseNetV2)."""
    v2, rx, cdnv2_ref, rexnet_ref = _torch_references()
    if is_condensenetv2(model):
        return cdnv2_ref.build_reference(v2[model], "converted", sfr_index="dense")
    return rexnet_ref.build_reference(rx[model])


def ppim_model(model: str):
    """ppim's own (randomly initialised) model of the same architecture."""
    if is_condensenetv2(model):
        import ppcdnv2
        from ppcdnv2.families.condensenet.ppim import build_ppim_model

        return build_ppim_model(ppcdnv2.preset(model))
    import ppim

    width = model.split("_")[-1]  # rexnet_100 → ppim.rexnet_1_0
    fn = getattr(ppim, f"rexnet_{width[0]}_{width[1]}", None)
    if fn is None:
        raise RuntimeError(f"ppim has no model for {model}")
    return fn(pretrained=False)


# --- prep: weights and every artefact -----------------------------------------------------------------
def _size_mb(path: Path) -> float:
    return path.stat().st_size / 2**20


def prep(args) -> dict:
    """Build one model's weights and write every artefact the requested engines load.

    Torch and Paddle share this process: nothing here is timed except the exports (for information).
    """
    import paddle
    import torch

    import ppcdnv2
    from ppcdnv2.convert import official_state_to_model
    from ppcdnv2.deploy import DygraphPredictor, export_inference, export_onnx, set_threads
    from ppcdnv2.flops import count_flops
    from ppcdnv2.torch_tools import state_dict_numpy
    from ppcdnv2.weights import load_state_dict, save_weights

    torch.set_num_threads(args.threads)
    set_threads(args.threads)
    out = Path(args.dir)
    out.mkdir(parents=True, exist_ok=True)
    engines = set(args.engines.split(","))
    name, t0 = args.model, time.perf_counter()
    res = {"model": name, "sizes_mb": {}, "errors": {}, "export_s": {}}
    cfg = ppcdnv2.preset(name)
    if is_condensenetv2(name):
        from ppcdnv2.families.condensenet.reference import build_reference, condense_reference, randomize_

        ref_train = randomize_(build_reference(cfg, "train", sfr_index="dense"), seed=args.seed)
        train = ppcdnv2.build_condensenetv2(cfg, form="train")
        load_state_dict(train, official_state_to_model(state_dict_numpy(ref_train), train))
        paddle.save(train.state_dict(), str(out / "train.pdparams"))  # for the condense() timing job
        ours = ppcdnv2.condense(train).eval()
        torch_model = condense_reference(ref_train, "dense").eval()
        flops = count_flops(f"converted_{name}").executed
        res["macs_ours"], res["macs_official"] = flops["executed_total_ours"], flops["executed_total_official"]
    else:
        from ppcdnv2.families.rexnet.reference import build_reference
        from ppcdnv2.torch_tools import calibrate_bn_, randn, randomize_weights_

        torch_model = build_reference(cfg)
        gen = torch.Generator().manual_seed(args.seed)
        randomize_weights_(torch_model, gen)
        # An SE BatchNorm sees one pooled value per image; over noise images those barely differ, so a
        # calibrated variance would be tiny and amplify rounding (logits then depend on thread count).
        # Its variance becomes the second moment, and its output is recomputed so that the BNs after it
        # are calibrated on the network as it will be.
        def second_moment(bn, inputs, _):
            bn.running_var.add_(bn.running_mean.square())
            return torch.nn.functional.batch_norm(inputs[0], bn.running_mean, bn.running_var, bn.weight, bn.bias,
                                                  False, 0.0, bn.eps)
        hooks = [m.fc[1].register_forward_hook(second_moment) for m in torch_model.modules()
                 if type(m).__name__ == "SE"]
        calibrate_bn_(torch_model, randn(gen, (8, 3, IMAGE, IMAGE)), gen)
        for h in hooks:
            h.remove()
        torch_model.eval()
        ours = ppcdnv2.create_model(name)
        load_state_dict(ours, official_state_to_model(state_dict_numpy(torch_model), ours))
        ours.eval()
        res["macs_ours"] = res["macs_official"] = count_flops(name).flops
    res["build_s"] = time.perf_counter() - t0

    x = np.random.default_rng(args.seed + 1).standard_normal((2, 3, IMAGE, IMAGE)).astype(np.float32)
    ref = DygraphPredictor(ours)(x)
    np.savez(out / "reference.npz", x=x, logits=ref)
    res["logit_std"] = float(ref.std())

    def step(key, fn, path):
        """One artefact; a failure is recorded with its reason and only its engines fail later."""
        t = time.perf_counter()
        try:
            fn()
            res["sizes_mb"][key] = _size_mb(path)
            res["export_s"][key] = time.perf_counter() - t
        except Exception as e:  # noqa: BLE001 - reported, the other artefacts still get written
            res["errors"][key] = f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"[:300]

    step("ours .pdparams", lambda: paddle.save(ours.state_dict(), str(out / "ours.pdparams")), out / "ours.pdparams")
    step("official-layout .pth", lambda: torch.save(torch_model.state_dict(), str(out / "official.pth")),
         out / "official.pth")
    if "ours-infer" in engines:
        step("ours Paddle Inference .pdiparams", lambda: export_inference(ours, out / "infer" / "model"),
             out / "infer" / "model.pdiparams")
    if engines & {"ours-onnx", "ours-onnx-spin", "ours-openvino", "ours-onnx-int8"}:
        step("ours .onnx", lambda: export_onnx(ours, out / "ours.onnx"), out / "ours.onnx")
    if "ours-onnx-plain" in engines:
        step("ours .onnx as paddle2onnx writes it", lambda: export_onnx(ours, out / "ours.plain.onnx", optimize=False),
             out / "ours.plain.onnx")
    if "ours-onnx-int8" in engines and (out / "ours.onnx").is_file():
        def int8():
            from ppcdnv2.deploy.quantize import quantize_onnx

            # the random weights' BatchNorms were fitted to N(0, 1) images: calibrate on the same distribution
            # (other images than the reference batch)
            calib = np.random.default_rng(args.seed + 2).standard_normal((16, 3, IMAGE, IMAGE)).astype(np.float32)
            res["int8"] = quantize_onnx(out / "ours.onnx", out / "ours.int8.onnx", calib, "noise")
        step("ours .int8.onnx", int8, out / "ours.int8.onnx")
    if engines & {"torch-onnx", "torch-onnx-tuned"}:
        def torch_onnx():
            with torch.no_grad():
                torch.onnx.export(torch_model, (torch.from_numpy(x[:1]),), str(out / "official.onnx"), dynamo=False,
                                  opset_version=13, input_names=["x"], output_names=["logits"],
                                  dynamic_axes={"x": {0: "batch"}, "logits": {0: "batch"}})
        step("official-layout .onnx (torch.onnx)", torch_onnx, out / "official.onnx")
    if "ppim" in engines:
        def ppim_file():
            if is_condensenetv2(name):
                from ppcdnv2.families.condensenet.ppim import to_ppim_state

                state = to_ppim_state(ours)
            else:
                state = ppcdnv2.get_family("rexnet").to_paddle_layout(ours, "ppim")
            save_weights(state, out / "ppim.pdparams", "pdparams")
        step("ppim .pdparams", ppim_file, out / "ppim.pdparams")
    res["prep_s"] = time.perf_counter() - t0
    (out / "prep.json").write_text(json.dumps(res, indent=2) + "\n")
    return res


def condense_time(args) -> dict:
    """``ppcdnv2.condense()`` on the training-form model, in a Paddle-only process (median of 3)."""
    import paddle

    import ppcdnv2
    from ppcdnv2.deploy import set_threads

    set_threads(args.threads)
    train = ppcdnv2.build_condensenetv2(ppcdnv2.preset(args.model), form="train")
    train.set_state_dict(paddle.load(str(Path(args.dir) / "train.pdparams")))
    times = []
    for _ in range(3):
        t = time.perf_counter()
        ppcdnv2.condense(train)
        times.append(time.perf_counter() - t)
    return {"model": args.model, "condense_s": statistics.median(times), "all_s": times}


# --- engines ------------------------------------------------------------------------------------------
def _ort_session_module():
    """``ppcdnv2/deploy/ort_session.py`` (what ``OnnxPredictor`` runs) loaded by path: importing it as part of
    ``ppcdnv2`` would import Paddle (the package ``__init__``) into an onnxruntime-only process."""
    import importlib.util

    spec = importlib.util.find_spec("ppcdnv2")
    path = Path(spec.submodule_search_locations[0]) / "deploy" / "ort_session.py"
    mod_spec = importlib.util.spec_from_file_location("_ppcdnv2_ort_session", path)
    module = importlib.util.module_from_spec(mod_spec)
    mod_spec.loader.exec_module(module)
    return module


def _deployed_onnx(path: Path, threads: int, spinning=None):
    """Our deployment path: ``OnnxPredictor``'s session settings and micro-batches (``ppcdnv2.deploy.ort_session``)."""
    return _ort_session_module().OrtRunner(path, threads=threads, spinning=spinning)


def _onnxruntime(path: Path, threads: int):
    """Plain onnxruntime as a user of upstream runs it: n intra-op threads, 1 inter-op, the whole batch in one
    call, onnxruntime's defaults otherwise (thread spinning on)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return lambda x: session.run(None, {name: x})[0]


def load_engine(engine: str, model: str, d: Path, threads: int):
    """A callable float32 [N, 3, 224, 224] → logits [N, classes], its framework's threads set to ``threads``."""
    if engine in ("ours-dygraph", "ppim"):
        import paddle

        from ppcdnv2.deploy import DygraphPredictor, load_converted_model, set_threads

        set_threads(threads)
        if engine == "ours-dygraph":
            return DygraphPredictor(load_converted_model(model, d / "ours.pdparams"))
        net = ppim_model(model)
        missing, unexpected = net.set_state_dict(paddle.load(str(d / "ppim.pdparams")))
        if missing or unexpected:
            raise RuntimeError(f"ppim weights: missing {list(missing)[:3]}, unexpected {list(unexpected)[:3]}")
        net.eval()

        def run(x):
            with paddle.no_grad():
                return net(paddle.to_tensor(x)).numpy().reshape(len(x), -1)  # ppim squeezes batch 1 to 1-D
        return run
    if engine == "ours-infer":
        from ppcdnv2.deploy import PaddlePredictor

        return PaddlePredictor(d / "infer" / "model", threads=threads)
    if engine == "ours-onnx":
        return _deployed_onnx(d / "ours.onnx", threads)
    if engine == "ours-onnx-spin":  # OnnxPredictor(spinning=True): workers spin between operators (threads > 1)
        return _deployed_onnx(d / "ours.onnx", threads, spinning=True)
    if engine == "ours-onnx-int8":
        return _deployed_onnx(d / "ours.int8.onnx", threads)
    if engine == "ours-onnx-plain":  # before the graph rewrites, session settings and micro-batches
        return _onnxruntime(d / "ours.plain.onnx", threads)
    if engine == "torch-onnx":
        return _onnxruntime(d / "official.onnx", threads)
    if engine == "torch-onnx-tuned":  # the official model given our session settings and micro-batches
        return _deployed_onnx(d / "official.onnx", threads)
    if engine == "ours-openvino":
        import openvino as ov

        core = ov.Core()
        compiled = core.compile_model(core.read_model(str(d / "ours.onnx")), "CPU",
                                      {"INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY"})
        request = compiled.create_infer_request()

        def run(x):
            request.infer({0: x})
            return request.get_output_tensor(0).data.copy()
        return run
    if engine == "torch":
        import torch

        torch.set_num_threads(threads)
        torch.set_num_interop_threads(1)
        net = official_torch_model(model)
        net.load_state_dict(torch.load(str(d / "official.pth"), weights_only=True, map_location="cpu"))
        net.eval()

        def run(x):
            with torch.no_grad():
                return net(torch.from_numpy(x)).numpy()
        return run
    raise ValueError(f"unknown engine {engine!r}")


def _cpu_seconds() -> float:
    t = os.times()
    return t.user + t.system


def run_engine(args) -> dict:
    """Load, check against the reference logits, warm up, time each batch size."""
    d = Path(args.dir)
    t = time.perf_counter()
    fn = load_engine(args.engine, args.model, d, args.threads)
    res = {"engine": args.engine, "model": args.model, "threads": args.threads, "pid": os.getpid(),
           "load_s": time.perf_counter() - t, "timing": {}}
    ref = np.load(d / "reference.npz")
    res["max_abs_diff"] = float(np.abs(fn(ref["x"]) - ref["logits"]).max())
    rng = np.random.default_rng(2)
    for batch in args.batches:
        x = rng.standard_normal((batch, 3, IMAGE, IMAGE)).astype(np.float32)
        calls = args.iters if batch == 1 else max(3, args.iters // 4)
        for _ in range(3 if batch == 1 else 1):
            fn(x)
        times, cpu0, wall0 = [], _cpu_seconds(), time.perf_counter()
        for _ in range(calls):
            t = time.perf_counter()
            fn(x)
            times.append(time.perf_counter() - t)
        cpu = _cpu_seconds() - cpu0
        busy = cpu / max(time.perf_counter() - wall0, 1e-9)
        res["timing"][str(batch)] = {"median_s": statistics.median(times), "min_s": min(times), "calls": calls,
                                     "cores_busy": busy, "cpu_per_call_s": cpu / calls, "times_s": times}
    own = ENGINE_FRAMEWORK[args.engine]
    res["foreign_frameworks"] = sorted(f for f in FRAMEWORKS if f != own and f in sys.modules)
    return res


# --- baselines ----------------------------------------------------------------------------------------
def gemm(args) -> dict:
    """numpy float32 2048x2048 matmul (its BLAS, threads from the environment): the machine's MAC rate."""
    n = 2048
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((n, n), dtype=np.float32), rng.standard_normal((n, n), dtype=np.float32)
    a @ b
    times = []
    for _ in range(6):
        t = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - t)
    return {"threads": args.threads, "gmacs": n**3 / min(times) / 1e9, "times_s": times}


def train_step(args) -> dict:
    """SGD steps (forward, backward, step; batch 16, 224², cross-entropy) of CondenseNetV2-A, training form."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((16, 3, IMAGE, IMAGE)).astype(np.float32)
    y = rng.integers(0, 1000, 16)
    if args.framework == "paddle":
        import paddle
        import paddle.nn.functional as F

        import ppcdnv2
        from ppcdnv2.deploy import set_threads

        set_threads(args.threads)
        model = ppcdnv2.create_model("cdnv2_a")
        model.set_progress(0.1)
        model.train()
        opt = paddle.optimizer.SGD(learning_rate=0.01, parameters=model.parameters())
        xt, yt = paddle.to_tensor(x), paddle.to_tensor(y)

        def step():
            loss = F.cross_entropy(model(xt), yt)
            loss.backward()
            opt.step()
            opt.clear_grad()
    else:
        import torch

        torch.set_num_threads(args.threads)
        torch.set_num_interop_threads(1)
        v2, _, ref_mod, _ = _torch_references()
        model = ref_mod.build_reference(v2["cdnv2_a"], "train", sfr_index="dense")
        ref_mod.set_progress(model, 0.1)
        model.train()
        opt = torch.optim.SGD(model.parameters(), lr=0.01)
        xt, yt = torch.from_numpy(x), torch.from_numpy(y)

        def step():
            loss = torch.nn.functional.cross_entropy(model(xt), yt)
            loss.backward()
            opt.step()
            opt.zero_grad()
    step()  # warm-up
    times, cpu = [], []
    for _ in range(args.steps):
        t, c = time.perf_counter(), _cpu_seconds()
        step()
        times.append(time.perf_counter() - t)
        cpu.append(_cpu_seconds() - c)
    # CPU seconds per step: the work done, less sensitive than wall time to other processes on the machine
    return {"framework": args.framework, "threads": args.threads, "median_s": statistics.median(times),
            "times_s": times, "cpu_s": statistics.median(cpu),
            "mkl_debug_cpu_type": os.environ.get("MKL_DEBUG_CPU_TYPE")}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="job", required=True)
    q = sub.add_parser("prep")
    q.add_argument("--model", required=True)
    q.add_argument("--dir", required=True)
    q.add_argument("--engines", required=True)
    q.add_argument("--threads", type=int, default=2)
    q.add_argument("--seed", type=int, default=0)
    q = sub.add_parser("condense")
    q.add_argument("--model", required=True)
    q.add_argument("--dir", required=True)
    q.add_argument("--threads", type=int, default=2)
    q = sub.add_parser("run")
    q.add_argument("--engine", required=True, choices=sorted(ENGINE_FRAMEWORK))
    q.add_argument("--model", required=True)
    q.add_argument("--dir", required=True)
    q.add_argument("--threads", type=int, required=True)
    q.add_argument("--batches", type=lambda s: [int(b) for b in s.split(",")], default=[1, 16])
    q.add_argument("--iters", type=int, default=20)
    q = sub.add_parser("gemm")
    q.add_argument("--threads", type=int, required=True)
    q = sub.add_parser("train")
    q.add_argument("--framework", required=True, choices=("paddle", "torch"))
    q.add_argument("--threads", type=int, required=True)
    q.add_argument("--steps", type=int, default=3)
    args = p.parse_args(argv)
    job = {"prep": prep, "condense": condense_time, "run": run_engine, "gemm": gemm, "train": train_step}[args.job]
    try:
        emit({"ok": True, **job(args)})
    except Exception as e:  # noqa: BLE001 - the parent reports the one-line reason and goes on
        traceback.print_exc()
        msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
        emit({"ok": False, "error": f"{type(e).__name__}: {msg}"[:400]})
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
