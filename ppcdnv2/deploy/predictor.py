"""Run a deployed model: Paddle Inference (CPU, oneDNN or GPU), onnxruntime, or the dygraph model.

Every predictor is a callable ``float32 [N, 3, H, W] numpy → logits [N, classes] numpy`` with a
``meta`` (``ExportMeta`` or None) so callers do not care which engine runs. ``load_predictor`` picks
one from a path: an export prefix / ``.json`` / ``.pdmodel`` / ``.pdiparams``, an ``.onnx`` file,
or a weights file (``.pdparams``/``.safetensors``/official ``.pth``) plus a model name.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np

from .export import META_SUFFIX, ExportError, ExportMeta, Preprocess, find_exported
from .ort_session import DEFAULT_MICRO_BATCH
from .params_check import check_params_file

from ..weights import has_gpu as gpu_available, is_weights_file

BACKENDS = ("auto", "paddle", "onednn", "onnx", "dygraph")


def set_threads(n: int) -> None:
    """Math-library threads for Paddle dygraph (Paddle leaves OMP_NUM_THREADS at 1 unless told)."""
    from paddle.base import core

    core.set_num_threads(int(n))


def _first_line(e: Exception) -> str:
    """The line of a (often multi-line, "In user code: ...") engine error that says what went wrong."""
    lines = [l.strip() for l in str(e).splitlines() if l.strip()]
    named = [l for l in lines if "Error" in l or "error" in l]
    return ((named or lines or [type(e).__name__])[0])[:200]


def _run_failed(what, x, e: Exception) -> "ExportError":
    return ExportError(f"{what}: the model failed to run on a batch of shape {list(np.shape(x))} ({_first_line(e)}); "
                       f"a corrupt export? export it again")


def _check_input(x) -> np.ndarray:
    x = np.ascontiguousarray(x, dtype=np.float32)
    if x.ndim != 4 or x.shape[1] != 3:
        raise ValueError(f"expected a float32 batch [N, 3, H, W], got shape {list(x.shape)}")
    return x


class PaddlePredictor:
    """Paddle Inference on exported files; ``device="gpu"`` needs a CUDA build, ``onednn`` is CPU only."""

    def __init__(self, path, device: str = "cpu", threads: int = 2, onednn: bool = False,
                 meta: Optional[ExportMeta] = None):
        from paddle import inference

        files = find_exported(path)
        check_params_file(files.params_file)  # Paddle trusts the sizes in it: a flipped bit can cost gigabytes
        self._files = files
        self.meta = meta or (ExportMeta.load(files.meta_file) if files.meta_file else None)
        config = inference.Config(str(files.model_file), str(files.params_file))
        if device == "gpu":
            if not gpu_available():
                raise RuntimeError("device='gpu' but this Paddle has no CUDA device")
            config.enable_use_gpu(256, 0)
        elif device == "cpu":
            config.disable_gpu()
            config.set_cpu_math_library_num_threads(int(threads))
            if onednn:
                config.enable_onednn()
            else:
                config.disable_onednn()
        else:
            raise ValueError(f"device must be 'cpu' or 'gpu', got {device!r}")
        config.switch_ir_optim(True)
        config.disable_glog_info()
        self.name = f"paddle-inference-{device}" + ("-onednn" if onednn and device == "cpu" else "")
        try:
            self._predictor = inference.create_predictor(config)
        except Exception as e:  # a corrupt program or parameters file: Paddle's message names neither
            first = _first_line(e)
            raise ExportError(f"{files.model_file} / {files.params_file.name}: not a loadable Paddle Inference "
                              f"model ({first}); export it again") from None
        self._input = self._predictor.get_input_handle(self._predictor.get_input_names()[0])
        self._output = self._predictor.get_output_handle(self._predictor.get_output_names()[0])

    def clone(self) -> "PaddlePredictor":
        """A predictor sharing the loaded weights, for another thread (Paddle Inference's ``clone``)."""
        twin = object.__new__(PaddlePredictor)
        twin.meta, twin.name, twin._files = self.meta, self.name, self._files
        twin._predictor = self._predictor.clone()
        twin._input = twin._predictor.get_input_handle(twin._predictor.get_input_names()[0])
        twin._output = twin._predictor.get_output_handle(twin._predictor.get_output_names()[0])
        return twin

    def __call__(self, x) -> np.ndarray:
        x = _check_input(x)
        self._input.reshape(list(x.shape))
        self._input.copy_from_cpu(x)
        try:
            self._predictor.run()
        except Exception as e:  # a damaged program can load and fail here, with a multi-line message
            raise _run_failed(f"{self._files.model_file} / {self._files.params_file.name}", x, e) from None
        return self._output.copy_to_cpu()


class OnnxPredictor:
    """onnxruntime on an exported ``.onnx`` (CPU execution provider unless CUDA is asked for and present).

    Session settings: ``ppcdnv2.deploy.ort_session.session_options`` (``spinning=None``: worker threads
    sleep between operators when ``threads > 1``, robust on a shared machine; ``True``: onnxruntime's default,
    faster where the threads have idle cores to themselves: CondenseNetV2-C, 2 threads, batch 1 10.5 vs 14.3
    ms on an idle machine, slower when other work takes a core).
    On CPU a batch larger than ``micro_batch`` images is run ``micro_batch`` images at a time (cache-resident
    feature maps, see ``ort_session.OrtRunner``; the logits do not change); ``None`` runs it whole.
    """

    def __init__(self, path, threads: int = 2, device: str = "cpu", meta: Optional[ExportMeta] = None,
                 spinning: Optional[bool] = None, micro_batch: Optional[int] = DEFAULT_MICRO_BATCH):
        try:
            import onnxruntime as ort
        except ImportError:
            raise RuntimeError("the onnx backend needs onnxruntime: pip install onnxruntime") from None
        from .ort_session import OrtRunner, session_options

        path = Path(path)
        if not path.is_file():
            raise ExportError(f"{path}: no such ONNX file")
        meta_file = path.with_suffix(META_SUFFIX)
        self.meta = meta or (ExportMeta.load(meta_file) if meta_file.is_file() else None)
        opts = session_options(threads, spinning)  # settings and why: ppcdnv2.deploy.ort_session
        providers = ["CPUExecutionProvider"]
        if device == "gpu":
            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise RuntimeError("device='gpu' but onnxruntime has no CUDAExecutionProvider")
            providers.insert(0, "CUDAExecutionProvider")
        self.name = f"onnxruntime-{device}"
        try:
            self._session = ort.InferenceSession(str(path), opts, providers=providers)
            self.spinning = opts.get_session_config_entry("session.intra_op.allow_spinning") == "1"
        except Exception as e:  # InvalidProtobuf and friends: a corrupt or truncated file
            first = _first_line(e)
            raise ExportError(f"{path}: not a readable ONNX model ({first}); export it again") from None
        self._path = path
        self._input = self._session.get_inputs()[0].name
        self._run = OrtRunner(path, micro_batch=micro_batch if device == "cpu" else None, session=self._session)

    def __call__(self, x) -> np.ndarray:
        x = _check_input(x)
        try:
            return self._run(x)
        except Exception as e:  # onnxruntime's own exception types (InvalidArgument, Fail, ...)
            raise _run_failed(self._path, x, e) from None


class DygraphPredictor:
    """The Paddle model itself (eval mode, no grad): the reference the exports are checked against."""

    def __init__(self, model, meta: Optional[ExportMeta] = None):
        self.model, self.meta, self.name = model.eval(), meta, "paddle-dygraph"

    def __call__(self, x) -> np.ndarray:
        import paddle

        with paddle.no_grad():
            return self.model(paddle.to_tensor(_check_input(x))).numpy()


class ParallelPredictor:
    """Split each batch over ``len(predictors)`` threads, one predictor (one math thread) each.

    Paddle parallelises little inside an op on CPU (only its BLAS calls, which are small here), but
    its kernels release the GIL, so halves of a batch on two threads run truly concurrently: on 2
    cores this nearly doubles batch throughput. Batches of one go to the first predictor alone.
    """

    def __init__(self, predictors):
        from concurrent.futures import ThreadPoolExecutor

        self.predictors = list(predictors)
        first = self.predictors[0]
        self.meta = getattr(first, "meta", None)
        self.name = f"{first.name}-x{len(self.predictors)}"
        self._pool = ThreadPoolExecutor(max_workers=len(self.predictors), thread_name_prefix="ppcdnv2-infer")

    def __call__(self, x) -> np.ndarray:
        x = _check_input(x)
        if len(x) < 2 or len(self.predictors) == 1:
            return self.predictors[0](x)
        chunks = [c for c in np.array_split(x, min(len(x), len(self.predictors))) if len(c)]
        futures = [self._pool.submit(p, c) for p, c in zip(self.predictors, chunks)]
        return np.concatenate([f.result() for f in futures])

    def close(self):
        self._pool.shutdown(wait=True)


def parallel(predictor, workers: int):
    """``predictor`` run on ``workers`` threads (clones for Paddle Inference, shared model for dygraph)."""
    if workers <= 1:
        return predictor
    if isinstance(predictor, PaddlePredictor):
        return ParallelPredictor([predictor] + [predictor.clone() for _ in range(workers - 1)])
    if isinstance(predictor, DygraphPredictor):
        return ParallelPredictor([predictor] * workers)
    raise TypeError(f"{type(predictor).__name__} cannot run on worker threads")


def load_converted_model(name: str, weights=None):
    """The deployment form of model ``name`` (converted where the family condenses) holding ``weights``.

    ``name`` is a registry name or alias in either form (``cdnv2_c`` or ``converted_cdnv2_c``); the class
    count follows the weights' classifier. Any weights file ``ppcdnv2.weights`` reads is accepted
    (ours, official or other torch layouts, ppim's); training-form weights are condensed.
    """
    from ..registry import model_entry
    from ..weights import load_model

    entry = model_entry(name)  # clear KeyError for unknown names
    family = entry.family
    if not family.single_output:
        raise ValueError(f"{name}: {family.title} predicts step by step; classify with the model's own "
                         f"predict() (ppcdnv2.create_model({name!r}, pretrained=...).predict(x, budget=...)): "
                         f"infer.py does not run it yet")
    form = "converted" if "converted" in family.forms else "train"
    cfg = family.preset(entry.preset)
    if weights is None:
        return family.build(cfg, form).eval()
    path = Path(weights)
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    return load_model(path, cfg, form, classes_from_weights=True)[0].eval()


def default_meta(name: str, model) -> ExportMeta:
    num_classes = int(getattr(model.cfg, "num_classes", 1000))
    pre = Preprocess.for_model(model)
    return ExportMeta(model=name, num_classes=num_classes, input_size=pre.crop, preprocess=pre,
                      labels="imagenet" if num_classes == 1000 else None)


def _onnx_beside(path: Path) -> Optional[Path]:
    """The ``<prefix>.onnx`` of an export given by its prefix or one of its files, if it exists and onnxruntime
    can run it."""
    try:
        prefix = find_exported(path).model_file.with_suffix("")
    except ExportError:
        return None
    onnx_file = prefix.with_name(prefix.name + ".onnx")
    if not onnx_file.is_file():
        return None
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return None
    return onnx_file


def load_predictor(path, model_name: Optional[str] = None, backend: Optional[str] = None,
                   device: str = "cpu", threads: int = 2, workers: int = 1, spinning: Optional[bool] = None):
    """A predictor for ``path``. ``backend`` "auto" (default): a weights file runs in dygraph, an ``.onnx`` in
    onnxruntime, and an export prefix in onnxruntime when its ``<prefix>.onnx`` exists and onnxruntime is
    installed (the fastest CPU engine here: see the README's benchmark), else in Paddle Inference.

    ``workers`` > 1 (Paddle backends) splits batches over that many threads, each with
    ``threads // workers`` math threads (see ``ParallelPredictor``); onnxruntime parallelises its ops itself.
    ``spinning`` (onnxruntime): see :class:`OnnxPredictor`.
    """
    p = Path(path)
    is_weights = is_weights_file(p)
    if backend in (None, "auto"):
        backend = "dygraph" if is_weights else "onnx" if p.suffix == ".onnx" else "paddle"
        if backend == "paddle" and device == "cpu" and workers <= 1:
            onnx_file = _onnx_beside(p)
            if onnx_file is not None:
                backend, p = "onnx", onnx_file
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if is_weights != (backend == "dygraph"):
        raise ValueError(f"{path}: backend {backend!r} does not run "
                         f"{'a weights file' if is_weights else 'an exported model'}")
    if workers > 1 and backend == "onnx":
        raise ValueError("workers > 1 is for the Paddle backends; onnxruntime uses its own threads")
    threads = max(1, threads // max(1, workers))
    if backend == "dygraph":
        if not model_name:
            raise ValueError(f"{path}: a weights file needs the model name (e.g. cdnv2_c)")
        set_threads(threads)
        if device == "gpu":
            import paddle

            paddle.set_device("gpu")
        model = load_converted_model(model_name, p)
        predictor = DygraphPredictor(model, default_meta(model_name, model))
    elif backend == "onnx":
        return OnnxPredictor(p, threads=threads, device=device, spinning=spinning)
    else:
        predictor = PaddlePredictor(p, device=device, threads=threads, onednn=backend == "onednn")
    return parallel(predictor, workers)
