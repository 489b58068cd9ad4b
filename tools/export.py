"""Export any registered model to Paddle Inference (and ONNX); see --help.

The work is done by ``ppcdnv2.deploy`` (``ppcdnv2.deploy.cli.export_main``); also the ``ppcdnv2-export`` console script.
"""
import sys

from ppcdnv2.deploy.cli import export_main

if __name__ == "__main__":
    sys.exit(export_main(prog="export.py"))
