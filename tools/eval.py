"""Evaluate weights (top-1, top-5, loss; FLOPs and parameters) on ImageNet-layout folders, CIFAR or the demo digits.

    python tools/eval.py -c configs/demo.yaml --weights output/demo/model_condensed.pdparams
    python tools/eval.py --weights output/demo/checkpoint_last.safetensors --form converted
    python tools/eval.py -c configs/cdnv2_a.yaml --weights cdnv2_a.pth -o data.root=/data/imagenet
    python tools/eval.py -c configs/condensenet74_c4_g4.yaml --weights converted_condensenet_4.pth.tar \
        -o data.root=/data/imagenet                         # CondenseNet (V1), upstream's released weights
"""
import argparse
import sys

from ppcdnv2.engine import USER_ERRORS
from ppcdnv2.engine.evalrun import run_eval


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--weights", required=True,
                    help="training checkpoint, .pdparams/.safetensors (either form) or official .pth/.pth.tar")
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
    except USER_ERRORS as e:  # bad config, data or weights: the message names the file or key
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
