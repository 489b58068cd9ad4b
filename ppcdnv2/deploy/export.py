"""Export a (converted) model for deployment: Paddle Inference files and ONNX.

``export_inference`` traces the model with ``paddle.jit`` over an input of any batch and image size
(``InputSpec([None, 3, None, None])``) and saves what Paddle writes: with Paddle 3's PIR that is
``<prefix>.json`` + ``<prefix>.pdiparams`` (older Paddle: ``.pdmodel``). A ``<prefix>.meta.json``
beside them records the model name, class count and evaluation preprocessing so ``tools/infer.py``
needs nothing else. ``export_onnx`` traces again with ONNX-convertible ops only
(``ppcdnv2.layers.condensed.portable_ops``) and converts that trace with ``paddle2onnx``.

The ImageNet models end in a fixed 7x7 average pool (as upstream), so beyond the batch size the
image side may vary within 224..255 (any side whose /32 feature map is 7); other sizes fail in ``fc``.
"""
from __future__ import annotations

import contextlib
import copy
import json
import os
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional, Tuple

from ..registry import IMAGENET_MEAN, IMAGENET_STD
from ..weights import atomic_write

MODEL_SUFFIXES = (".json", ".pdmodel")
PARAMS_SUFFIX = ".pdiparams"
META_SUFFIX = ".meta.json"


def int8_path(onnx_path) -> Path:
    """Where ``--quantize int8`` writes beside a float32 ``X.onnx``: ``X.int8.onnx``."""
    p = Path(onnx_path)
    return p.with_name((p.name[:-len(".onnx")] if p.name.endswith(".onnx") else p.name) + ".int8.onnx")


class ExportError(RuntimeError):
    """An export or a lookup of exported files failed; the message names the file."""


@dataclass
class Preprocess:
    """Evaluation preprocessing (upstream's): resize the shorter side, center crop, normalise."""

    resize: int = 256
    crop: int = 224
    interpolation: str = "bicubic"
    mean: Tuple[float, ...] = IMAGENET_MEAN
    std: Tuple[float, ...] = IMAGENET_STD
    backend: str = "pil"  # image decoding/resizing: "pil" (the official evaluation's) or "cv2"

    @classmethod
    def for_model(cls, model) -> "Preprocess":
        """The evaluation transform the weights of ``model`` (a model or a registered name) were published
        with: its family's ``WeightsInfo`` (e.g. bilinear for CondenseNetV2-C, bicubic otherwise; CIFAR
        models at 32x32 with CIFAR-10 statistics)."""
        from ..registry import family_of, preset

        cfg = preset(model) if isinstance(model, str) else model.cfg
        info = family_of(cfg).weights_info(cfg)
        return cls(resize=info.resize, crop=info.crop, interpolation=info.interpolation, mean=tuple(info.mean),
                   std=tuple(info.std))


@dataclass
class ExportMeta:
    """What a deployed model needs besides its program: its name, classes, input and preprocessing."""

    model: str
    num_classes: int
    input_size: int = 224
    preprocess: Preprocess = field(default_factory=Preprocess)
    labels: Optional[str] = "imagenet"  # "imagenet" (the packaged names) or None (indexes only)
    quantization: Optional[dict] = None  # int8 exports: scheme and calibration (ppcdnv2.deploy.quantize)

    def save(self, path) -> None:
        _atomic_text(Path(path), json.dumps(asdict(self), indent=2) + "\n")

    @classmethod
    def load(cls, path) -> "ExportMeta":
        try:
            d = json.loads(Path(path).read_text())
            d["preprocess"] = Preprocess(**{k: tuple(v) if isinstance(v, list) else v
                                            for k, v in d.get("preprocess", {}).items()})
            return cls(**d)
        except (OSError, ValueError, TypeError, AttributeError) as e:  # AttributeError: JSON, but not an object
            raise ExportError(f"{path}: not a readable export metadata file ({e})") from None


@dataclass
class ExportedFiles:
    model_file: Path
    params_file: Path
    meta_file: Optional[Path] = None

    @property
    def prefix(self) -> Path:
        return self.params_file.with_suffix("")


def _atomic_text(path: Path, text: str) -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def find_exported(path) -> ExportedFiles:
    """The files of an export from its prefix or any of its files (``x``, ``x.json``, ``x.pdiparams``)."""
    p = Path(path)
    prefix = p
    for suffix in (*MODEL_SUFFIXES, PARAMS_SUFFIX, META_SUFFIX):
        if p.name.endswith(suffix):
            prefix = p.with_name(p.name[: -len(suffix)])
            break
    params = prefix.with_name(prefix.name + PARAMS_SUFFIX)
    models = [prefix.with_name(prefix.name + s) for s in MODEL_SUFFIXES]
    model = next((m for m in models if m.is_file()), None)
    if model is None or not params.is_file():
        raise ExportError(f"{path}: no exported Paddle model there (looked for {models[0].name} or "
                          f"{models[1].name}, and {params.name}, in {prefix.parent})")
    meta = prefix.with_name(prefix.name + META_SUFFIX)
    return ExportedFiles(model, params, meta if meta.is_file() else None)


# Paddle's C++ log line on tracing a model with an in-place op (our condensed blocks' ``index_add_``, ReXNet's
# residual slice): harmless, printed on every export; dropped from stderr, everything else is passed on
_TRACE_NOISE = ("Paddle static graph(PIR) not support input out tensor",)


@contextlib.contextmanager
def _native_stderr_without(patterns):
    """Run the body with file descriptor 2 captured (C++ glog writes there, not to ``sys.stderr``), then
    write back every captured line that contains none of ``patterns``."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as buf:
        os.dup2(buf.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            buf.seek(0)
            kept = [line for line in buf.read().decode(errors="replace").splitlines(keepends=True)
                    if not any(p in line for p in patterns)]
            if kept:
                sys.stderr.write("".join(kept))
                sys.stderr.flush()


def export_inference(model, prefix, meta: Optional[ExportMeta] = None) -> ExportedFiles:
    """``paddle.jit.save`` of ``model`` (an eval-mode copy of it) with a dynamic batch and image size.

    Files are written in a temporary folder and moved into place, so an interrupted export never
    leaves a half-written model under ``prefix``.
    """
    import paddle

    prefix = Path(prefix)
    prefix.parent.mkdir(parents=True, exist_ok=True)
    twin = copy.deepcopy(model).eval()  # to_static rebinds forward: keep the caller's model dygraph
    spec = [paddle.static.InputSpec([None, 3, None, None], "float32", "x")]
    with tempfile.TemporaryDirectory(dir=prefix.parent, prefix=f".{prefix.name}.export.") as tmp:
        tmp_prefix = os.path.join(tmp, "model")
        with _native_stderr_without(_TRACE_NOISE):
            paddle.jit.save(paddle.jit.to_static(twin, input_spec=spec, full_graph=True), tmp_prefix)
        if meta is not None:
            meta.save(tmp_prefix + META_SUFFIX)
        written = find_exported(tmp_prefix)
        for src in (written.model_file, written.params_file, written.meta_file):
            if src is not None:
                os.replace(src, prefix.with_name(prefix.name + src.name[len("model"):]))
    return find_exported(prefix)


_P2O_SCRIPT = ("import sys, paddle2onnx; "
               "paddle2onnx.export(sys.argv[1], sys.argv[2], save_file=sys.argv[3], opset_version=int(sys.argv[4]), "
               "auto_upgrade_opset=True, enable_onnx_checker=True, verbose=False)")


def paddle_to_onnx(exported, onnx_path, opset: int = 13) -> Path:
    """Convert Paddle Inference files to ONNX with ``paddle2onnx``, in a child process.

    paddle2onnx aborts its whole process on an op it cannot convert; the child keeps that from
    killing the caller and lets the error name the model file.
    """
    try:
        import paddle2onnx  # noqa: F401
    except ImportError:
        raise ExportError("ONNX export needs paddle2onnx: pip install paddle2onnx") from None
    files = exported if isinstance(exported, ExportedFiles) else find_exported(exported)
    onnx_path = Path(onnx_path)
    onnx_path.parent.mkdir(parents=True, exist_ok=True)
    def write(tmp):
        proc = subprocess.run([sys.executable, "-c", _P2O_SCRIPT, str(files.model_file), str(files.params_file),
                               tmp, str(int(opset))], capture_output=True, text=True)
        if proc.returncode != 0 or os.path.getsize(tmp) == 0:
            lines = [l for l in (proc.stdout + proc.stderr).splitlines() if "ERROR" in l or "Error" in l]
            raise ExportError(f"paddle2onnx failed on {files.model_file} (exit {proc.returncode}): "
                              + ("; ".join(lines[-3:]) or "no output"))

    atomic_write(onnx_path, write)
    return onnx_path


def export_onnx(model, onnx_path, meta: Optional[ExportMeta] = None, opset: int = 13, optimize: bool = True) -> Path:
    """ONNX file of ``model``: traced with ONNX-convertible ops (``portable_ops``), then ``paddle2onnx``, then
    (``optimize``, the default) the exact graph rewrites of ``ppcdnv2.deploy.onnx_opt`` for onnxruntime
    (BatchNorm folded through the channel shuffles and activations moved next to their convolutions, the
    folded SFR as an in-place MatMul, small grouped convolutions in forms onnxruntime blocks, Identity
    nodes dropped); ``optimize=False`` keeps paddle2onnx's graph."""
    from ..layers.condensed import portable_ops

    onnx_path = Path(onnx_path)
    onnx_path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=onnx_path.parent, prefix=f".{onnx_path.name}.trace.") as tmp:
        with portable_ops():
            files = export_inference(model, Path(tmp) / "portable")
        if optimize:
            from .onnx_opt import optimize_onnx_file

            raw = paddle_to_onnx(files, Path(tmp) / "raw.onnx", opset)
            atomic_write(onnx_path, lambda dst: optimize_onnx_file(raw, dst))
        else:
            paddle_to_onnx(files, onnx_path, opset)
    if meta is not None:
        meta.save(onnx_path.with_suffix(META_SUFFIX))
    return onnx_path
