"""Process-wide memory settings of a CPU training job."""

from __future__ import annotations

import ctypes
import platform
import sys

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc mallopt parameters (malloc.h)


def retain_freed_cpu_memory() -> bool:
    """Make glibc keep freed large blocks for reuse; True if this process's malloc took it.

    Why: a Swin-B MoE layer's expert gradients are 32 MiB tensors (8 x 2048 x 512 fp32), and
    glibc serves every request of that size with a fresh mmap. With gradients set to None each
    step, each of them comes back as new pages that the kernel faults in and zeroes: measured
    on the CPU benchmark (bench/train_step.py, batch 2) that was most of the MoE's cost over a
    dense Swin-B. Raising the mmap threshold to 64 MiB and the trim threshold to 2 GiB makes
    such blocks come from the heap and be reused, as PyTorch's caching allocator does on GPUs;
    the price is that the process keeps up to 2 GiB of freed memory. It affects every
    allocation of the process, so the training verbs call it on CPU before building the model
    (msgfm.cli). On a non-glibc system it does nothing and returns False.
    """
    if not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc":
        return False
    mallopt = ctypes.CDLL(None).mallopt
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, 64 * 2**20)) and bool(
        mallopt(M_TRIM_THRESHOLD, 2**31 - 1)
    )
