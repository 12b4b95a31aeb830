"""Start writing restored bytes back to disk while the restore goes on, without waiting for them.

A restored data directory was never shut down cleanly, so the server syncs every file before it replays the
first record (``recovery_init_sync_method``). Whatever the restore left dirty in the page cache is written then,
on recovery's critical path: ~1 s for a 0.3 GB database on this machine, where pgBackRest, which syncs each file
in its own restore, leaves ~0.1 s. Asking the kernel to start writeback of each chunk as it is written
(``sync_file_range`` with ``SYNC_FILE_RANGE_WRITE``, what PostgreSQL's ``*_flush_after`` settings do) overlaps
that write with the download and decryption; the start-up sync then finds little left to write. It is a hint,
not a guarantee: the server's start-up sync still makes every file durable, and a kernel or C library without
the call changes nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
from collections.abc import Callable

#: ``SYNC_FILE_RANGE_WRITE`` from <linux/fs.h>: initiate write-out of dirty pages, do not wait for it.
SYNC_FILE_RANGE_WRITE = 2


@functools.cache
def _sync_file_range() -> Callable[..., int] | None:
    if os.uname().sysname != "Linux":
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        call = libc.sync_file_range
    except (OSError, AttributeError):
        return None
    call.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    call.restype = ctypes.c_int
    return call


def start_writeback(fd: int, offset: int, length: int) -> bool:
    """Start writing ``length`` bytes of ``fd`` at ``offset`` back to disk; False when the hint was not given
    (no such call, or the kernel refused it: neither loses anything)."""
    call = _sync_file_range()
    if call is None or length <= 0:
        return False
    return call(fd, offset, length, SYNC_FILE_RANGE_WRITE) == 0
