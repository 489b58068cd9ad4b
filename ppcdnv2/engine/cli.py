"""Command lines of ``tools/train.py`` and ``tools/eval.py`` (and the ``ppcdnv2-train``/``ppcdnv2-eval``
console scripts); each ``*_main(argv)`` returns the exit code: 0 done, 1 the input or the run failed (one
line on stderr), 2 bad usage (argparse), as every tool here."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import List, Optional

TRAIN_DESCRIPTION = """\
Train any registered model (one device, or many under ``python -m paddle.distributed.launch``).

    %(prog)s -c configs/demo.yaml
    %(prog)s -c configs/cdnv2_a.yaml -o data.root=/data/imagenet -o train.batch_size=512
    %(prog)s -c configs/condensenet74_c4_g4.yaml -o data.root=/data/imagenet   # V1, upstream recipe
    %(prog)s -c configs/rexnet_100.yaml -o data.root=/data/imagenet            # ReXNet, upstream recipe
    %(prog)s -c configs/demo.yaml --resume            # continue output/demo/checkpoint_last

exit status: 0 on success, 1 on a failed run or bad input (one line on stderr), 2 on bad arguments."""

EVAL_DESCRIPTION = """\
Evaluate weights (top-1, top-5, loss; FLOPs and parameters) on ImageNet-layout folders, CIFAR or the demo digits.

    %(prog)s -c configs/demo.yaml --weights output/demo/model_condensed.pdparams
    %(prog)s --weights output/demo/checkpoint_last.safetensors --form converted
    %(prog)s -c configs/cdnv2_a.yaml --weights cdnv2_a.pth -o data.root=/data/imagenet
    %(prog)s -c configs/rexnet_100.yaml --weights rexnetv1_1.0x.pth -o data.root=/data/imagenet
    %(prog)s -c configs/gfnet.yaml -o model.name=gfnet_regnety_600m_p96_t5 --weights gf.pdparams \
        -o data.root=/data/imagenet --plot budget.png    # GFNet: top-1 per step and per budget

exit status: 0 on success, 1 on bad input (one line on stderr), 2 on bad arguments."""


def train_main(argv: Optional[List[str]] = None, prog: Optional[str] = None) -> int:
    from . import USER_ERRORS, run_from_cli

    ap = argparse.ArgumentParser(prog=prog, description=TRAIN_DESCRIPTION,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-c", "--config", help="YAML config (configs/*.yaml)")
    ap.add_argument("-o", "--override", action="append", default=[], metavar="SECTION.KEY=VALUE",
                    help="override a config value (YAML value), repeatable")
    ap.add_argument("--resume", nargs="?", const="auto", default=None, metavar="CHECKPOINT",
                    help="continue from a checkpoint (default: <train.output>/checkpoint_last.safetensors)")
    ap.add_argument("--overwrite", action="store_true",
                    help="train.output holds a run: start over (its files are removed) instead of refusing")
    args = ap.parse_args(argv)
    if not args.config and not (args.resume and args.resume != "auto"):
        ap.error("give -c CONFIG (or --resume CHECKPOINT to continue with the checkpoint's own config)")
    if args.resume and args.overwrite:
        ap.error("--resume continues a run and --overwrite starts it over: give one of them")
    try:
        run_from_cli(args.config, args.override, args.resume, overwrite=args.overwrite)
    except USER_ERRORS as e:  # bad config, data or weights: the message says what to fix
        print(f"error: {e}", file=sys.stderr)
        return 1
    except OSError as e:  # a read-only or full disk under train.output
        print(f"error: cannot write {e.filename or 'the run output'}: {e.strerror or e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"\n{_interrupted(args)}", file=sys.stderr)
        return 130
    return 0


def _interrupted(args) -> str:
    """What a Ctrl-C leaves: the last complete checkpoint of the run and how to go on."""
    from .checkpoint import checkpoint_header
    from .config import load_config
    from .trainer import CHECKPOINT

    try:
        out = Path(args.resume).parent if args.resume not in (None, "auto") else \
            Path(load_config(args.config, args.override)["train"]["output"])
    except Exception:  # the config itself is what failed to load
        return "interrupted"
    meta = checkpoint_header(out / CHECKPOINT)
    if meta is None:
        return f"interrupted before the first checkpoint; nothing to resume in {out}"
    return (f"interrupted; the last checkpoint is epoch {meta['epoch']} (step {meta['step']}) in {out / CHECKPOINT}; "
            f"continue with --resume")


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
    ap.add_argument("--labels", metavar="FILE",
                    help="the model's class names or ids, one per line in index order, to match class folders by "
                         "name (default for 1000 classes: the packaged ImageNet names)")
    gf = ap.add_argument_group("step-wise models (GFNet)")
    gf.add_argument("--thresholds", choices=("auto", "stored", "train"), default=None,
                    help="exit thresholds of the 39 budgets: stored in the weights, or found on training images "
                         "(data.train_split) as upstream's inference.py mode 2; auto (default): stored if any")
    gf.add_argument("--train-images", type=int, default=None, metavar="N",
                    help="find the thresholds on a fixed random subset of N training images (default 200000)")
    gf.add_argument("--plot", metavar="PNG", help="write top-1 against mean multiply-adds (per budget, per step)")
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)
    try:
        run_eval(args.weights, args.config, args.override, args.form, args.which, args.skip_bad, args.batch_size,
                 args.json, progress_bar=not args.no_progress, labels=args.labels, thresholds=args.thresholds,
                 train_images=args.train_images, plot=args.plot)
    except (*USER_ERRORS, ValueError) as e:  # bad config, data or weights: the message names the file or key
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0
