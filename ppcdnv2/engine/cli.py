"""Command lines of ``tools/train.py`` and ``tools/eval.py`` (and the ``ppcdnv2-train``/``ppcdnv2-eval``
console scripts); each ``*_main(argv)`` returns the exit code."""
from __future__ import annotations

import argparse
import sys
from typing import List, Optional

TRAIN_DESCRIPTION = """\
Train any registered model (one device, or many under ``python -m paddle.distributed.launch``).

    %(prog)s -c configs/demo.yaml
    %(prog)s -c configs/cdnv2_a.yaml -o data.root=/data/imagenet -o train.batch_size=512
    %(prog)s -c configs/condensenet74_c4_g4.yaml -o data.root=/data/imagenet   # V1, upstream recipe
    %(prog)s -c configs/rexnet_100.yaml -o data.root=/data/imagenet            # ReXNet, upstream recipe
    %(prog)s -c configs/demo.yaml --resume            # continue output/demo/checkpoint_last"""

EVAL_DESCRIPTION = """\
Evaluate weights (top-1, top-5, loss; FLOPs and parameters) on ImageNet-layout folders, CIFAR or the demo digits.

    %(prog)s -c configs/demo.yaml --weights output/demo/model_condensed.pdparams
    %(prog)s --weights output/demo/checkpoint_last.safetensors --form converted
    %(prog)s -c configs/cdnv2_a.yaml --weights cdnv2_a.pth -o data.root=/data/imagenet
    %(prog)s -c configs/rexnet_100.yaml --weights rexnetv1_1.0x.pth -o data.root=/data/imagenet"""


def train_main(argv: Optional[List[str]] = None, prog: Optional[str] = None) -> int:
    from . import USER_ERRORS, run_from_cli

    ap = argparse.ArgumentParser(prog=prog, description=TRAIN_DESCRIPTION,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-c", "--config", help="YAML config (configs/*.yaml)")
    ap.add_argument("-o", "--override", action="append", default=[], metavar="SECTION.KEY=VALUE",
                    help="override a config value (YAML value), repeatable")
    ap.add_argument("--resume", nargs="?", const="auto", default=None, metavar="CHECKPOINT",
                    help="continue from a checkpoint (default: <train.output>/checkpoint_last.safetensors)")
    args = ap.parse_args(argv)
    if not args.config and not (args.resume and args.resume != "auto"):
        ap.error("give -c CONFIG (or --resume CHECKPOINT to continue with the checkpoint's own config)")
    try:
        run_from_cli(args.config, args.override, args.resume)
    except USER_ERRORS as e:  # bad config, data or weights: the message says what to fix
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


def eval_main(argv: Optional[List[str]] = None, prog: Optional[str] = None) -> int:
    from . import USER_ERRORS
    from .evalrun import run_eval

    ap = argparse.ArgumentParser(prog=prog, description=EVAL_DESCRIPTION,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--weights", required=True,
                    help="training checkpoint, .pdparams/.safetensors (either form), official/timm .pth or ppim's")
    ap.add_argument("-c", "--config", help="YAML config for data and model (default: the checkpoint's own)")
    ap.add_argument("-o", "--override", action="append", default=[], metavar="SECTION.KEY=VALUE")
    ap.add_argument("--form", choices=("auto", "train", "converted"), default="auto",
                    help="evaluate in this form (auto: the weights' own; converted condenses training weights)")
    ap.add_argument("--which", choices=("ema", "model"), default="ema",
                    help="from a checkpoint holding both: the EMA or the raw weights")
    ap.add_argument("--skip-bad", action="store_true", help="skip unreadable images (counted) instead of failing")
    ap.add_argument("-b", "--batch-size", type=int, default=None)
    ap.add_argument("--json", help="also write the results to this JSON file")
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)
    try:
        run_eval(args.weights, args.config, args.override, args.form, args.which, args.skip_bad, args.batch_size,
                 args.json, progress_bar=not args.no_progress)
    except (*USER_ERRORS, ValueError) as e:  # bad config, data or weights: the message names the file or key
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0
