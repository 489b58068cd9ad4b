"""Command lines of ``tools/export.py`` and ``tools/infer.py``; each ``main(argv)`` returns the exit code."""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import List, Optional

import numpy as np

from .export import META_SUFFIX, ExportError, int8_path

EXPORT_DESCRIPTION = """\
Export any registered model in its deployment form (condensed for the CondenseNets, the one form of ReXNet):
  <OUT>.json + <OUT>.pdiparams   Paddle Inference program and weights (dynamic batch and image size;
                                 PIR .json with Paddle 3, .pdmodel with older Paddle)
  <OUT>.meta.json                model name, classes and evaluation preprocessing (read by infer.py)
  <OUT>.onnx                     ONNX via paddle2onnx (whenever it is installed; --no-onnx skips it), with
                                 exact graph rewrites for onnxruntime (ppcdnv2.deploy.onnx_opt)
  <OUT>.int8.onnx (+ .meta.json) with --quantize int8 only: onnxruntime static int8 quantisation, calibrated
                                 on --calibration images; the float32 <OUT>.onnx is written as well
Weights: any file the converter reads (ours, official, timm's, ppim's); training-form CondenseNet weights are
condensed first. --check compares the exported models with the
Paddle (dygraph) model on a random batch: Paddle Inference to 1e-5, onnxruntime to 1e-4 (max abs logit)."""

EXPORT_EPILOG = """\
examples:
  %(prog)s cdnv2_c --weights cdnv2_c.pdparams --output exported/cdnv2_c --onnx --check
  %(prog)s cdnv2_a --weights cdnv2_a_converted.pth.tar --output exported/cdnv2_a
  %(prog)s rexnet_100 --weights rexnetv1_1.0x.pth --output exported/rexnet_100 --onnx
  %(prog)s cdnv2_c --weights cdnv2_c.pdparams -o exported/cdnv2_c --quantize int8 --calibration photos/
exit status: 0 on success, 1 on an export error or a failed --check, 2 on bad arguments."""

INFER_DESCRIPTION = """\
Classify images with an exported model (Paddle Inference or ONNX) or a weights file (Paddle dygraph):
top-k classes with softmax probabilities. Preprocessing is the evaluation transform the weights were
published with (the family's metadata: e.g. shorter side 256, bicubic, bilinear for CondenseNetV2-C, center
crop 224, ImageNet mean/std), read from the export's .meta.json. 1000-class models print the ImageNet names
shipped with ppcdnv2."""

INFER_EPILOG = """\
examples:
  %(prog)s -m exported/cdnv2_c photos/ cat.jpg
  %(prog)s -m exported/cdnv2_c.onnx cat.jpg --json
  %(prog)s -m cdnv2_c.pdparams --arch cdnv2_c cat.jpg
exit status: 0 on success, 1 on an error (unreadable model or image), 2 on bad arguments."""

PADDLE_TOL, ONNX_TOL = 1e-5, 1e-4


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _fail(prog: str, err: Exception) -> int:
    print(f"{prog}: error: {err}", file=sys.stderr)
    return 1


# --- export ---------------------------------------------------------------------------------------
def build_export_parser(prog: Optional[str] = None) -> argparse.ArgumentParser:
    p = _Parser(prog=prog, description=EXPORT_DESCRIPTION, epilog=EXPORT_EPILOG,
                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", metavar="MODEL", help="registry name or alias, either form (cdnv2_a, converted_cdnv2_c, rexnet_100, ...)")
    p.add_argument("--weights", metavar="FILE",
                   help=".pdparams/.safetensors (ours, either form) or an official .pth/.pth.tar; "
                        "without it the model keeps its random initialisation (for trying the pipeline)")
    p.add_argument("--output", "-o", required=True, metavar="OUT", help="output prefix, e.g. exported/cdnv2_c")
    p.add_argument("--onnx", nargs="?", const=True, default=None, metavar="PATH",
                   help="also write ONNX, to <OUT>.onnx or PATH (the default whenever paddle2onnx is installed: "
                        "onnxruntime is the fastest CPU engine here)")
    p.add_argument("--no-onnx", action="store_true", help="write the Paddle Inference files only")
    p.add_argument("--opset", type=int, default=13, help="ONNX opset (default 13)")
    p.add_argument("--no-onnx-optimize", action="store_true",
                   help="write the ONNX graph as paddle2onnx makes it (default: the exact rewrites of "
                        "ppcdnv2.deploy.onnx_opt, faster in onnxruntime)")
    p.add_argument("--quantize", choices=("int8",), default=None,
                   help="also write an int8 model (onnxruntime static quantisation, QDQ, per-channel weights) to "
                        "<ONNX>.int8.onnx beside the float32 .onnx, which stays as it is; measure before using it "
                        "(on CondenseNetV2-C it measured slower than float32 in onnxruntime: the benchmark's "
                        "ours-onnx-int8)")
    p.add_argument("--calibration", default="skimage", metavar="SRC",
                   help="calibration images for --quantize: a folder of images, 'skimage' (scikit-image's sample "
                        "photos; default), 'digits' (the demo's handwritten digits) or 'noise'")
    p.add_argument("--calibration-images", type=int, default=32, metavar="N",
                   help="at most N calibration images (default 32)")
    p.add_argument("--check", action="store_true", help="compare exported outputs with the dygraph model")
    p.add_argument("--threads", type=int, default=2, help="CPU threads for --check (default 2)")
    return p


def _paddle2onnx_installed() -> bool:
    import importlib.util

    return importlib.util.find_spec("paddle2onnx") is not None


def export_main(argv: Optional[List[str]] = None, prog: Optional[str] = None) -> int:
    prog = prog or Path(sys.argv[0]).name
    args = build_export_parser(prog).parse_args(argv)
    from .export import export_inference, export_onnx
    from .predictor import (DygraphPredictor, OnnxPredictor, PaddlePredictor, default_meta,
                            load_converted_model, set_threads)

    out = Path(args.output)
    if args.onnx and args.no_onnx:
        print(f"{prog}: error: --onnx and --no-onnx contradict each other", file=sys.stderr)
        return 2
    if args.quantize and args.no_onnx:
        print(f"{prog}: error: --quantize needs the ONNX export (drop --no-onnx)", file=sys.stderr)
        return 2
    if args.calibration_images < 1:
        print(f"{prog}: error: --calibration-images must be >= 1", file=sys.stderr)
        return 2
    want_onnx = args.onnx or args.quantize or (not args.no_onnx and _paddle2onnx_installed())
    onnx_dst = None if not want_onnx else Path(args.output + ".onnx" if args.onnx in (None, True) else args.onnx)
    stage = None
    try:
        set_threads(args.threads)
        if args.weights is None:
            print(f"{prog}: warning: no --weights, exporting a randomly initialised {args.model}", file=sys.stderr)
        from ..registry import model_entry

        family = model_entry(args.model).family
        if not family.exportable:
            raise ExportError(f"{args.model}: {family.title} crops image patches at positions it computes, which "
                              f"paddle.jit cannot trace; deploy it as the Paddle model "
                              f"(ppcdnv2.create_model({args.model!r}, pretrained=...))")
        model = load_converted_model(args.model, args.weights)
        meta = default_meta(args.model, model)
        # everything is written to a staging folder beside OUT and moved into place only when all of it was
        # written (and --check passed): a failure leaves no half export and keeps an older one intact
        out.parent.mkdir(parents=True, exist_ok=True)
        stage = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.export."))
        files = export_inference(model, stage / out.name, meta)
        staged_onnx = staged_q = calib = None
        if onnx_dst is not None:
            staged_onnx = export_onnx(model, stage / "model.onnx", meta, opset=args.opset,
                                      optimize=not args.no_onnx_optimize)
        if args.quantize:
            from dataclasses import replace

            from .quantize import calibration_batch, quantize_onnx

            calib = calibration_batch(args.calibration, meta.preprocess, args.calibration_images)
            staged_q = stage / "model.int8.onnx"
            record = quantize_onnx(staged_onnx, staged_q, calib, args.calibration)
            record["float32_source"] = onnx_dst.name
            replace(meta, quantization=record).save(staged_q.with_suffix(META_SUFFIX))
        if args.check:
            x = np.random.default_rng(0).standard_normal((2, 3, meta.input_size, meta.input_size), np.float32)
            ref = DygraphPredictor(model)(x)
            checks = [(PaddlePredictor(files.prefix, threads=args.threads), PADDLE_TOL)]
            if staged_onnx is not None:
                checks.append((OnnxPredictor(staged_onnx, threads=args.threads), ONNX_TOL))
            failed = False
            for predictor, tol in checks:
                diff = float(np.abs(predictor(x) - ref).max())
                ok = diff <= tol
                failed |= not ok
                print(f"check {predictor.name}: max |logit diff| {diff:.2e} ({'ok' if ok else 'FAILED'}, tol {tol:g})")
            if staged_q is not None:  # int8 is not expected to match to 1e-4: measured on real images, reported
                from .quantize import compare_logits

                cmp = compare_logits(OnnxPredictor(staged_onnx, threads=args.threads)(calib),
                                     OnnxPredictor(staged_q, threads=args.threads)(calib))
                finite = bool(np.isfinite(cmp["max_abs_diff"]))
                failed |= not finite
                print(f"check int8 vs float32 ONNX on the {len(calib)} calibration images: max |logit diff| "
                      f"{cmp['max_abs_diff']:.2e} (logit std {cmp['reference_std']:.2f}), top-1 agreement "
                      f"{cmp['top1_agreement']:.1%} ({'reported' if finite else 'FAILED: not finite'})")
            if failed:
                print(f"{prog}: error: --check failed; nothing was written to {out}", file=sys.stderr)
                return 1
        moved = []
        for src in (files.model_file, files.params_file, files.meta_file):
            dst = out.with_name(out.name + src.name[len(out.name):])
            os.replace(src, dst)
            moved.append(dst)
        print(f"Paddle Inference: {moved[0]} + {moved[1].name} (+ {moved[2].name})")
        if staged_onnx is not None:
            onnx_dst.parent.mkdir(parents=True, exist_ok=True)
            os.replace(staged_onnx, onnx_dst)
            staged_meta = staged_onnx.with_suffix(META_SUFFIX)
            if staged_meta.exists():
                os.replace(staged_meta, onnx_dst.with_suffix(META_SUFFIX))
            print(f"ONNX: {onnx_dst}")
        if staged_q is not None:
            q_dst = int8_path(onnx_dst)
            os.replace(staged_q, q_dst)
            os.replace(staged_q.with_suffix(META_SUFFIX), q_dst.with_suffix(META_SUFFIX))
            print(f"ONNX int8 ({args.calibration_images if calib is None else len(calib)} calibration images from "
                  f"{args.calibration}): {q_dst}")
    except OSError as e:  # full or read-only disk, a folder in the way: say where
        where = getattr(e, "filename", None) or out
        return _fail(prog, f"cannot write {where}: {e.strerror or e}")
    except (ExportError, ValueError, KeyError, RuntimeError) as e:
        return _fail(prog, e)
    finally:
        if stage is not None:
            shutil.rmtree(stage, ignore_errors=True)
    return 0


# --- infer ----------------------------------------------------------------------------------------
def build_infer_parser(prog: Optional[str] = None) -> argparse.ArgumentParser:
    from .predictor import BACKENDS

    p = _Parser(prog=prog, description=INFER_DESCRIPTION, epilog=INFER_EPILOG,
                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files or folders (searched recursively)")
    p.add_argument("--model", "-m", required=True, metavar="PATH",
                   help="export prefix (or its .json/.pdmodel/.pdiparams), an .onnx file, or a weights file")
    p.add_argument("--arch", metavar="NAME", help="model name for a weights file (cdnv2_a/b/c, rexnet_100, ...)")
    p.add_argument("--backend", choices=BACKENDS, default="auto",
                   help="auto (default): onnxruntime for an export with its .onnx beside it (or an .onnx file) when "
                        "onnxruntime is installed, else Paddle Inference; dygraph for weights; "
                        "onednn = Paddle Inference with oneDNN")
    p.add_argument("--device", choices=("cpu", "gpu"), default="cpu")
    p.add_argument("--skip-bad", action="store_true",
                   help="unreadable images are reported on stderr and skipped; exit 0 (default: exit 1 at the end)")
    p.add_argument("--image-backend", choices=("pil", "cv2"), default=None,
                   help="decode and resize images with PIL (the official evaluation's; default) or OpenCV "
                        "(faster, pixels differ slightly)")
    p.add_argument("--threads", type=int, default=2, help="CPU threads (default 2)")
    p.add_argument("--workers", type=int, default=1,
                   help="Paddle backends: split each batch over this many threads (threads/workers math threads "
                        "each); 2 on 2 cores nearly doubles batch throughput. Default 1")
    p.add_argument("--spin", action="store_true",
                   help="onnxruntime with --threads > 1: worker threads spin between operators (onnxruntime's "
                        "default; faster on a machine whose cores are otherwise idle, slower when other work "
                        "shares them, which is why it is off by default)")
    p.add_argument("--topk", "-k", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--labels", metavar="FILE", help="class names, one per line (default: ImageNet for 1000 classes)")
    p.add_argument("--json", action="store_true", help="one JSON object per image instead of text")
    g = p.add_argument_group("step-wise models (GFNet, from a weights file with --arch gfnet_...)")
    g.add_argument("--budget", type=int, default=None, metavar="P",
                   help="exit as soon as the prediction is confident enough for budget P (1..39, the weights' "
                        "thresholds); default: run every step")
    g.add_argument("--draw", metavar="DIR", help="write <image>_gfnet.png per image: the glance and the patches")
    return p


def infer_main(argv: Optional[List[str]] = None, prog: Optional[str] = None) -> int:
    prog = prog or Path(sys.argv[0]).name
    args = build_infer_parser(prog).parse_args(argv)
    from .classify import classify, load_labels
    from .predictor import load_predictor

    if min(args.topk, args.batch_size, args.threads, args.workers) < 1:
        print(f"{prog}: error: --topk, --batch-size, --threads and --workers must be >= 1", file=sys.stderr)
        return 2
    if _is_stepwise(args.arch):
        return _infer_stepwise(args, prog)
    if args.budget is not None or args.draw:
        return _fail(prog, "--budget and --draw are for step-wise models (GFNet): give --arch gfnet_...")
    try:
        predictor = load_predictor(args.model, model_name=args.arch, backend=args.backend,
                                   device=args.device, threads=args.threads, workers=args.workers,
                                   spinning=True if args.spin else None)
        labels = load_labels(args.labels) if args.labels else None
        unreadable = []

        def report(path, message):
            unreadable.append(path)
            print(f"{prog}: {'warning' if args.skip_bad else 'error'}: {message}", file=sys.stderr)

        results = classify(predictor, args.images, k=args.topk, batch_size=args.batch_size, labels=labels,
                           progress=not args.json and sys.stderr.isatty(), backend=args.image_backend,
                           on_error=report)
    except (ExportError, ValueError, KeyError, FileNotFoundError, RuntimeError) as e:
        return _fail(prog, e)
    nonfinite = 0
    for r in results:
        finite = all(np.isfinite(prob) for _, _, prob in r.top)
        if not finite:  # NaN/Inf weights: say so, never print NaN into JSON
            nonfinite += 1
            print(f"{prog}: error: {r.path}: the model's output is not finite (NaN/Inf in its weights?)",
                  file=sys.stderr)
        if args.json:
            print(json.dumps(_json_safe(r.to_dict()), allow_nan=False))
        else:
            print(r.path)
            for index, name, prob in r.top:
                print(f"  {prob:7.4f}  {name} ({index})")
    return 1 if nonfinite or (unreadable and not args.skip_bad) else 0


def _is_stepwise(arch: Optional[str]) -> bool:
    from ..registry import model_entry

    try:
        return bool(arch) and not model_entry(arch).family.single_output
    except KeyError:
        return False  # the usual path says the name is unknown


def _infer_stepwise(args, prog: str) -> int:
    """GFNet: early exit per image, the exit step and cost printed, pictures with --draw (see ``stepwise``)."""
    from .classify import load_labels
    from .predictor import set_threads
    from .stepwise import classify_stepwise, load_stepwise_model
    from ..weights import WeightsError

    if args.backend not in ("auto", "dygraph"):
        return _fail(prog, f"{args.arch} runs as the Paddle model from a weights file (--backend dygraph)")
    unreadable = []

    def report(path, message):
        unreadable.append(path)
        print(f"{prog}: {'warning' if args.skip_bad else 'error'}: {message}", file=sys.stderr)

    try:
        set_threads(args.threads)
        if args.device == "gpu":
            import paddle

            paddle.set_device("gpu")
        model = load_stepwise_model(args.arch, args.model)
        labels = load_labels(args.labels) if args.labels else None
        results = classify_stepwise(model, args.images, k=args.topk, batch_size=args.batch_size, budget=args.budget,
                                    labels=labels, draw_dir=args.draw, backend=args.image_backend, on_error=report,
                                    progress=not args.json and sys.stderr.isatty())
    except (WeightsError, ValueError, KeyError, FileNotFoundError, RuntimeError) as e:
        return _fail(prog, e)
    except OSError as e:  # --draw on a read-only or full disk
        return _fail(prog, f"cannot write {e.filename or args.draw}: {e.strerror or e}")
    for r in results:
        if args.json:
            print(json.dumps(_json_safe(r.to_dict()), allow_nan=False))
            continue
        cost = f", {r.mmacs:.0f} M multiply-adds" if r.mmacs is not None else ""
        print(f"{r.path}  (exit at step {r.exit_step} of {r.steps}{cost}"
              + (f"; picture {r.picture})" if r.picture else ")"))
        for index, name, prob in r.top:
            print(f"  {prob:7.4f}  {name} ({index})")
    return 1 if unreadable and not args.skip_bad else 0


def _json_safe(obj):
    """JSON has no NaN/Infinity: non-finite numbers become null."""
    if isinstance(obj, float):
        return obj if np.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    return obj
