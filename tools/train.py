"""Train any registered model; see --help. The work is done by ``ppcdnv2.engine`` (``ppcdnv2.engine.cli``).

Installed as the ``ppcdnv2-train`` console script too.
"""
import sys

from ppcdnv2.engine.cli import train_main

if __name__ == "__main__":
    sys.exit(train_main(prog="train.py"))
