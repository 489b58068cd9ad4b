"""Evaluation preprocessing with PIL vs OpenCV (``data.backend: pil | cv2``): throughput and effect on logits.

1. Throughput: decode + evaluation preprocessing (shorter side to 256, center crop 224, normalise; the
   bicubic of CondenseNetV2-A/B and the bilinear of C) of scikit-image's photos (astronaut, chelsea, coffee,
   rocket: 512x512 to 640x427) as JPEG and PNG files, in images/s, and decode alone. Each backend runs in a
   process of its own with its thread count set explicitly (``cv2.setNumThreads``, and ``OMP_NUM_THREADS``
   etc. in its environment); a child times ``--repeats`` passes of ``--seconds`` each (median), and there
   are ``--rounds`` rounds with the backends' order alternating, so load from elsewhere on a shared
   machine hits both alike; a figure is the median over rounds (the spread is in the JSON).
2. Agreement: the same photos plus 32 crops of them (fixed seed, various sizes and aspect ratios, JPEG)
   through both pipelines into ``ppcdnv2.create_model("cdnv2_a")`` with RANDOM weights (Paddle's
   initialisation; BatchNorm statistics calibrated on the PIL tensors, so activations and logits have a
   sane scale; no trained weights are needed or downloaded): top-1 agreement, max |logit difference|
   (also relative to the logits' standard deviation), and the tensors' mean / max absolute difference.
   Random weights say how much the input changes reach the logits, not what it costs in accuracy.

  python benchmarks/preprocess.py                     # threads 1 and 2, prints markdown tables
  python benchmarks/preprocess.py --threads 1 --seconds 1 --json out.json
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
PHOTOS = ("astronaut", "chelsea", "coffee", "rocket")
MARK = "@@PREPROCESS@@"


def write_photos(folder: Path, crops: int = 0):
    """The four photos as JPEG (quality 90) and PNG; with ``crops``, that many random crops as JPEG too."""
    from PIL import Image
    from skimage import data as skdata

    files = {"jpg": [], "png": [], "crops": []}
    rng = np.random.default_rng(0)
    for name in PHOTOS:
        arr = getattr(skdata, name)()
        for ext, kw in (("jpg", {"quality": 90}), ("png", {})):
            p = folder / f"{name}.{ext}"
            Image.fromarray(arr).save(p, **kw)
            files[ext].append(p)
    for k in range(crops):
        arr = getattr(skdata, PHOTOS[k % len(PHOTOS)])()
        h, w = arr.shape[:2]
        ch, cw = int(rng.integers(h // 3, h + 1)), int(rng.integers(w // 3, w + 1))
        top, left = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
        p = folder / f"crop{k:02d}.jpg"
        Image.fromarray(arr[top:top + ch, left:left + cw]).save(p, quality=90)
        files["crops"].append(p)
    return files


def child(args) -> int:
    """One backend, one thread count: timings as JSON after MARK on stdout."""
    import cv2

    cv2.setNumThreads(args.threads)
    from ppcdnv2.data.decode import read_image
    from ppcdnv2.data.transforms import EvalTransform

    files = [Path(p) for p in args.files]
    tfs = {i: EvalTransform(256, 224, i, backend=args.backend) for i in ("bicubic", "bilinear")}

    def rate(fn):
        fn()  # warm-up
        rates = []
        for _ in range(args.repeats):
            n, t0 = 0, time.perf_counter()
            while True:
                fn()
                n += len(files)
                dt = time.perf_counter() - t0
                if dt >= args.seconds:
                    break
            rates.append(n / dt)
        return statistics.median(rates)

    res = {"backend": args.backend, "threads": args.threads, "cv2_threads": cv2.getNumThreads(),
           "decode": rate(lambda: [read_image(p, args.backend) for p in files])}
    for name, tf in tfs.items():
        res[name] = rate(lambda: [tf(read_image(p, args.backend)) for p in files])
    print(MARK + json.dumps(res))
    return 0


def run_child(backend: str, threads: int, files, seconds: float, repeats: int) -> dict:
    env = dict(os.environ)
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        env[var] = str(threads)
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", backend, "--threads", str(threads),
           "--seconds", str(seconds), "--repeats", str(repeats), "--files", *map(str, files)]
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO, timeout=600)
    for line in p.stdout.splitlines():
        if line.startswith(MARK):
            return json.loads(line[len(MARK):])
    raise RuntimeError(f"{backend} child failed (exit {p.returncode}):\n{(p.stdout + p.stderr)[-3000:]}")


def agreement(files) -> dict:
    """Tensors and cdnv2_a logits (random weights, BN calibrated) through both pipelines."""
    import paddle

    import ppcdnv2
    from ppcdnv2.data.decode import read_image
    from ppcdnv2.data.transforms import EvalTransform

    out = {}
    for interp in ("bicubic", "bilinear"):
        xp = np.stack([EvalTransform(256, 224, interp)(read_image(p, "pil")) for p in files])
        xc = np.stack([EvalTransform(256, 224, interp, backend="cv2")(read_image(p, "cv2")) for p in files])
        d = np.abs(xp - xc)
        out[interp] = {"tensor_mean_abs": float(d.mean()), "tensor_max_abs": float(d.max()),
                       "tensor_mean_abs_worst_image": float(d.reshape(len(files), -1).mean(1).max()),
                       "x_pil": xp, "x_cv2": xc}
    paddle.seed(0)
    model = ppcdnv2.create_model("cdnv2_a")
    bns = [m for m in model.sublayers() if isinstance(m, paddle.nn.layer.norm._BatchNormBase)]
    for bn in bns:  # running statistics := those of one batch of the photos (PIL tensors, bicubic)
        bn._momentum = 0.0
    model.train()
    with paddle.no_grad():
        model(paddle.to_tensor(out["bicubic"]["x_pil"]))
    model.eval()
    for interp in ("bicubic", "bilinear"):
        with paddle.no_grad():
            lp = model(paddle.to_tensor(out[interp]["x_pil"])).numpy().astype(np.float64)
            lc = model(paddle.to_tensor(out[interp]["x_cv2"])).numpy().astype(np.float64)
        r = out[interp]
        del r["x_pil"], r["x_cv2"]
        top2 = np.sort(lp, axis=1)[:, -2:]
        r.update(images=len(files), top1_agree=float((lp.argmax(1) == lc.argmax(1)).mean()),
                 top1_margin_median=float(np.median(top2[:, 1] - top2[:, 0])),
                 max_abs_logit_diff=float(np.abs(lp - lc).max()), logit_std=float(lp.std()),
                 top5_overlap=float(np.mean([len(set(np.argsort(-a)[:5]) & set(np.argsort(-b)[:5])) / 5
                                             for a, b in zip(lp, lc)])))
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", default="1,2", help="comma-separated thread counts (default 1,2)")
    p.add_argument("--seconds", type=float, default=2.0, help="length of one timed pass (default 2)")
    p.add_argument("--repeats", type=int, default=1, help="timed passes per child, median taken (default 1)")
    p.add_argument("--rounds", type=int, default=3, help="rounds, backends alternating; median taken (default 3)")
    p.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    p.add_argument("--child", choices=("pil", "cv2"), help=argparse.SUPPRESS)
    p.add_argument("--files", nargs="*", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        args.backend, args.threads = args.child, int(args.threads)
        return child(args)

    import cv2
    import PIL

    threads = [int(t) for t in args.threads.split(",")]
    results = {"versions": {"opencv": cv2.__version__, "pillow": PIL.__version__, "numpy": np.__version__},
               "cpu_count": os.cpu_count(), "load_average": [os.getloadavg()[0]], "throughput": []}
    with tempfile.TemporaryDirectory() as tmp:
        files = write_photos(Path(tmp), crops=32)
        runs = {}
        for rnd in range(args.rounds):
            for fmt in ("jpg", "png"):
                for t in threads:
                    for backend in (("pil", "cv2") if rnd % 2 == 0 else ("cv2", "pil")):
                        r = run_child(backend, t, files[fmt], args.seconds, args.repeats)
                        runs.setdefault((fmt, t, backend), []).append(r)
            results["load_average"].append(os.getloadavg()[0])
        for (fmt, t, backend), rs in runs.items():
            r = {"format": fmt, "threads": t, "backend": backend, "cv2_threads": rs[0]["cv2_threads"]}
            for key in ("decode", "bicubic", "bilinear"):
                r[key] = statistics.median(x[key] for x in rs)
                r[key + "_rounds"] = [x[key] for x in rs]
            results["throughput"].append(r)
        results["agreement"] = agreement(files["jpg"] + files["crops"])
    v = results["versions"]
    print(f"Pillow {v['pillow']}, OpenCV {v['opencv']}, numpy {v['numpy']}, {results['cpu_count']} CPUs; "
          f"1-min load average {min(results['load_average']):.2f}-{max(results['load_average']):.2f}\n")
    print(f"Decode + evaluation preprocessing (256 → center 224, normalise), images/s, one process per backend, "
          f"median of {args.rounds} rounds:\n")
    print("| format | threads | backend | decode only | + bicubic (A/B) | + bilinear (C) |")
    print("|---|---|---|---|---|---|")
    for r in results["throughput"]:
        print(f"| {r['format'].upper()} | {r['threads']} | {r['backend']} | {r['decode']:.0f} | {r['bicubic']:.0f} | "
              f"{r['bilinear']:.0f} |")
    by = {(r["format"], r["threads"], r["backend"]): r for r in results["throughput"]}
    print("\ncv2 / PIL speed-up (decode + bicubic): " + ", ".join(
        f"{fmt.upper()} {t} thr {by[(fmt, t, 'cv2')]['bicubic'] / by[(fmt, t, 'pil')]['bicubic']:.2f}x"
        for fmt in ("jpg", "png") for t in threads))
    a = results["agreement"]
    n = a["bicubic"]["images"]
    print(f"\nPIL vs cv2 pipelines on {n} photos and crops (JPEG); cdnv2_a with RANDOM weights (BN calibrated):\n")
    print("| resize | mean abs Δ tensor | worst image mean | max abs Δ tensor | top-1 agreement | top-5 overlap "
          "| max abs Δ logit | logit std | median top-1 margin |")
    print("|---|---|---|---|---|---|---|---|---|")
    for interp, r in a.items():
        print(f"| {interp} | {r['tensor_mean_abs']:.4f} | {r['tensor_mean_abs_worst_image']:.4f} | "
              f"{r['tensor_max_abs']:.3f} | {r['top1_agree'] * 100:.1f} % ({round(r['top1_agree'] * n)}/{n}) | "
              f"{r['top5_overlap'] * 100:.1f} % | {r['max_abs_logit_diff']:.4f} | {r['logit_std']:.3f} | "
              f"{r['top1_margin_median']:.4f} |")
    print("\n(tensors in normalised units, (x/255 - mean)/std; a random model's top-1 margin is tiny, so its "
          "top-1 flips easily: trained weights would be a fairer judge)")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
