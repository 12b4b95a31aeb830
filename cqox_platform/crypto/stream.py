"""The streaming AES-256-GCM object format (version 1), specified in ``docs/encryption-format.md``.

One data key (DEK) per object, or one DEK shared by many objects with flag ``DERIVED_KEY``: then each object's
chunks are sealed under ``HKDF-SHA256(DEK, salt=nonce prefix, info=header)``, a key of its own, as the AWS
Encryption SDK derives a key per message from a cached data key. The plaintext is cut into fixed-size chunks, each
sealed with AES-256-GCM under a nonce made of a random 7-byte prefix, the 32-bit chunk index and a last-chunk flag
(the STREAM construction of Hoang, Reyhanitabar, Rogaway and Vizar). Every chunk's associated data is the object's
header, which holds the format version, chunk size, nonce prefix and object id. So a flipped byte, a dropped tail,
swapped chunks, chunks from another object and a header edited to point elsewhere all fail authentication, and
memory stays at one chunk however large the object.
"""

from __future__ import annotations

import hashlib
import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from cqox_platform.errors import FormatError, IntegrityError

MAGIC = b"CQXE"
FORMAT_VERSION = 1
TAG_BYTES = 16
NONCE_PREFIX_BYTES = 7
DEK_BYTES = 32
DEFAULT_CHUNK_SIZE = 1 << 20  # 1 MiB: large enough for full AES-NI speed, small enough for constant memory
MIN_CHUNK_SIZE = 16
MAX_CHUNK_SIZE = 64 << 20
MAX_OBJECT_ID_BYTES = 1024
MAX_CHUNKS = 1 << 32
#: Header flag: the DEK may seal other objects too, so the chunk key is derived per object (see ``chunk_key``).
DERIVED_KEY = 0x01
_KNOWN_FLAGS = (0, DERIVED_KEY)
# magic, version, flags, chunk size, nonce prefix, object id length
_FIXED = struct.Struct(">4sBBI7sH")


@dataclass(frozen=True)
class Header:
    chunk_size: int
    nonce_prefix: bytes
    object_id: str
    flags: int = 0

    def pack(self) -> bytes:
        oid = self.object_id.encode()
        return _FIXED.pack(MAGIC, FORMAT_VERSION, self.flags, self.chunk_size, self.nonce_prefix, len(oid)) + oid

    def chunk_key(self, dek: bytes) -> bytes:
        """The AES key of this object's chunks: the DEK itself, or with ``DERIVED_KEY`` one derived from it and
        the whole header (random nonce prefix as salt), so objects sharing a DEK never share a chunk key."""
        if not self.flags & DERIVED_KEY:
            return dek
        return HKDF(algorithm=hashes.SHA256(), length=DEK_BYTES, salt=self.nonce_prefix, info=self.pack()).derive(dek)

    def nonce(self, index: int, last: bool) -> bytes:
        if index >= MAX_CHUNKS:
            raise FormatError(f"object {self.object_id!r} needs more than 2^32 chunks; use a larger chunk size.")
        return self.nonce_prefix + struct.pack(">IB", index, 1 if last else 0)


@dataclass(frozen=True)
class StreamStats:
    """What a pass over an object measured: sizes, chunk count and the plaintext's SHA-256."""

    plaintext_bytes: int
    ciphertext_bytes: int
    chunks: int
    plaintext_sha256: str | None


def _check_dek(dek: bytes) -> None:
    if len(dek) != DEK_BYTES:
        raise FormatError(f"a data key must be {DEK_BYTES} bytes (AES-256), got {len(dek)}.")


def _read_exact(src: BinaryIO, n: int) -> bytes:
    """Read up to ``n`` bytes, looping over short reads (pipes, sockets, S3 streams)."""
    parts, remaining = [], n
    while remaining:
        part = src.read(remaining)
        if not part:
            break
        parts.append(part)
        remaining -= len(part)
    return b"".join(parts)


def _chunks(src: BinaryIO, size: int) -> Iterator[tuple[int, bytes, bool]]:
    """(index, chunk, is_last) over ``src`` with one chunk of look-ahead, so the final chunk is known as such.

    A stream that ends exactly on a chunk boundary has no empty trailing chunk; an empty stream is one empty
    final chunk.
    """
    index, current = 0, _read_exact(src, size)
    while True:
        following = _read_exact(src, size) if len(current) == size else b""
        last = not following
        yield index, current, last
        if last:
            return
        index, current = index + 1, following


def encrypt_stream(
    src: BinaryIO,
    dst: BinaryIO,
    dek: bytes,
    object_id: str,
    *,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    nonce_prefix: bytes | None = None,
    hash_plaintext: bool = False,
    derive_key: bool = False,
) -> StreamStats:
    """Encrypt ``src`` into ``dst`` chunk by chunk. ``nonce_prefix`` is for test vectors only.

    ``derive_key`` is for a DEK that seals other objects too (a cached data key): the chunks get a key derived
    for this object alone (flag ``DERIVED_KEY``).

    ``hash_plaintext`` adds the plaintext's SHA-256 to the stats (for manifests); it costs about as much CPU
    as AES-GCM itself, so paths that do not record it leave it off.
    """
    _check_dek(dek)
    if not MIN_CHUNK_SIZE <= chunk_size <= MAX_CHUNK_SIZE:
        raise FormatError(f"chunk size {chunk_size} is outside {MIN_CHUNK_SIZE}..{MAX_CHUNK_SIZE} bytes.")
    if len(object_id.encode()) > MAX_OBJECT_ID_BYTES:
        raise FormatError(f"object id is longer than {MAX_OBJECT_ID_BYTES} bytes.")
    flags = DERIVED_KEY if derive_key else 0
    header = Header(chunk_size, nonce_prefix or os.urandom(NONCE_PREFIX_BYTES), object_id, flags)
    if len(header.nonce_prefix) != NONCE_PREFIX_BYTES:
        raise FormatError(f"nonce prefix must be {NONCE_PREFIX_BYTES} bytes.")
    aad = header.pack()
    aead = AESGCM(header.chunk_key(dek))
    digest = hashlib.sha256() if hash_plaintext else None
    dst.write(aad)
    written, plain_total, chunks = len(aad), 0, 0
    for index, chunk, last in _chunks(src, chunk_size):
        if digest is not None:
            digest.update(chunk)
        sealed = aead.encrypt(header.nonce(index, last), chunk, aad)
        dst.write(sealed)
        written += len(sealed)
        plain_total += len(chunk)
        chunks = index + 1
    return StreamStats(plain_total, written, chunks, digest.hexdigest() if digest else None)


def read_header(src: BinaryIO) -> Header:
    """Parse and validate the header at the start of ``src``."""
    fixed = _read_exact(src, _FIXED.size)
    if len(fixed) < _FIXED.size or fixed[:4] != MAGIC:
        raise FormatError("not a cqox encrypted object (bad magic or too short).")
    _magic, version, flags, chunk_size, prefix, oid_len = _FIXED.unpack(fixed)
    if version != FORMAT_VERSION:
        raise FormatError(f"format version {version} is not supported (this code reads {FORMAT_VERSION}).")
    if flags not in _KNOWN_FLAGS or not MIN_CHUNK_SIZE <= chunk_size <= MAX_CHUNK_SIZE or oid_len > MAX_OBJECT_ID_BYTES:
        raise FormatError("corrupt header (flags, chunk size or object id length out of range).")
    oid = _read_exact(src, oid_len)
    if len(oid) != oid_len:
        raise FormatError("corrupt header (object id cut short).")
    try:
        object_id = oid.decode()
    except UnicodeDecodeError:
        raise FormatError("corrupt header (object id is not UTF-8).") from None
    return Header(chunk_size, prefix, object_id, flags)


def decrypt_stream(
    src: BinaryIO,
    dst: BinaryIO,
    dek: bytes,
    *,
    expected_object_id: str | None = None,
    hash_plaintext: bool = False,
) -> StreamStats:
    """Decrypt ``src`` into ``dst``; raise before writing a chunk that does not authenticate.

    Chunks already written stay in ``dst``: callers write to a temporary file and rename only on success.
    """
    _check_dek(dek)
    header = read_header(src)
    if expected_object_id is not None and header.object_id != expected_object_id:
        raise IntegrityError(
            f"the data object belongs to {header.object_id!r}, not {expected_object_id!r} (spliced or mixed up)."
        )
    aad = header.pack()
    aead = AESGCM(header.chunk_key(dek))
    digest = hashlib.sha256() if hash_plaintext else None
    read_total, plain_total, chunks = len(aad), 0, 0
    for index, sealed, last in _chunks(src, header.chunk_size + TAG_BYTES):
        if len(sealed) < TAG_BYTES:
            raise IntegrityError(f"object {header.object_id!r} is truncated after chunk {index}.")
        try:
            plain = aead.decrypt(header.nonce(index, last), sealed, aad)
        except InvalidTag:
            raise IntegrityError(
                f"chunk {index} of object {header.object_id!r} failed authentication: the object was modified, "
                f"truncated or reordered, or the data key is not this object's."
            ) from None
        if digest is not None:
            digest.update(plain)
        dst.write(plain)
        read_total += len(sealed)
        plain_total += len(plain)
        chunks = index + 1
    return StreamStats(plain_total, read_total, chunks, digest.hexdigest() if digest else None)


def ciphertext_size(plaintext_bytes: int, object_id: str, chunk_size: int = DEFAULT_CHUNK_SIZE) -> int:
    """Exact size of the encrypted object, for Content-Length and progress bars."""
    chunks = max(1, -(-plaintext_bytes // chunk_size))  # an empty object still has one (empty) chunk
    return _FIXED.size + len(object_id.encode()) + plaintext_bytes + chunks * TAG_BYTES
