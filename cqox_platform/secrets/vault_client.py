"""``VaultClient``: Vault/OpenBao through hvac — KV v2 secrets, Transit data keys, database credentials.

The one Vault client of the platform: ``VaultResource`` (Dagster) builds one, the CLI builds one, and the WAL
archiver (``wal-push``/``wal-fetch``, one process per segment) builds one from its settings file. So this
module imports nothing heavy: no Dagster, no pydantic, only hvac and the platform's error translation.

Authentication is AppRole (role id and secret id given directly, or read from a 0600 file that ``vault_config``
writes) or a token (only the bootstrap identity uses the root token). Tokens are renewed before they expire.
Sealed, unreachable and permission-denied each raise their own error; nothing falls back to plaintext, and no
error message carries a token, key or secret value.
"""

from __future__ import annotations

import base64
import contextlib
import json
import secrets
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal, TypeVar

import hvac

from cqox_platform.crypto.keys import DataKey
from cqox_platform.errors import VaultError, VaultNotFoundError
from cqox_platform.secrets.vault_errors import vault_call

T = TypeVar("T")
AuthMethod = Literal["approle", "token"]
#: Renew the token when less than this share of its TTL is left.
RENEW_FRACTION = 1 / 3


class VaultClient:
    """A Vault (OpenBao) client with verified TLS, logged in lazily on the first request."""

    def __init__(
        self,
        addr: str,
        cacert: str | None = None,
        *,
        auth_method: AuthMethod | str = "approle",
        approle_file: str | None = None,
        role_id: str | None = None,
        secret_id: str | None = None,
        token_file: str | None = None,
        kv_mount: str = "secret",
        transit_mount: str = "transit",
        database_mount: str = "database",
        timeout: float = 10,
    ) -> None:
        """``approle_file`` (JSON ``{"role_id", "secret_id"}``) or ``role_id``/``secret_id`` for AppRole;
        ``token_file`` (a token, or the stack's ``openbao-init.json``) for token auth."""
        self.addr, self.cacert = addr, cacert
        self.auth_method = auth_method
        self.approle_file, self.token_file = approle_file, token_file
        self._approle = (role_id, secret_id) if role_id and secret_id else None
        self.kv_mount, self.transit_mount, self.database_mount = kv_mount, transit_mount, database_mount
        self.timeout = timeout
        self._client: hvac.Client | None = None
        self._token_expires_at = 0.0
        self._token_ttl = 0.0

    def __repr__(self) -> str:  # never the credentials
        return f"VaultClient({self.addr!r}, auth_method={self.auth_method!r})"

    # --- connection and errors -----------------------------------------------------------------------------

    def call(self, what: str, fn: Callable[[], T]) -> T:
        """Run one request, translating transport and HTTP failures into the platform's errors."""
        return vault_call(self.addr, self.cacert, what, fn)

    def client(self) -> hvac.Client:
        """The authenticated hvac client, logged in once and renewed when its token nears expiry."""
        if self._client is None:
            if not self.addr:
                raise VaultError("no Vault address configured (VAULT_ADDR).")
            client = hvac.Client(url=self.addr, verify=self.cacert or True, timeout=self.timeout)
            self._login(client)
            self._client = client
        elif self._token_ttl and time.monotonic() > self._token_expires_at - self._token_ttl * RENEW_FRACTION:
            self._renew_or_relogin(self._client)
        return self._client

    def _login(self, client: hvac.Client) -> None:
        if self.auth_method == "token":
            client.token = self._read_token()
            ttl = float(self.call("looking up the token", client.auth.token.lookup_self)["data"].get("ttl") or 0)
        elif self.auth_method == "approle":
            role_id, secret_id = self._approle or self._read_approle()
            # The login answer carries the token's TTL: no second round trip (the archiver logs in per process).
            login = self.call(
                "logging in with AppRole",
                lambda: client.auth.approle.login(role_id=role_id, secret_id=secret_id),
            )
            ttl = float((login or {}).get("auth", {}).get("lease_duration") or 0)
        else:
            raise VaultError(f"unknown Vault auth method {self.auth_method!r}; use 'approle' or 'token'.")
        self._token_ttl = ttl
        self._token_expires_at = time.monotonic() + ttl if ttl else 0.0

    def _renew_or_relogin(self, client: hvac.Client) -> None:
        try:
            response = self.call("renewing the token", client.auth.token.renew_self)
            ttl = float(response["auth"]["lease_duration"])
            self._token_ttl, self._token_expires_at = ttl, time.monotonic() + ttl
        except VaultError:
            self._login(client)  # past max TTL: a fresh login gets a fresh token

    def _read_token(self) -> str:
        if not self.token_file:
            raise VaultError("token auth needs token_file (the local stack's CQOX_VAULT_ROOT_TOKEN_FILE).")
        text = _read_private(self.token_file, "Vault token file").strip()
        if text.startswith("{"):
            return json.loads(text)["root_token"]
        return text

    def _read_approle(self) -> tuple[str, str]:
        if not self.approle_file:
            raise VaultError("AppRole auth needs approle_file (CQOX_VAULT_APPROLE_FILE).")
        if not Path(self.approle_file).exists():
            raise VaultError(
                f"AppRole credentials {self.approle_file} do not exist yet; materialize the `vault_config` asset "
                f"first (it creates the platform's AppRole)."
            )
        creds = json.loads(_read_private(self.approle_file, "AppRole credentials file"))
        return creds["role_id"], creds["secret_id"]

    # --- KV v2 -----------------------------------------------------------------------------------------------

    def read_secret(self, path: str) -> dict[str, Any]:
        c = self.client()
        response = self.call(
            f"reading secret {self.kv_mount}/{path}",
            lambda: c.secrets.kv.v2.read_secret_version(
                path=path, mount_point=self.kv_mount, raise_on_deleted_version=True
            ),
        )
        return response["data"]["data"]

    def write_secret(self, path: str, data: dict[str, Any]) -> int:
        """Write a new version; returns the version number."""
        c = self.client()
        response = self.call(
            f"writing secret {self.kv_mount}/{path}",
            lambda: c.secrets.kv.v2.create_or_update_secret(path=path, secret=data, mount_point=self.kv_mount),
        )
        return int(response["data"]["version"])

    def rotate_secret(self, path: str, field: str = "value", nbytes: int = 32) -> int:
        """Replace ``field`` with fresh random bytes (base64); returns the new version. The value is never returned."""
        current: dict[str, Any] = {}
        with contextlib.suppress(VaultNotFoundError):  # rotating a secret that does not exist yet creates it
            current = self.read_secret(path)
        return self.write_secret(path, {**current, field: base64.b64encode(secrets.token_bytes(nbytes)).decode()})

    # --- Transit ---------------------------------------------------------------------------------------------

    def datakey(self, key: str) -> DataKey:
        """A fresh 256-bit DEK: plaintext (memory only) and wrapped under the Transit key."""
        c = self.client()
        data = self.call(
            f"creating a data key under transit/{key}",
            lambda: c.secrets.transit.generate_data_key(name=key, key_type="plaintext", mount_point=self.transit_mount),
        )["data"]
        return DataKey(plaintext=base64.b64decode(data["plaintext"]), wrapped=data["ciphertext"], key_name=key)

    def decrypt(self, key: str, ciphertext: str) -> bytes:
        c = self.client()
        data = self.call(
            f"decrypting with transit/{key}",
            lambda: c.secrets.transit.decrypt_data(name=key, ciphertext=ciphertext, mount_point=self.transit_mount),
        )["data"]
        return base64.b64decode(data["plaintext"])

    def encrypt(self, key: str, plaintext: bytes) -> str:
        c = self.client()
        data = self.call(
            f"encrypting with transit/{key}",
            lambda: c.secrets.transit.encrypt_data(
                name=key, plaintext=base64.b64encode(plaintext).decode(), mount_point=self.transit_mount
            ),
        )["data"]
        return data["ciphertext"]

    def rewrap(self, key: str, ciphertext: str) -> str:
        """Re-encrypt a wrapped value under the key's latest version without exposing the plaintext."""
        c = self.client()
        data = self.call(
            f"rewrapping with transit/{key}",
            lambda: c.secrets.transit.rewrap_data(name=key, ciphertext=ciphertext, mount_point=self.transit_mount),
        )["data"]
        return data["ciphertext"]

    def rotate(self, key: str) -> int:
        """Rotate the Transit key; returns the new latest version."""
        c = self.client()
        self.call(
            f"rotating transit/{key}", lambda: c.secrets.transit.rotate_key(name=key, mount_point=self.transit_mount)
        )
        return int(self.key_info(key)["latest_version"])

    def set_min_decryption_version(self, key: str, version: int) -> None:
        c = self.client()
        self.call(
            f"raising min_decryption_version of transit/{key}",
            lambda: c.secrets.transit.update_key_configuration(
                name=key, min_decryption_version=version, mount_point=self.transit_mount
            ),
        )

    def key_info(self, key: str) -> dict[str, Any]:
        """Versions of a Transit key (no key material is ever returned by Transit)."""
        c = self.client()
        data = self.call(
            f"reading transit/{key}", lambda: c.secrets.transit.read_key(name=key, mount_point=self.transit_mount)
        )["data"]
        return {
            "latest_version": data["latest_version"],
            "min_decryption_version": data["min_decryption_version"],
            "min_encryption_version": data.get("min_encryption_version", 0),
            "type": data["type"],
            "versions": sorted(int(v) for v in data["keys"]),
        }

    def key_provider(self, key: str) -> TransitKeyProvider:
        return TransitKeyProvider(self, key)

    # --- database credentials --------------------------------------------------------------------------------

    def database_credentials(self, role: str) -> dict[str, Any]:
        """Short-lived PostgreSQL credentials: username, password, lease_id, lease_duration (seconds)."""
        c = self.client()
        response = self.call(
            f"issuing database credentials for role {role}",
            lambda: c.secrets.database.generate_credentials(name=role, mount_point=self.database_mount),
        )
        return {**response["data"], "lease_id": response["lease_id"], "lease_duration": int(response["lease_duration"])}

    def renew_lease(self, lease_id: str, increment: int | None = None) -> int:
        """Renew a lease; returns the new duration in seconds (capped by the role's max TTL)."""
        c = self.client()
        response = self.call(
            "renewing a database lease", lambda: c.sys.renew_lease(lease_id=lease_id, increment=increment)
        )
        return int(response["lease_duration"])

    def revoke_lease(self, lease_id: str) -> None:
        """Revoke a lease now (the database user is dropped) instead of waiting for its TTL."""
        c = self.client()
        self.call("revoking a database lease", lambda: c.sys.revoke_lease(lease_id=lease_id))


class TransitKeyProvider:
    """``DataKeyProvider`` over Vault Transit: what ``cqox_platform.crypto`` uses in production."""

    def __init__(self, vault: VaultClient, key_name: str) -> None:
        self.vault = vault
        self.key_name = key_name

    def generate_data_key(self) -> DataKey:
        return self.vault.datakey(self.key_name)

    def unwrap(self, wrapped: str) -> bytes:
        return self.vault.decrypt(self.key_name, wrapped)


def _read_private(path: str, what: str) -> str:
    try:
        return Path(path).read_text()
    except OSError as exc:
        raise VaultError(f"cannot read the {what} {path}: {exc.strerror}.") from None
