"""One translation of hvac/requests failures into the platform's Vault errors.

Shared by ``VaultResource`` (Dagster) and the light client the WAL archiver uses (no Dagster import, because
PostgreSQL starts one archiver process per segment and importing Dagster would cost a second each time).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import hvac.exceptions
import requests

from cqox_platform.errors import (
    VaultError,
    VaultNotFoundError,
    VaultPermissionError,
    VaultSealedError,
    VaultUnreachableError,
)

T = TypeVar("T")


def vault_call(addr: str, cacert: str | None, what: str, fn: Callable[[], T]) -> T:
    """Run one request, translating transport and HTTP failures into the platform's errors."""
    try:
        return fn()
    except requests.exceptions.SSLError as exc:
        raise VaultUnreachableError(
            f"TLS to Vault at {addr} failed while {what}: the certificate did not verify against "
            f"{cacert or 'the system CAs'} ({type(exc).__name__})."
        ) from None
    except (requests.exceptions.ConnectionError, requests.exceptions.Timeout) as exc:
        raise VaultUnreachableError(
            f"Vault at {addr} is unreachable while {what} ({type(exc).__name__}); is it running? "
            f"(`cqox-platform stack status`)"
        ) from None
    except hvac.exceptions.VaultDown:
        raise VaultSealedError(
            f"Vault at {addr} is sealed while {what}; unseal it (`cqox-platform stack up` does locally)."
        ) from None
    except hvac.exceptions.Forbidden as exc:
        raise VaultPermissionError(
            f"Vault denied {what}: the token's policies do not allow it ({_errors(exc)})."
        ) from None
    except hvac.exceptions.InvalidPath:
        raise VaultNotFoundError(f"Vault has nothing at the path used for {what} (404).") from None
    except hvac.exceptions.VaultError as exc:
        # hvac's exception class is the HTTP status (InvalidRequest 400, InternalServerError 500, ...).
        raise VaultError(f"Vault refused {what}: {_errors(exc)} ({type(exc).__name__}).") from None


def _errors(exc: Exception) -> str:
    errors = getattr(exc, "errors", None)
    return "; ".join(str(e) for e in errors) if errors else type(exc).__name__
