"""Convert weights of any registered family: PyTorch checkpoints (official, timm's, yours) <-> ppcdnv2 Paddle weights.

Run with --help for the options; the work is done by ``ppcdnv2.convert.cli``; also the ``ppcdnv2-convert`` console script.
"""
import sys

from ppcdnv2.convert.cli import main

if __name__ == "__main__":
    sys.exit(main(prog="convert_torch_weights.py"))
