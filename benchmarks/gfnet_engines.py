"""Child-process side of ``benchmarks/gfnet_benchmark.py``: one job per process, one JSON result line.

Jobs:

* ``prep`` (Paddle and torch in one process; nothing timed): a GFNet whose every parameter is random and
  whose BatchNorm statistics and classifiers are calibrated on random images, written as our ``.pdparams``
  and, the same weights in upstream's torch layout, as ``reference.npz``; both hold thresholds found by
  ``find_thresholds`` on the softmax of a calibration set (so budget ``p`` exits as upstream's would) and
  upstream's per-step multiply-adds. Also the fixed input batch every engine runs.
* ``run``: one engine, ``ours`` (Paddle dygraph ``GFNet.predict``; ``ours-onednn``: the same with Paddle's
  oneDNN kernels switched on) or ``torch-ref`` (our torch reference ``GFNetReference.predict``: the same
  early-exit loop in torch), timed per budget at batch 1 and batch B, with the exit step and class of every
  image, so the parent can compare the engines' decisions.

Like ``engines.py``, each engine gets a fresh interpreter (OpenMP pools of two frameworks in one process
slow both), and the torch engine loads the reference without ``ppcdnv2/__init__`` (which imports Paddle).
The result is the last stdout line starting with ``@@BENCH@@``.

    python benchmarks/gfnet_engines.py run --engine torch-ref --config regnety_600m_p96_t5 \
        --dir WORK/regnety_600m_p96_t5 --threads 1
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
import traceback
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # benchmark this checkout's ppcdnv2, whatever an installed copy points at

from engines import FRAMEWORKS, emit  # noqa: E402  (benchmarks/ is on the path: this script's folder)

ENGINE_FRAMEWORK = {"ours": "paddle", "ours-onednn": "paddle", "torch-ref": "torch"}
ALL_STEPS = "all"  # budget label: no early exit, every step runs
CLASSIFIER_LOGIT_STD = 3.0  # a trained ImageNet model's spread of logits; makes the softmax peaked per image


# --- imports that keep the torch process free of Paddle ---------------------------------------------
def torch_reference_module():
    """``ppcdnv2.families.gfnet.reference.gfnet`` without running the package ``__init__`` files above it
    (they import Paddle): those packages are stood in for by empty modules pointing at the real folders.

    The RegNet, MobileNetV3 and EfficientNet references still import Paddle, indirectly: they share their
    layer plans with the Paddle backbones (``backbones/regnet.py`` etc. import paddle at the top). The run
    job reports it as ``foreign_frameworks``.
    """
    import importlib
    import types

    root = REPO / "ppcdnv2"
    for name in ("ppcdnv2", "ppcdnv2.families", "ppcdnv2.families.gfnet"):
        if name not in sys.modules:
            stand_in = types.ModuleType(name)
            stand_in.__path__ = [str(root.joinpath(*name.split(".")[1:]))]
            sys.modules[name] = stand_in
    return importlib.import_module("ppcdnv2.families.gfnet.reference.gfnet")


# --- inputs -------------------------------------------------------------------------------------------
def random_images(rng: np.random.Generator, n: int, size: int) -> np.ndarray:
    """Normalised-looking random images: a smooth random field plus pixel noise, so that images, and
    patches within one image, differ in content (white noise alone makes every patch alike)."""
    low = rng.standard_normal((n, 3, 8, 8)).astype(np.float32)
    idx = np.minimum(np.arange(size) * 8 // size, 7)
    smooth = low[:, :, idx][:, :, :, idx]  # nearest-neighbour upscale: blocks of content
    return (0.8 * smooth + 0.6 * rng.standard_normal((n, 3, size, size))).astype(np.float32)


def budget_value(label: str):
    """``"all"`` → ``None`` (every step); ``"p"`` → the int budget ``p``."""
    return None if label == ALL_STEPS else int(label)


# --- prep ---------------------------------------------------------------------------------------------
def _randomize_reference(ref, gen):
    """Every parameter random: ``torch_tools.randomize_weights_`` (convs, BN affine, linears), then the GRUs
    and conv biases it does not cover. Checked: a parameter left at its default init is an error."""
    import torch

    from ppcdnv2.torch_tools import randomize_weights_, uniform

    before = {k: v.clone() for k, v in ref.named_parameters()}
    randomize_weights_(ref, gen)
    with torch.no_grad():
        for m in ref.modules():
            if isinstance(m, torch.nn.GRU):
                bound = 1.0 / math.sqrt(m.hidden_size)  # torch's own init range, from our generator
                for p in m.parameters():
                    p.copy_(uniform(gen, p.shape, -bound, bound))
            elif isinstance(m, torch.nn.Conv2d) and m.bias is not None:
                m.bias.copy_(uniform(gen, m.bias.shape, -0.1, 0.1))
    same = [k for k, v in ref.named_parameters() if torch.equal(v, before[k])]
    if same:
        raise RuntimeError(f"parameters not randomised: {same[:5]}")


def _calibrate_reference(ref, x, gen, bn_images: int = 32):
    """BN statistics of each encoder from its own inputs (glances for ``model_prime``, patches at random
    places for ``model``, from the first ``bn_images`` of ``x``); then every classifier that runs is
    standardised per class over all of ``x`` to a logit spread of :data:`CLASSIFIER_LOGIT_STD`: random
    features share a mean direction, so raw random classifiers give one class to every image and a nearly
    flat softmax."""
    import torch

    from ppcdnv2.torch_tools import calibrate_bn_, uniform

    ref_mod = torch_reference_module()
    cfg = ref.cfg
    xb = torch.from_numpy(x[:bn_images])
    calibrate_bn_(ref.model_prime, ref_mod.get_prime(xb, cfg.patch_size, cfg.prime_interpolation), gen)
    calibrate_bn_(ref.model, ref_mod.get_patch(xb, uniform(gen, (len(xb), 2), 0.0, 1.0), cfg.patch_size), gen)
    ref.eval()
    heads = [m for m in ref.modules() if isinstance(m, torch.nn.Linear) and m.out_features == cfg.num_classes]
    outputs = {id(m): [] for m in heads}
    hooks = [m.register_forward_hook(lambda m, _, out: outputs[id(m)].append(out.detach())) for m in heads]
    try:
        _softmax_all_steps(ref, x)
    finally:
        for h in hooks:
            h.remove()
    with torch.no_grad():
        for m in heads:
            if outputs[id(m)]:
                z = torch.cat(outputs[id(m)])
                scale = CLASSIFIER_LOGIT_STD / z.std(0).clamp_min(1e-6)
                m.weight.mul_(scale[:, None])
                m.bias.copy_((m.bias - z.mean(0)) * scale)


def _softmax_all_steps(ref, x, chunk: int = 16) -> np.ndarray:
    """[T, N, C] float32 softmax of every step (upstream's train_softmax), in chunks."""
    import torch

    parts = [torch.softmax(ref.glance_and_focus(torch.from_numpy(x[i:i + chunk])).logits, dim=-1).numpy()
             for i in range(0, len(x), chunk)]
    return np.concatenate(parts, axis=1)


def _split_components(state: dict) -> dict:
    """A flat ``model_prime.* / model.* / fc.* / policy.*`` state → ``load_components`` keyword arguments."""
    out = {"model_prime": {}, "model": {}, "fc": {}, "policy": {}}
    for key, value in state.items():
        head, rest = key.split(".", 1)
        if head in out:
            out[head][rest] = value
    return out


def prep(args) -> dict:
    import paddle
    import torch

    import ppcdnv2
    from ppcdnv2.deploy import set_threads
    from ppcdnv2.families.gfnet import cumulative_macs, evaluate_budget, exit_distribution, find_thresholds
    from ppcdnv2.families.gfnet.config import N_BUDGETS
    from ppcdnv2.torch_tools import state_dict_numpy

    torch.set_num_threads(args.threads)
    set_threads(args.threads)
    out = Path(args.dir)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    ref_mod = torch_reference_module()
    cfg = ppcdnv2.preset(f"gfnet_{args.config}")
    gen = torch.Generator().manual_seed(args.seed)
    rng = np.random.default_rng(args.seed + 1)
    calibration = random_images(rng, args.calibration, cfg.image_size)
    fixed = random_images(rng, args.batch, cfg.image_size)

    ref = ref_mod.GFNetReference(cfg)
    _randomize_reference(ref, gen)
    with torch.no_grad():
        _calibrate_reference(ref, calibration, gen)
        calib_softmax = _softmax_all_steps(ref, calibration)
        fixed_logits = ref.glance_and_focus(torch.from_numpy(fixed)).logits.numpy()
    torch_s = time.perf_counter() - t0
    thresholds = np.stack([find_thresholds(calib_softmax, p) for p in range(1, N_BUDGETS + 1)]).astype(np.float32)
    flops = np.asarray(cumulative_macs(cfg), np.float64) / 1e6  # upstream's unit: millions
    state = state_dict_numpy(ref)
    np.savez(out / "reference.npz", thresholds=thresholds, flops=flops, **state)
    np.savez(out / "inputs.npz", x=fixed)

    ours = ppcdnv2.create_model(f"gfnet_{args.config}")
    ours.load_components(**_split_components(state), thresholds=thresholds, flops=flops)
    ours.eval()
    paddle.save(ours.state_dict(), str(out / "ours.pdparams"))
    with paddle.no_grad():
        ours_logits = ours.glance_and_focus(paddle.to_tensor(fixed)).logits.numpy()

    # how close the fixed batch comes to a threshold: a smaller gap than the engines' rounding difference
    # could flip an exit decision between them
    pmax = torch.softmax(torch.from_numpy(fixed_logits), dim=-1).numpy().max(-1)  # [T, B]
    pmax_ours = torch.softmax(torch.from_numpy(ours_logits), dim=-1).numpy().max(-1)
    gaps = np.abs(pmax[:-1] - thresholds[:, :-1, None])  # [39, T-1, B]
    budgets = {}
    targets = np.zeros(calib_softmax.shape[1], np.int64)  # accuracy is meaningless here; cost is not
    for p in range(1, N_BUDGETS + 1):
        _, expected = evaluate_budget(calib_softmax, targets, thresholds[p - 1], flops)
        exits = (calib_softmax.max(-1) >= thresholds[p - 1][:, None]).argmax(0)  # last threshold: -1e8
        budgets[str(p)] = {"expected_mmacs": expected, "target_exit_share": exit_distribution(p, cfg.T).tolist(),
                           "calibration_exit_share": (np.bincount(exits, minlength=cfg.T) / len(exits)).tolist()}
    budgets[ALL_STEPS] = {"expected_mmacs": float(flops[-1])}
    res = {"config": args.config, "seed": args.seed, "T": cfg.T, "flops_mmacs": flops.tolist(),
           "calibration_images": args.calibration, "batch": args.batch, "logit_std": float(fixed_logits.std()),
           "max_abs_logit_diff": float(np.abs(ours_logits - fixed_logits).max()),
           "max_abs_pmax_diff": float(np.abs(pmax_ours - pmax).max()),
           "min_threshold_gap": float(gaps.min()), "budgets": budgets,
           "calibration_pmax_median": np.median(calib_softmax.max(-1), axis=1).tolist(),
           "sizes_mb": {f: (out / f).stat().st_size / 2**20 for f in ("ours.pdparams", "reference.npz")},
           "prep_s": time.perf_counter() - t0, "torch_s": torch_s}
    (out / "prep.json").write_text(json.dumps(res, indent=2) + "\n")
    return res


# --- engines ------------------------------------------------------------------------------------------
def load_engine(engine: str, config: str, d: Path, threads: int):
    """``predict(x, budget) -> (exit_step [B], classes [B])``, its framework's threads set to ``threads``."""
    if engine in ("ours", "ours-onednn"):
        import paddle

        import ppcdnv2
        from ppcdnv2.deploy import set_threads

        set_threads(threads)
        paddle.set_flags({"FLAGS_use_onednn": engine == "ours-onednn"})  # dygraph's default: off
        model = ppcdnv2.create_model(f"gfnet_{config}", pretrained=str(d / "ours.pdparams")).eval()

        def predict(x, budget):
            r = model.predict(paddle.to_tensor(x), budget=budget)
            return r.exit_step, r.classes
        return predict
    if engine == "torch-ref":
        import torch

        torch.set_num_threads(threads)
        torch.set_num_interop_threads(1)
        data = dict(np.load(d / "reference.npz"))
        thresholds, flops = data.pop("thresholds"), data.pop("flops")
        ref = torch_reference_module().GFNetReference(config)
        ref.load_components(**_split_components(data), thresholds=thresholds, flops=flops)
        ref.eval()

        def predict(x, budget):
            r = ref.predict(torch.from_numpy(x), budget=budget)
            return r.exit_step, r.classes
        return predict
    raise ValueError(f"unknown engine {engine!r}")


def _timed(fn, calls: int) -> list:
    times = []
    for _ in range(calls):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return times


def run_engine(args) -> dict:
    """Per budget: ms per image at batch 1 (median of ``iters`` calls per image, averaged over the first
    ``images`` images: the exit step depends on the image) and at batch B (median call / B), with every
    image's exit step and class at both batch sizes."""
    d = Path(args.dir)
    t = time.perf_counter()
    predict = load_engine(args.engine, args.config, d, args.threads)
    res = {"engine": args.engine, "config": args.config, "threads": args.threads,
           "load_s": time.perf_counter() - t, "budgets": {}}
    x = np.load(d / "inputs.npz")["x"]
    flops = np.load(d / "reference.npz")["flops"]
    predict(x[:1], None)  # first calls allocate and pick kernels
    predict(x, None)
    batch_calls = max(2, args.iters // 4)
    for label in args.budgets:
        budget = budget_value(label)
        single_exit, single_class, single_ms = [], [], []
        for i in range(min(args.images, len(x))):
            xi = x[i:i + 1]
            e, c = predict(xi, budget)  # warm-up call, and this image's decision at batch 1
            single_exit.append(int(e[0]))
            single_class.append(int(c[0]))
            single_ms.append(statistics.median(_timed(lambda: predict(xi, budget), args.iters)) * 1000)
        e, c = predict(x, budget)
        batch_ms = statistics.median(_timed(lambda: predict(x, budget), batch_calls)) * 1000
        res["budgets"][label] = {
            "b1_ms_per_image": statistics.mean(single_ms), "b1_ms_each": single_ms,
            "b1_exit": single_exit, "b1_class": single_class, "b1_mmacs": float(np.mean(flops[single_exit])),
            "batch_ms_per_image": batch_ms / len(x), "batch_exit": e.tolist(), "batch_class": c.tolist(),
            "batch_mmacs": float(np.mean(flops[e])), "batch_calls": batch_calls}
    own = ENGINE_FRAMEWORK[args.engine]
    res["foreign_frameworks"] = sorted(f for f in FRAMEWORKS if f != own and f in sys.modules)
    return res


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="job", required=True)
    q = sub.add_parser("prep")
    q.add_argument("--config", required=True)
    q.add_argument("--dir", required=True)
    q.add_argument("--threads", type=int, default=2)
    q.add_argument("--seed", type=int, default=0)
    q.add_argument("--calibration", type=int, default=128, help="random images the thresholds are found on")
    q.add_argument("--batch", type=int, default=16, help="images in the fixed batch")
    q = sub.add_parser("run")
    q.add_argument("--engine", required=True, choices=sorted(ENGINE_FRAMEWORK))
    q.add_argument("--config", required=True)
    q.add_argument("--dir", required=True)
    q.add_argument("--threads", type=int, required=True)
    q.add_argument("--budgets", type=lambda s: s.split(","), default=["1", "10", "20", "39", ALL_STEPS])
    q.add_argument("--images", type=int, default=4, help="images timed one by one at batch 1")
    q.add_argument("--iters", type=int, default=5, help="timed calls per image at batch 1 (batch B: a quarter, >= 2)")
    args = p.parse_args(argv)
    return run_job({"prep": prep, "run": run_engine}[args.job], args)


def run_job(job, args) -> int:
    """Emit the job's result, or on any error its one-line reason (the parent reports it and goes on).

    ``engines.main`` does the same inline; once that file is free, this could move there and serve both.
    """
    try:
        emit({"ok": True, **job(args)})
        return 0
    except Exception as e:  # noqa: BLE001
        traceback.print_exc()
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        emit({"ok": False, "error": f"{type(e).__name__}: {first}"[:400]})
        return 1


if __name__ == "__main__":
    sys.exit(main())
