"""ort-cpu's memory defaults and the one process-wide setting behind them.

Measured on Wan 2.1 widths (benchmarks/results/runtime_memory.md): a stream's peak was ONNX Runtime's
working memory, not its weights or state. Three things held it up, and each has a runner option:
    arena           ORT's CPU arena keeps every block it ever handed out, for the session's life, per session
                    (four sessions for Wan): off by default, tensors are allocated and freed as ORT plans
    mem_pattern     ORT's memory patterns allocate one block for a call's planned tensors up front: off by
                    default (the planner cannot reuse buffers across Wan's symbolic shapes, so the block is
                    the sum of many tensors, not their peak)
    mmap_threshold  glibc serves allocations below its threshold (which grows to 32 MB) from the heap, and a
                    freed tensor there stays resident behind live ones; with the threshold at 1 MiB every
                    tensor is its own mapping, returned to the system when freed (`mallopt`, process-wide,
                    glibc only; 0 leaves glibc's own). Default 1 MiB.
and the stream's call size (runtime/runner.py's `Stream`, option call_steps): a causal graph's working memory
grows with the steps of a call, so a stream runs its stateful graphs one step of the stream axis at a time
(a latent frame; Wan's encoder: 4 frames), as diffusers does, and gives the same outputs.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

# ort-cpu's defaults for the memory options (ort_session.session_options reads arena, mem_pattern and
# prepacking; ORT's own defaults, which ort-cuda keeps, are all True).
CPU_MEMORY_DEFAULTS = {"arena": False, "mem_pattern": False, "prepacking": True, "mmap_threshold": 1 << 20,
                       "call_steps": 1, "bind_state": True}
M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter number (malloc.h)
_APPLIED: dict[str, int] = {}


def set_mmap_threshold(threshold: int) -> bool:
    """Serve allocations of `threshold` bytes or more with their own mappings (glibc's mallopt); the
    lowest threshold any runner of this process asked for wins. False where there is no glibc (musl,
    macOS): nothing is changed there."""
    if threshold <= 0 or not sys.platform.startswith("linux"):
        return False
    if _APPLIED.get("threshold", threshold + 1) <= threshold:
        return True
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc
        return False
    if mallopt(M_MMAP_THRESHOLD, int(threshold)) != 1:
        return False
    _APPLIED["threshold"] = int(threshold)
    return True
