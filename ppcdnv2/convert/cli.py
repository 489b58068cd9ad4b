"""Command line of the converter (``tools/convert_torch_weights.py``); ``main(argv)`` returns the exit code."""
from __future__ import annotations

import argparse
import sys
from typing import List, Optional

from ..weights import WeightsError
from .api import DEFAULT_TOL, FORMATS, convert_torch_checkpoint, export_torch_checkpoint, is_paddle_file
from ..registry import families

DESCRIPTION = """\
Convert weights of the registered families ({families}) between PyTorch checkpoints (the official
code's, timm's, your own trainer's) and ppcdnv2's Paddle weights.

torch -> Paddle (SRC is a torch file: .pth, .pth.tar, .pt, ..., or a torch-layout .safetensors such as
  timm's hub files; DST .pdparams or .safetensors): reads zip and legacy (torch < 1.6) files, bare state
  dicts or {'state_dict'|'state_dict_ema'|'model'}, 'module.' prefixes and trainer checkpoints (args,
  optimizer, epoch, ...). The file is read by a restricted reader: no pickle code from SRC runs,
  anything but weights is refused, and torch is NOT needed (only --verify needs it).
Paddle -> torch (SRC is our .pdparams/.safetensors or ppim's .pdparams, either form; DST .pth, or
  .safetensors for a torch-layout safetensors file): writes the official layout as the upstream code
  loads it (CondenseNet: {'state_dict': ...} with the dense SFR index; ReXNet: a bare state dict), or
  --layout timm. Loadable with torch.load(weights_only=True); written without torch (only --verify needs it).
The family, its layout and the architecture (a preset or a custom configuration) are detected from the
keys and shapes."""

EPILOG = """\
examples:
  %(prog)s cdnv2_a_converted.pth.tar cdnv2_a.pdparams --verify
  %(prog)s checkpoint.pth.tar cdnv2_c_train.pdparams --form train --weights model
  %(prog)s my_paddle_run.pdparams for_torch.pth
exit status: 0 on success, 1 on a conversion error (one line on stderr), 2 on bad arguments."""


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, not usage + message
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def build_parser(prog: Optional[str] = None) -> argparse.ArgumentParser:
    fams = families()
    presets = ", ".join(name for spec in fams.values() for name in spec.presets)
    p = _Parser(prog=prog, description=DESCRIPTION.replace("{families}", ", ".join(fams)), epilog=EPILOG,
                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("src", metavar="SRC", help="torch checkpoint, or Paddle weights for the reverse direction")
    p.add_argument("dst", metavar="DST", help="output file; written atomically (no partial file on failure)")
    p.add_argument("--arch", metavar="NAME|FILE",
                   help=f"architecture instead of detection: a preset ({presets}) or a .json/.yaml file of "
                        "config fields. Needed for custom configurations whose fields the weights cannot show "
                        "(CondenseNetV2: hs_start_block, stem) differ from the defaults")
    p.add_argument("--form", choices=("converted", "train"), default="converted",
                   help="torch -> Paddle: 'converted' (default) gives the condensed deployment model, condensing "
                        "a training checkpoint on the way; 'train' keeps the training form (masks) to fine-tune "
                        "or resume in Paddle (needs a training checkpoint)")
    p.add_argument("--weights", choices=("ema", "model"), default="ema",
                   help="trainer checkpoints: 'ema' (default, as the official convert_and_eval.py; falls back to "
                        "the plain weights when there is no EMA) or 'model' for the raw weights")
    p.add_argument("--format", choices=FORMATS, default=None,
                   help="torch -> Paddle output format (default: from DST's extension, else pdparams)")
    p.add_argument("--ppim", action="store_true",
                   help="torch -> Paddle: write ppim's layout (CondenseNetV2: dense SFR index, for "
                        "ppim.models.cdnv2_a/b/c; ReXNet: for ppim's rexnet models)")
    p.add_argument("--layout", default="official", metavar="NAME",
                   help="Paddle -> torch: the torch layout to write: 'official' (default, the upstream code's) "
                        "or 'timm' (ReXNet: timm's names, Linear head)")
    p.add_argument("--verify", action="store_true",
                   help="build the torch reference (needs torch), load SRC (or the written .pth) into it, run it "
                        "and the Paddle model on the same random input and fail if the logits differ by more "
                        "than --tol")
    p.add_argument("--tol", type=float, default=DEFAULT_TOL, help=f"--verify tolerance (default {DEFAULT_TOL:g})")
    p.add_argument("--force", action="store_true", help="overwrite an existing DST")
    p.add_argument("--allow-nonfinite", action="store_true",
                   help="convert weights holding NaN/Inf (refused by default: the model would predict garbage)")
    p.add_argument("--traceback", action="store_true", help=argparse.SUPPRESS)
    return p


def main(argv: Optional[List[str]] = None, prog: Optional[str] = None) -> int:
    args = build_parser(prog).parse_args(argv)
    say = print
    try:
        if is_paddle_file(args.src):
            if args.form != "converted" or args.weights != "ema" or args.format or args.ppim:
                raise WeightsError("--form/--weights/--format/--ppim apply to torch -> Paddle only; "
                                   "Paddle -> torch keeps SRC's form")
            result = export_torch_checkpoint(args.src, args.dst, arch=args.arch, layout=args.layout,
                                             force=args.force, verify=args.verify, tol=args.tol, log=say,
                                             allow_nonfinite=args.allow_nonfinite)
        else:
            if args.layout != "official":
                raise WeightsError("--layout applies to Paddle -> torch only; torch -> Paddle detects SRC's layout")
            result = convert_torch_checkpoint(args.src, args.dst, arch=args.arch, form=args.form,
                                              weights=args.weights, fmt=args.format,
                                              layout="ppim" if args.ppim else "ours", force=args.force,
                                              verify=args.verify, tol=args.tol, log=say,
                                              allow_nonfinite=args.allow_nonfinite)
    except (WeightsError, ValueError, KeyError, OSError) as e:
        if args.traceback:
            raise
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"error: {msg}", file=sys.stderr)
        return 1
    say(f"load it with: {result.load_hint}")
    return 0


def run() -> None:  # console entry point
    sys.exit(main())
