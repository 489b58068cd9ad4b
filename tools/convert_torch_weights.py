"""Convert CondenseNetV2 weights: official PyTorch checkpoints <-> ppcdnv2 Paddle weights.

Run with --help for the options; the work is done by ``ppcdnv2.convert.cli``.
"""
import sys

from ppcdnv2.convert.cli import main

if __name__ == "__main__":
    sys.exit(main(prog="convert_torch_weights.py"))
