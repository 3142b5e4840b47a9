"""Keep freed activation buffers in the process instead of handing them back to the OS.

A spiking UNet allocates and frees activation-sized tensors many times per call (T steps in
several passes, a running mean and a spike buffer per site). With glibc's defaults large blocks
are returned to the OS when freed (mmap, heap trimming) and page-faulted back in on the next
allocation: about 70,000 page faults per UNet call at batch 16 on the reference model, time that
profiles as "convolution" because the convolution is what first writes the fresh pages.
Raising the mmap and trim thresholds keeps those pages mapped for reuse. This is a process-wide
allocator setting, so the sampling and benchmark commands apply it once at start-up, to the ANN
and the SNN alike. It has no effect (and reports False) outside glibc.
"""

from __future__ import annotations

import ctypes
import ctypes.util

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
MMAP_THRESHOLD_BYTES = 32 * 2**20  # glibc's largest accepted value on 64-bit
TRIM_THRESHOLD_BYTES = 2**30


def retain_freed_memory() -> bool:
    """Tell glibc to keep freed blocks below 32 MiB in the heap and not to trim below 1 GiB free.

    Returns whether both settings were accepted.
    """
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES))
