"""glibc's heap held steady for CPU timing: freed memory stays in the process instead of going back to the OS.

By default glibc returns a large free block at the top of its heap to the kernel (trimming) and
serves big allocations with a fresh ``mmap``; memory handed back must be faulted in again, page
by page, when it is next written. A training step frees and re-allocates every gradient
(``zero_grad(set_to_none=True)``), so whether a step pays those faults depends on where its
blocks lie in the heap, and, when two models share one process (the side-by-side benchmark), on
the other model's allocations too: a ViT-XL decoder step re-faulted its 1.6 GB of gradients
(400,000 faults, over half a second of system time) in some rounds and not in others, on either
side (docs/benchmarks.md). `keep_freed_memory` switches both returns off (documented ``mallopt``
settings), so that after a warm-up every side runs on pages it already holds.
"""
from __future__ import annotations

import contextlib
import ctypes
import sys
from typing import Iterator

M_TRIM_THRESHOLD = -1  # mallopt parameters, <malloc.h>, and glibc's defaults for them
M_MMAP_MAX = -4
DEFAULT_TRIM_THRESHOLD = 128 * 1024
DEFAULT_MMAP_MAX = 65536


def _glibc() -> ctypes.CDLL | None:
    """The running process's C library if it is glibc (it has ``gnu_get_libc_version``), else None."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None)
        libc.gnu_get_libc_version
    except (OSError, AttributeError):
        return None
    return libc


@contextlib.contextmanager
def keep_freed_memory() -> Iterator[bool]:
    """Within the block, glibc neither trims its heap nor ``mmap``s single allocations; yields whether it took.

    ``man mallopt``: a trim threshold of -1 disables trimming; an ``M_MMAP_MAX`` of 0 serves every
    allocation from the heap. Freed memory is then reused by later allocations, never faulted in
    twice. On leaving, glibc's documented defaults come back (fixed, no longer adapting to the
    sizes freed) and the free pages are handed back to the OS.
    """
    libc = _glibc()
    kept = libc is not None and bool(libc.mallopt(M_TRIM_THRESHOLD, -1)) and bool(libc.mallopt(M_MMAP_MAX, 0))
    try:
        yield kept
    finally:
        if libc is not None:
            libc.mallopt(M_TRIM_THRESHOLD, DEFAULT_TRIM_THRESHOLD)
            libc.mallopt(M_MMAP_MAX, DEFAULT_MMAP_MAX)
            release_freed_memory()


def release_freed_memory() -> None:
    """Hand the heap's free pages back to the OS now (``malloc_trim``), e.g. once a measurement's models are dropped."""
    libc = _glibc()
    if libc is not None:
        libc.malloc_trim(ctypes.c_size_t(0))
