"""Read a file while another process is still writing it, and give its disk back as it is read.

Why: ``pg_basebackup`` compresses on the server only when it writes into a directory (PostgreSQL 15 refuses
server-side compression on stdout when it has to inject the manifest), and the directory must be empty when
it starts, so a FIFO cannot stand in for ``base.tar.zst``. This reader follows the file as it grows, like
``tail -f``, until the writer exits, and punches holes (``fallocate(PUNCH_HOLE)``) behind what it has read:
the local disk holds only the read lag, never the whole compressed backup. On a file system that cannot punch
holes the backup still works and says so once; the file is then as large as the compressed backup.
"""

from __future__ import annotations

import ctypes
import errno
import os
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from cqox_platform.errors import BackupError

FALLOC_FL_KEEP_SIZE = 0x01
FALLOC_FL_PUNCH_HOLE = 0x02
PUNCH_EVERY = 64 * 1024 * 1024
_ALIGN = 4096


class WriterFailedError(BackupError):
    """The process writing the followed file exited non-zero (or never created the file)."""


def _libc_fallocate() -> Callable[[int, int, int, int], int] | None:
    try:
        fallocate = ctypes.CDLL(None, use_errno=True).fallocate
    except (OSError, AttributeError):
        return None
    fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
    fallocate.restype = ctypes.c_int
    return fallocate


class GrowingFileReader:
    """A reader of ``path`` as ``writer`` writes it; EOF once the writer has exited 0 and every byte was read.

    ``describe_failure`` turns the writer's exit code into the error raised when it fails (its stderr, usually).
    """

    def __init__(
        self,
        path: Path,
        writer: subprocess.Popen,
        describe_failure: Callable[[int], str],
        *,
        poll: float = 0.02,
        punch_every: int = PUNCH_EVERY,
        progress: Callable[[str], None] = lambda _m: None,
    ) -> None:
        self.path, self.writer, self.describe_failure = path, writer, describe_failure
        self.poll, self.punch_every, self.progress = poll, punch_every, progress
        self.fd: int | None = None
        self.offset = 0
        self.punched = 0
        self._fallocate = _libc_fallocate()
        self._writer_done = False

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        size = size if size and size > 0 else 1 << 20
        while True:
            if self.fd is None and not self._open():
                if self._writer_exited():
                    raise WriterFailedError(self.describe_failure(self.writer.returncode or 0))
                time.sleep(self.poll)
                continue
            data = os.read(self.fd, size)  # type: ignore[arg-type]
            if data:
                self.offset += len(data)
                if self.offset - self.punched >= self.punch_every:
                    self._punch()
                return data
            if self._writer_done:
                return b""
            if self._writer_exited():
                self._writer_done = True  # read once more: what it wrote before exiting
                continue
            time.sleep(self.poll)

    def _open(self) -> bool:
        try:
            self.fd = os.open(self.path, os.O_RDWR)  # write access: fallocate needs it
        except FileNotFoundError:
            return False
        return True

    def _writer_exited(self) -> bool:
        rc = self.writer.poll()
        if rc is None:
            return False
        if rc != 0:
            raise WriterFailedError(self.describe_failure(rc))
        return True

    def _punch(self) -> None:
        upto = self.offset // _ALIGN * _ALIGN
        if self._fallocate is None or upto <= self.punched:
            return
        mode = FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE
        if self._fallocate(self.fd, mode, 0, upto) != 0:
            err = ctypes.get_errno()
            self._fallocate = None
            if err in (errno.EOPNOTSUPP, errno.ENOSYS):
                self.progress(
                    f"note: {self.path.parent} cannot punch holes; it holds the compressed backup until it ends"
                )
                return
            self.progress(f"note: punching holes in {self.path} failed ({os.strerror(err)}); reading on")
            return
        self.punched = upto

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
