"""Process settings that decide how fast Paddle trains on a CPU; each measured, each with an opt-out.

1. MKL on AMD (at ``import ppcdnv2``). Paddle's CPU wheels (3.x included) bundle MKL 2019.0.5, which picks
   its kernels by CPU *vendor*: on AMD it runs the generic SSE ones even where AVX2/AVX-512 are there.
   Paddle's CPU convolutions are im2col/col2im + MKL sgemm, so this decides the speed of the training
   form: on an AMD EPYC (Zen 4) a 1024² sgemm goes from 9.7 to 22 GMAC/s and one SGD step of
   CondenseNetV2-A (batch 16, 224², 1 thread) from 0.76 to 0.48 s. That MKL honours
   ``MKL_DEBUG_CPU_TYPE=5`` (use the AVX2 kernels), read at its first call, so it is set at import; it
   is not set over a value the user gave, nor on CPUs without AVX2 and FMA (the kernels would fault
   there); later MKLs ignore it.
2. glibc malloc (at the first training-form forward on CPU, :func:`keep_freed_memory`). Paddle's CPU
   allocator hands every tensor of more than glibc's (adaptive, at most 32 MiB) mmap threshold to a
   fresh ``mmap`` and gives it back on free, and trims freed heap back to the system: the next step
   page-faults all of it in again, zero-filled. For CondenseNetV2-A's 112² feature maps that made a
   BatchNorm forward 7.4 instead of 1.0 ms; the training step above went from 0.40 to 0.35 s. Serving
   large blocks from the heap and keeping up to 1 GiB of freed heap removes that; the process keeps its
   peak memory, as PyTorch's or Paddle's own GPU caching allocators do.

``PPCDNV2_CPU_TUNING=0`` turns both off. Rounding differs from the SSE path in the last bits, as between
any two BLAS kernels; malloc settings do not touch arithmetic.
"""
from __future__ import annotations

import ctypes
import os
import sys
from pathlib import Path
from typing import Mapping, Optional

MKL_VAR = "MKL_DEBUG_CPU_TYPE"
OPT_OUT = "PPCDNV2_CPU_TUNING"
AVX2_TYPE = "5"
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters
HEAP_LIMIT = 1 << 30  # blocks up to this size from the heap; freed heap kept up to this size
_malloc_state = {"done": False, "tuned": False}


def opted_out(environ: Mapping[str, str]) -> bool:
    return environ.get(OPT_OUT, "1").strip().lower() in ("0", "false", "no", "off")


def mkl_cpu_type(cpuinfo: str, environ: Mapping[str, str]) -> Optional[str]:
    """The ``MKL_DEBUG_CPU_TYPE`` to set for this ``/proc/cpuinfo`` text and environment, or None."""
    if MKL_VAR in environ or opted_out(environ):
        return None
    vendor, flags = None, set()
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "vendor_id" and vendor is None:
            vendor = value.strip()
        elif key == "flags" and not flags:
            flags = set(value.split())
        if vendor is not None and flags:
            break
    if vendor in ("AuthenticAMD", "HygonGenuine") and {"avx2", "fma"} <= flags:
        return AVX2_TYPE
    return None


def enable_mkl_avx2_on_amd() -> bool:
    """Set ``MKL_DEBUG_CPU_TYPE`` per :func:`mkl_cpu_type` (Linux; elsewhere nothing). True if set."""
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return False
    value = mkl_cpu_type(cpuinfo, os.environ)
    if value is None:
        return False
    os.environ[MKL_VAR] = value
    return True


def keep_freed_memory() -> bool:
    """glibc only, once per process: large blocks from the heap, freed heap kept (see the module doc).

    True if the settings were applied by this call. Later calls do nothing (a user's own ``mallopt``
    afterwards stands).
    """
    if _malloc_state["done"]:
        return False
    _malloc_state["done"] = True
    if opted_out(os.environ) or not sys.platform.startswith("linux"):
        return False
    try:
        import platform

        if platform.libc_ver()[0] != "glibc":
            return False
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError, ValueError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    # older glibcs cap the mmap threshold at 32 MiB: fall back to that
    if not (mallopt(M_MMAP_THRESHOLD, HEAP_LIMIT) or mallopt(M_MMAP_THRESHOLD, 32 << 20)):
        return False
    mallopt(M_TRIM_THRESHOLD, HEAP_LIMIT)
    _malloc_state["tuned"] = True
    return True
