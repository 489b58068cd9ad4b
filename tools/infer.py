"""Top-k ImageNet labels for images with an exported model or a weights file; see --help.

The work is done by ``ppcdnv2.deploy`` (``ppcdnv2.deploy.cli.infer_main``); also the ``ppcdnv2-infer`` console script.
"""
import sys

from ppcdnv2.deploy.cli import infer_main

if __name__ == "__main__":
    sys.exit(infer_main(prog="infer.py"))
