"""Read a tar stream while it flows past and keep a copy of a few small members.

A base backup streams from ``pg_basebackup`` to S3 without touching disk; its ``backup_label`` (start LSN,
timeline, start time) and ``backup_manifest`` (WAL range, file checksums) are needed for the backup record.
This reader passes every byte through unchanged and parses the ustar headers on the side.
"""

from __future__ import annotations

from typing import BinaryIO

import zstandard

BLOCK = 512


class TarSniffer:
    """A pass-through reader that captures the contents of members named in ``wanted``."""

    def __init__(self, src: BinaryIO | None, wanted: set[str], max_member_bytes: int = 64 * 1024 * 1024) -> None:
        self.src = src
        self.wanted = wanted
        self.max_member_bytes = max_member_bytes
        self.captured: dict[str, bytes] = {}
        self.bytes_read = 0
        self._pending = bytearray()  # header bytes not yet complete
        self._skip = 0  # bytes of the current member's data (with padding) still to pass
        self._capture_name: str | None = None
        self._capture_left = 0
        self._capture = bytearray()

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        data = self.src.read(size)
        if data:
            self.feed(data)
        return data

    def feed(self, data: bytes) -> None:
        """Parse ``data`` as the next bytes of the stream (for callers that hold the bytes themselves)."""
        self.bytes_read += len(data)
        self._feed(memoryview(data))

    def _feed(self, data: memoryview) -> None:
        pos = 0
        while pos < len(data):
            if self._skip:
                take = min(self._skip, len(data) - pos)
                if self._capture_name is not None and self._capture_left:
                    keep = min(take, self._capture_left)
                    self._capture += data[pos : pos + keep]
                    self._capture_left -= keep
                    if not self._capture_left:
                        self.captured[self._capture_name] = bytes(self._capture)
                        self._capture_name = None
                pos += take
                self._skip -= take
                continue
            take = min(BLOCK - len(self._pending), len(data) - pos)
            self._pending += data[pos : pos + take]
            pos += take
            if len(self._pending) == BLOCK:
                self._header(bytes(self._pending))
                self._pending.clear()

    def _header(self, block: bytes) -> None:
        if block == b"\0" * BLOCK:
            return  # end-of-archive padding
        name = block[0:100].split(b"\0", 1)[0].decode(errors="replace")
        prefix = block[345:500].split(b"\0", 1)[0].decode(errors="replace")
        if prefix:
            name = f"{prefix}/{name}"
        if block[124] & 0x80:  # GNU base-256 for members over 8 GiB
            size = int.from_bytes(block[125:136], "big")
        else:
            size = int(block[124:136].split(b"\0", 1)[0].strip() or b"0", 8)
        self._skip = -(-size // BLOCK) * BLOCK
        if name in self.wanted and size <= self.max_member_bytes:
            self._capture_name, self._capture_left, self._capture = name, size, bytearray()
            if size == 0:
                self.captured[name] = b""
                self._capture_name = None


class ZstdTarHeadSniffer:
    """Captures members near the start of a zstd-compressed tar stream, decompressing only until they are found.

    Why: with server-side compression the tar arrives compressed; ``backup_label`` is its first member, so the
    first megabytes are decompressed to read it and the rest of the stream passes untouched.
    """

    def __init__(self, wanted: set[str], limit: int = 64 * 1024 * 1024) -> None:
        self.tar = TarSniffer(None, wanted)
        self.wanted, self.limit = wanted, limit
        self._unzstd = zstandard.ZstdDecompressor().decompressobj()

    @property
    def captured(self) -> dict[str, bytes]:
        return self.tar.captured

    @property
    def done(self) -> bool:
        return self.wanted <= self.tar.captured.keys() or self.tar.bytes_read >= self.limit

    def feed(self, compressed: bytes) -> None:
        if not self.done and compressed:
            self.tar.feed(self._unzstd.decompress(compressed))
