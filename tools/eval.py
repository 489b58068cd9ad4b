"""Evaluate weights on a data set; see --help. The work is done by ``ppcdnv2.engine`` (``ppcdnv2.engine.cli``).

Installed as the ``ppcdnv2-eval`` console script too.
"""
import sys

from ppcdnv2.engine.cli import eval_main

if __name__ == "__main__":
    sys.exit(eval_main(prog="eval.py"))
