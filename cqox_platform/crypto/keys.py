"""Where data keys come from. The format code only sees this protocol, never Vault itself."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Protocol

from cqox_platform.errors import CryptoError

_WRAPPED = re.compile(r"^vault:v(?P<version>\d+):[A-Za-z0-9+/=]+$")


@dataclass(frozen=True)
class DataKey:
    """A DEK: the plaintext for this process's memory only, and its wrapped form for storage. ``shared`` when it
    may seal more than one object (a cached key): the format then derives a key per object from it."""

    plaintext: bytes = field(repr=False)
    wrapped: str
    key_name: str
    shared: bool = False

    @property
    def key_version(self) -> int:
        return wrapped_key_version(self.wrapped)


class DataKeyProvider(Protocol):
    """Issues and unwraps data keys under one named key-encryption key (Vault Transit in production)."""

    key_name: str

    def generate_data_key(self) -> DataKey: ...

    def unwrap(self, wrapped: str) -> bytes: ...


def wrapped_key_version(wrapped: str) -> int:
    """The Transit key version inside ``vault:vN:...``."""
    match = _WRAPPED.match(wrapped)
    if not match:
        raise CryptoError("a wrapped data key must look like vault:vN:<base64>.")
    return int(match["version"])
