"""onnxruntime session settings for our exports (imports onnxruntime only, never Paddle).

``OnnxPredictor`` and the benchmark's onnxruntime engines build their sessions here, so the benchmark
times exactly what ``tools/infer.py`` runs. Measured on 2 shared cores (``benchmarks/benchmark.py``):

* graph optimisation ``ORT_ENABLE_ALL`` (onnxruntime's default, set explicitly): the graph rewrites of
  ``ppcdnv2.deploy.onnx_opt`` target its blocked NCHWc kernels; with ``ORT_ENABLE_EXTENDED`` the rewritten
  CondenseNetV2-C took 1.4× the CPU time (batch 1 and 2, 1 thread);
* one inter-op thread, sequential execution: the graphs are chains, parallel execution only adds overhead;
* ``session.intra_op.allow_spinning`` off when ``threads > 1``: a spinning worker that the OS has descheduled
  (any other busy process on the machine) stalls every one of the ~700 operators of a CondenseNetV2 run at
  its barrier; without spinning the workers sleep between operators. With 1 thread there is no pool and the
  setting does nothing. ``spinning=True`` (``tools/infer.py --spin``) restores onnxruntime's default: on an
  idle machine 1.25-1.4x faster with 2 threads (CondenseNetV2-C, batch 1: 10.5 vs 14.3 ms), slower when other
  work takes a core.
* memory pattern and the CPU arena stay on (onnxruntime's defaults; the memory pattern off measured 3 % slower).
"""
from __future__ import annotations

from typing import Optional


def session_options(threads: int = 2, spinning: Optional[bool] = None, profile_prefix: Optional[str] = None):
    """``onnxruntime.SessionOptions`` with ``threads`` intra-op threads and the settings above."""
    import onnxruntime as ort

    threads = max(1, int(threads))
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    if spinning is None:
        spinning = threads == 1
    opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    if profile_prefix:
        opts.enable_profiling = True
        opts.profile_file_prefix = str(profile_prefix)
    return opts


#: images per onnxruntime call when a larger batch is given (see :class:`OrtRunner`)
DEFAULT_MICRO_BATCH = 2


class OrtRunner:
    """``float32 [N, C, H, W] → first output`` on an onnxruntime CPU session, batches cut into micro-batches.

    Micro-batches: CondenseNetV2's feature maps of one or two images stay in the CPU caches between its
    ~700 operators, those of 16 do not; on CondenseNetV2-C (1 thread, AMD EPYC) 8 calls of 2 images ran
    ~35 % faster than one call of 16 (the official-layout ONNX: ~18 %), with the same logits (each image's
    computation does not depend on the others). ``micro_batch=None`` (or 0) runs the whole batch at once.
    """

    def __init__(self, path, threads: int = 2, spinning: Optional[bool] = None,
                 micro_batch: Optional[int] = DEFAULT_MICRO_BATCH, providers=None, session=None):
        import onnxruntime as ort

        self.session = session or ort.InferenceSession(str(path), session_options(threads, spinning),
                                                       providers=providers or ["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name
        self.micro_batch = int(micro_batch) if micro_batch else 0

    def __call__(self, x):
        import numpy as np

        n, step = len(x), self.micro_batch
        if not step or n <= step:
            return self.session.run(None, {self.input_name: x})[0]
        return np.concatenate([self.session.run(None, {self.input_name: x[i:i + step]})[0] for i in range(0, n, step)])
