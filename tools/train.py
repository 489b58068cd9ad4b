"""Train a CondenseNetV2 or a CondenseNet (V1) (one device, or many under ``python -m paddle.distributed.launch``).

    python tools/train.py -c configs/demo.yaml
    python tools/train.py -c configs/cdnv2_a.yaml -o data.root=/data/imagenet -o train.batch_size=512
    python tools/train.py -c configs/condensenet74_c4_g4.yaml -o data.root=/data/imagenet   # V1, upstream recipe
    python tools/train.py -c configs/demo.yaml --resume            # continue output/demo/checkpoint_last
"""
import argparse
import sys

from ppcdnv2.engine import USER_ERRORS, run_from_cli


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
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


if __name__ == "__main__":
    sys.exit(main())
