"""Keep a long-running process's resident memory near what it holds, not at its highest point (glibc malloc)."""

from __future__ import annotations

import ctypes

#: glibc's ``mallopt`` parameter for the size above which an allocation is its own ``mmap``.
M_MMAP_THRESHOLD = -3
LARGE_BUFFER = 1 << 20


def return_large_buffers() -> bool:
    """Serve every allocation of 1 MiB or more with its own ``mmap``, so freeing it returns it to the system.

    Why: glibc raises its threshold after a large buffer is freed (up to 32 MiB), and from then on the 16 MiB WAL
    segments the pusher and prefetcher handle come from the heap and per-thread arenas, which keep the pages: a
    prefetcher with 4 threads held 188 MiB after 16 segments, 66 MiB with this (what its imports and S3 client
    take). Setting the threshold explicitly also stops that adjustment. False where it cannot (not glibc).
    """
    try:
        return bool(ctypes.CDLL("libc.so.6").mallopt(M_MMAP_THRESHOLD, LARGE_BUFFER))
    except (OSError, AttributeError):
        return False
