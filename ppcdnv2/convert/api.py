"""Whole-file conversions, both directions, family-agnostic; the CLI is a thin layer over these.

``convert_torch_checkpoint``: torch checkpoint (official or a user's trainer file) → Paddle weights.
``export_torch_checkpoint``: Paddle weights → official-layout torch checkpoint.
Both write atomically (the optional ``verify`` runs on the temporary file, so a failed check leaves no
DST) and refuse an existing DST unless ``force``.
"""
from __future__ import annotations

import contextlib
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping, Optional

import numpy as np

from ..registry import Detection, find_family
from ..weights import (TORCH_SUFFIXES, WeightsError, atomic_write, framework_of, load_state_dict,
                       read_paddle_weights, read_safetensors, read_weights, save_weights, state_dict_numpy)
from . import checkpoint_state
from .checks import max_abs_diff
from .torch_file import load_torch_file
from .torch_writer import save_torch_file

FORMATS = ("pdparams", "safetensors")
DEFAULT_TOL = 1e-4


class VerificationError(WeightsError):
    """``--verify`` found the converted model's logits too far from the torch reference's."""


@dataclass
class ConversionResult:
    src: Path
    dst: Path
    detection: Detection
    form: str  # form of what was written
    weights_key: str = ""
    n_tensors: int = 0
    max_diff: Optional[float] = None
    torch_key: Optional[str] = None  # key of the state dict in a written torch file (None: bare)

    @property
    def load_hint(self) -> str:
        if is_paddle_file(self.dst):
            return self.detection.family.paddle_load_hint(self.detection.cfg, self.form, str(self.dst))
        if self.dst.suffix.lower() == ".safetensors":
            return f"torch: model.load_state_dict(safetensors.torch.load_file({str(self.dst)!r}))"
        key = f"[{self.torch_key!r}]" if self.torch_key else ""
        return f"torch: model.load_state_dict(torch.load({str(self.dst)!r}, weights_only=True){key})"


def is_paddle_file(path) -> bool:
    """Whether ``path`` holds Paddle-layout weights: .pdparams, or .safetensors with Paddle's BatchNorm names
    (a torch-layout .safetensors, such as timm's hub files, is a torch checkpoint here)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".pdparams":
        return True
    if suffix != ".safetensors":
        return False
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="np") as f:
            keys = list(f.keys())
    except Exception:  # unreadable: let the Paddle reader report it
        return True
    keys = [k.partition("/")[2] or k for k in keys]  # our training checkpoints group keys as "model/..."
    return framework_of(dict.fromkeys(keys)) == "paddle"


def _read_torch_side(src: Path):
    return read_safetensors(src) if src.suffix.lower() == ".safetensors" else load_torch_file(src)


def _check_paths(src: Path, dst: Path, force: bool):
    if not src.is_file():
        raise WeightsError(f"{src}: no such file")
    if dst.exists() and dst.resolve() == src.resolve():
        raise WeightsError(f"{dst}: DST is SRC; choose another output path")
    if dst.is_dir():
        raise WeightsError(f"{dst}: is a directory; give a file name")
    if dst.exists() and not force:
        raise WeightsError(f"{dst} exists; pass --force to overwrite it")


def _require_torch():
    try:
        import torch  # noqa: F401
    except ImportError:
        raise WeightsError("--verify needs torch (pip install torch); conversion without --verify does not") from None


def check_finite(state: Mapping[str, np.ndarray], where: str) -> None:
    """Refuse weights holding NaN or Inf: a converted model would silently predict garbage."""
    bad = [k for k, v in state.items()
           if np.issubdtype(np.asarray(v).dtype, np.floating) and not np.isfinite(np.asarray(v)).all()]
    if bad:
        more = f" (and {len(bad) - 1} more tensors)" if len(bad) > 1 else ""
        raise WeightsError(f"{where}: {bad[0]!r} holds NaN/Inf values{more}; nothing was written "
                           f"(--allow-nonfinite converts it anyway)")


def _log(log: Optional[Callable], msg: str):
    if log is not None:
        log(msg)


# --- verification ----------------------------------------------------------------------------
def _random_input(cfg, batch: int = 2, seed: int = 0) -> np.ndarray:
    size = getattr(cfg, "input_size", 224)
    return np.random.default_rng(seed).standard_normal((batch, 3, size, size)).astype(np.float32)


def _paddle_logits(model, x: np.ndarray) -> np.ndarray:
    import paddle

    model.eval()
    with paddle.no_grad():
        return model(paddle.to_tensor(x)).numpy()


def reference_logits(detection: Detection, torch_state: Mapping[str, np.ndarray], form: str, x: np.ndarray,
                     as_form: Optional[str] = None):
    """Logits of the family's torch reference holding ``torch_state`` (official layout, strict keys), in
    ``form``; ``as_form``: the form it is then turned into (the condensed output of a training checkpoint)."""
    import torch

    ref = detection.family.build_reference(detection.cfg, form)
    own = ref.state_dict()
    torch_state = detection.family.official_for_reference(torch_state)
    state = {k: torch.from_numpy(np.array(v)) for k, v in torch_state.items()}
    for k in own:  # checkpoints from torch < 0.4.1 have no BatchNorm counters
        if k.endswith("num_batches_tracked") and k not in state:
            state[k] = torch.zeros((), dtype=torch.long)
    ref.load_state_dict(state, strict=True)
    ref = detection.family.reference_in_form(ref, as_form or form)
    ref.eval()
    # one intra-op thread: with Paddle's OpenMP pool in the same process, torch's threads can spin
    # against it (measured 25x slower on 2 busy cores); one small batch does not need them
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.no_grad():
            return ref(torch.from_numpy(x)).numpy()
    finally:
        torch.set_num_threads(threads)


@contextlib.contextmanager
def _verify_runs(det: Detection, dst):
    """A model that cannot even run on the verification input (its configuration was guessed wrong: a field
    the weights do not show, such as the stem) is a --verify failure naming the way out, not a traceback."""
    try:
        yield
    except (RuntimeError, ValueError) as e:
        if isinstance(e, VerificationError):
            raise
        hint = ("; the weights do not show every field of a custom configuration: pass --arch with the "
                "training config (output/<run>/config.yaml) or a .yaml of its fields") if det.source == "inferred" else ""
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise VerificationError(f"--verify could not run {det.label} on a {det.cfg.input_size}x{det.cfg.input_size} "
                                f"input ({first}){hint}; {dst} not written") from None


def _compare(ref_out, ours_out, tol: float, what: str, log) -> float:
    diff = max_abs_diff(ref_out, ours_out)
    _log(log, f"verify: max |torch reference - paddle| of the logits = {diff:.3g} (tolerance {tol:g})")
    if not diff <= tol:  # also catches NaN
        raise VerificationError(f"--verify failed: max abs logit difference {diff:.3g} > {tol:g}; {what} not written")
    return diff


# --- torch -> paddle -------------------------------------------------------------------------
def convert_torch_checkpoint(src, dst, arch: Optional[str] = None, form: str = "converted",
                             weights: str = "ema", fmt: Optional[str] = None, layout: str = "ours",
                             force: bool = False, verify: bool = False, tol: float = DEFAULT_TOL,
                             log: Optional[Callable[[str], None]] = None,
                             allow_nonfinite: bool = False) -> ConversionResult:
    """A torch checkpoint (any form the official code and its users write) → Paddle weights at ``dst``.

    ``form``: "converted" (condensed; a training-form SRC is condensed here) or "train" (keep the
    masks, for fine-tuning/resuming; needs a training-form SRC). ``weights``: "ema" (default, like the
    official ``convert_and_eval.py``; falls back to the plain weights when SRC has no EMA) or "model".
    SRC may be in any torch layout its family reads (the official one, timm's, ...), as a torch file or a
    torch-layout .safetensors. ``layout``: the Paddle layout written, "ours" or one of the family's
    ``paddle_layouts`` (e.g. "ppim"). ``verify``: compare logits with the torch reference (needs torch).
    """
    from ..condense import NotCondensedError

    src, dst = Path(src), Path(dst)
    fmt = fmt or ("safetensors" if dst.suffix.lower() == ".safetensors" else "pdparams")
    if fmt not in FORMATS:
        raise WeightsError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    if form not in ("converted", "train"):
        raise WeightsError(f"--form must be 'converted' or 'train', got {form!r}")
    if layout != "ours" and fmt != "pdparams":
        raise WeightsError(f"--{layout} writes .pdparams only")
    _check_paths(src, dst, force)
    if dst.suffix.lower() in TORCH_SUFFIXES:
        raise WeightsError(f"{dst}: SRC is a torch checkpoint, so DST must be .pdparams or .safetensors "
                           f"(Paddle → torch goes the other way: a .pdparams/.safetensors SRC)")
    if dst.suffix.lower() not in (".pdparams", ".safetensors"):
        raise WeightsError(f"{dst}: DST must end in .pdparams or .safetensors (not {dst.suffix or 'no suffix'!r})")
    if not tol > 0:
        raise WeightsError(f"--tol must be a positive number, got {tol}")
    if verify:
        _require_torch()

    obj = _read_torch_side(src)
    try:
        state, key, args = checkpoint_state(obj, weights, where=str(src))
    except ValueError as e:
        raise WeightsError(str(e)) from None
    if not allow_nonfinite:
        check_finite(state, str(src))
    spec = find_family(state, where=str(src))
    if layout != "ours" and layout not in spec.paddle_layouts:
        raise WeightsError(f"--{layout}: {spec.title} has no {layout} layout"
                           + (f" (it has: {', '.join(spec.paddle_layouts)})" if spec.paddle_layouts else ""))
    try:
        state, src_layout = spec.to_official(state)
    except (KeyError, ValueError) as e:
        raise WeightsError(f"{src}: {e.args[0] if e.args else e}") from None
    det = spec.detect(state, "torch", args=args, arch=arch, where=str(src))
    det.layout = src_layout
    if weights == "ema" and key in ("state_dict", "model") and det.form == "train":
        det.notes.append(f"no EMA weights in {src.name}; used its {key!r}")
    _log_read(log, src, key, det)
    forms = spec.forms_of(det.cfg)
    if form not in forms:
        form = forms[0]  # a one-form model: its only form, whatever --form says
    if det.form == "converted" and form == "train":
        raise WeightsError(f"{src}: holds the converted (condensed) form, which cannot become a training-form "
                           f"model again; use --form converted")
    model = spec.build(det.cfg, form)
    try:
        paddle_state = spec.official_to_paddle(state, model)
    except NotCondensedError as e:
        raise WeightsError(f"{src}: cannot condense: {e}; or convert with --form train") from None
    load_state_dict(model, paddle_state, where=str(src))
    out = state_dict_numpy(model) if layout == "ours" else spec.to_paddle_layout(model, layout)
    result = ConversionResult(src, dst, det, form, key, len(out))

    def write(tmp):
        save_weights(out, tmp, fmt)
        if verify:
            written = read_safetensors(tmp) if fmt == "safetensors" else read_paddle_weights(tmp)
            ours = load_state_dict(spec.build(det.cfg, form), written, where=str(dst))
            x = _random_input(det.cfg)
            with _verify_runs(det, dst):
                ref = reference_logits(det, state, det.form, x, as_form=form)
                result.max_diff = _compare(ref, _paddle_logits(ours, x),
                                       tol, str(dst), log)

    atomic_write(dst, write)
    what = f"{form} form, " if len(forms) > 1 else ""
    _log(log, f"wrote {dst}: {what}{len(out)} tensors{f', {layout} layout' if layout != 'ours' else ''}")
    return result


def _log_read(log, src, key, det: Detection):
    what = f"{key!r}, " if key else ""
    what += f"{det.layout} layout, " if det.layout not in ("official", "ours") else ""
    what += f"{det.form} form, " if len(det.family.forms_of(det.cfg)) > 1 else ""
    _log(log, f"read {src}: {what}{det.label} [{det.source}]")
    for note in det.notes:
        _log(log, f"note: {note}")


# --- paddle -> torch -------------------------------------------------------------------------
def export_torch_checkpoint(src, dst, arch: Optional[str] = None, layout: str = "official", force: bool = False,
                            verify: bool = False, tol: float = DEFAULT_TOL,
                            log: Optional[Callable[[str], None]] = None,
                            allow_nonfinite: bool = False) -> ConversionResult:
    """Paddle weights (either form; ours or another Paddle layout such as ppim's) → a torch checkpoint in
    ``layout`` ("official" or another of the family's ``layouts``, e.g. "timm"), loadable with
    ``torch.load(weights_only=True)`` into that code's model: the official layout in the container the
    upstream code loads (``Family.torch_container``), other layouts as a bare state dict; a .safetensors
    DST is written as safetensors (as timm's hub files). Torch is not needed to write it."""
    src, dst = Path(src), Path(dst)
    _check_paths(src, dst, force)
    if not tol > 0:
        raise WeightsError(f"--tol must be a positive number, got {tol}")
    if dst.suffix.lower() not in TORCH_SUFFIXES + (".safetensors", ".pdparams"):
        raise WeightsError(f"{dst}: DST must end in .pth (or .pt, .pth.tar) or .safetensors "
                           f"(not {dst.suffix or 'no suffix'!r})")
    if dst.suffix.lower() == ".pdparams":
        raise WeightsError(f"{dst}: SRC is Paddle weights, so DST is a torch checkpoint (.pth, or a torch-layout "
                           f".safetensors); to change Paddle formats load and save with ppcdnv2.weights")
    if verify:
        _require_torch()
    state = read_weights(src)  # ours (.pdparams/.safetensors) or ppim's/paddle.save's
    if not allow_nonfinite:
        check_finite(state, str(src))
    spec = find_family(state, where=str(src))
    if not spec.layouts:
        raise WeightsError(f"{src}: {spec.title} weights are not written back to torch (only read from it)")
    if layout not in spec.layouts:
        raise WeightsError(f"--layout {layout}: {spec.title} is written in the layouts {', '.join(spec.layouts)}")
    state, src_layout = spec.paddle_from_external(state)
    det = spec.detect(state, "paddle", arch=arch, where=str(src))
    det.layout = src_layout
    _log_read(log, src, "", det)
    model = load_state_dict(spec.build(det.cfg, det.form), state, where=str(src))
    official = OrderedDict(spec.paddle_to_official(state_dict_numpy(model), model))
    out = OrderedDict(spec.from_official(official, layout, det.cfg))
    as_safetensors = dst.suffix.lower() == ".safetensors"
    container = None if (layout != "official" or as_safetensors) else spec.torch_container
    result = ConversionResult(src, dst, det, det.form, "", len(out), torch_key=container)

    def write(tmp):
        if as_safetensors:
            save_weights(out, tmp, "safetensors")
        else:
            save_torch_file({container: out} if container else out, tmp)
        if verify:
            if as_safetensors:
                written = read_safetensors(tmp)
            else:
                import torch

                obj = torch.load(tmp, map_location="cpu", weights_only=True)
                written = {k: v.numpy() for k, v in (obj[container] if container else obj).items()}
            x = _random_input(det.cfg)
            with _verify_runs(det, dst):
                ref = reference_logits(det, spec.to_official(written)[0], det.form, x)
                result.max_diff = _compare(ref, _paddle_logits(model, x), tol, str(dst), log)

    atomic_write(dst, write)
    what = f"{det.form} form " if len(spec.forms_of(det.cfg)) > 1 else ""
    _log(log, f"wrote {dst}: {what}in the {layout} torch layout, {len(out)} tensors")
    return result


__all__ = ["convert_torch_checkpoint", "export_torch_checkpoint", "reference_logits",
           "ConversionResult", "VerificationError", "is_paddle_file", "DEFAULT_TOL"]
