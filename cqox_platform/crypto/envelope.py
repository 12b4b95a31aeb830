"""Envelope encryption of files and streams: data object + manifest, DEK wrapped by the provider.

The data object is the streaming format of ``stream.py``. The manifest (JSON, small, beside the object) holds
the wrapped DEK and what a reader needs to trust the object: its id, sizes, and the plaintext's SHA-256. Key
rotation rewraps the manifest's DEK and never touches the data object.
"""

from __future__ import annotations

import json
import os
import tempfile
import uuid
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO

from cqox_platform.crypto.keys import DataKeyProvider, wrapped_key_version
from cqox_platform.crypto.stream import DEFAULT_CHUNK_SIZE, FORMAT_VERSION, decrypt_stream, encrypt_stream
from cqox_platform.errors import FormatError, IntegrityError, ManifestMismatchError

MANIFEST_SUFFIX = ".manifest.json"


@dataclass(frozen=True)
class Manifest:
    object_id: str
    key_name: str
    wrapped_dek: str
    chunk_size: int
    plaintext_bytes: int
    ciphertext_bytes: int
    chunks: int
    plaintext_sha256: str
    created_at: str
    format: str = "cqox-envelope"
    format_version: int = FORMAT_VERSION
    algorithm: str = "AES-256-GCM-STREAM"

    @property
    def key_version(self) -> int:
        return wrapped_key_version(self.wrapped_dek)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str | bytes, *, where: str = "manifest") -> Manifest:
        try:
            data = json.loads(text)
            if data.get("format") != "cqox-envelope":
                raise ValueError("not a cqox-envelope manifest")
            if data.get("format_version") != FORMAT_VERSION:
                raise ValueError(f"format_version {data.get('format_version')} is not supported")
            return cls(**data)
        except (ValueError, TypeError) as exc:
            raise FormatError(f"{where} is not a valid manifest: {exc}") from None

    def with_wrapped_dek(self, wrapped: str) -> Manifest:
        return Manifest(**{**asdict(self), "wrapped_dek": wrapped})


def encrypt_to(
    src: BinaryIO,
    dst: BinaryIO,
    provider: DataKeyProvider,
    *,
    object_id: str | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> Manifest:
    """Encrypt a stream under a fresh DEK; return the manifest to store beside it."""
    object_id = object_id or str(uuid.uuid4())
    key = provider.generate_data_key()
    stats = encrypt_stream(
        src, dst, key.plaintext, object_id, chunk_size=chunk_size, hash_plaintext=True, derive_key=key.shared
    )
    return Manifest(
        object_id=object_id,
        key_name=key.key_name,
        wrapped_dek=key.wrapped,
        chunk_size=chunk_size,
        plaintext_bytes=stats.plaintext_bytes,
        ciphertext_bytes=stats.ciphertext_bytes,
        chunks=stats.chunks,
        plaintext_sha256=stats.plaintext_sha256 or "",
        created_at=datetime.now(UTC).isoformat(timespec="seconds"),
    )


def decrypt_from(src: BinaryIO, dst: BinaryIO, manifest: Manifest, provider: DataKeyProvider) -> None:
    """Decrypt a stream described by ``manifest``; verify the sizes and the plaintext's SHA-256 at the end."""
    dek = provider.unwrap(manifest.wrapped_dek)
    try:
        stats = decrypt_stream(src, dst, dek, expected_object_id=manifest.object_id, hash_plaintext=True)
    except IntegrityError as exc:
        if "belongs to" in str(exc):
            raise ManifestMismatchError(
                f"the manifest describes object {manifest.object_id!r} but the data object is another one: {exc}"
            ) from None
        raise
    if stats.plaintext_sha256 != manifest.plaintext_sha256 or stats.plaintext_bytes != manifest.plaintext_bytes:
        raise IntegrityError(
            f"object {manifest.object_id!r} decrypted but its size or SHA-256 differs from the manifest."
        )


def manifest_path(data_path: Path) -> Path:
    return data_path.with_name(data_path.name + MANIFEST_SUFFIX)


def encrypt_file(
    src_path: Path, dst_path: Path, provider: DataKeyProvider, *, chunk_size: int = DEFAULT_CHUNK_SIZE
) -> Manifest:
    """Encrypt a file to ``dst_path`` plus ``dst_path.manifest.json``, both written atomically, manifest last."""
    with open(src_path, "rb") as src, _atomic(dst_path) as dst:
        manifest = encrypt_to(src, dst, provider, chunk_size=chunk_size)
    with _atomic(manifest_path(dst_path)) as out:
        out.write(manifest.to_json().encode())
    return manifest


def load_manifest(data_path: Path) -> Manifest:
    """The manifest beside an encrypted file."""
    mpath = manifest_path(data_path)
    if not mpath.exists():
        raise FormatError(f"{mpath} is missing: an encrypted object is unreadable without its manifest.")
    return Manifest.from_json(mpath.read_bytes(), where=str(mpath))


def decrypt_file(
    src_path: Path, dst_path: Path, provider: DataKeyProvider, manifest: Manifest | None = None
) -> Manifest:
    """Decrypt ``src_path`` using the manifest beside it; ``dst_path`` appears only if everything verified."""
    manifest = manifest or load_manifest(src_path)
    with open(src_path, "rb") as src, _atomic(dst_path) as dst:
        decrypt_from(src, dst, manifest, provider)
    return manifest


class _atomic:
    """Write to a temporary file in the destination's directory; rename over the target only on success."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def __enter__(self) -> BinaryIO:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, self.tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", dir=self.path.parent)
        self.handle = os.fdopen(fd, "wb")
        return self.handle

    def __exit__(self, exc_type, exc, tb) -> None:
        self.handle.close()
        if exc_type is None:
            os.replace(self.tmp, self.path)
        else:
            os.unlink(self.tmp)
