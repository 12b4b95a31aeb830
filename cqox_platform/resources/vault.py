"""``VaultResource``: the Dagster adapter over the core ``VaultClient`` (``cqox_platform.secrets.vault_client``).

Three identities: the platform's AppRole (``from_settings``), the snapshot AppRole that may read raft snapshots and
nothing else (``from_settings(snapshot=True)``, only for ``vault_snapshot``), and the local stack's bootstrap root
token (``from_settings(admin=True)``, only for the ``vault_config`` asset). The methods delegate to one client per
resource instance, so a run logs in once and renews its token as it goes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import hvac
from pydantic import PrivateAttr

from cqox_platform.crypto.keys import DataKey
from cqox_platform.resources.settings_backed import SettingsBackedResource, path_str, unset
from cqox_platform.secrets.vault_client import TransitKeyProvider, VaultClient
from cqox_platform.settings import Settings, get_settings

__all__ = ["TransitKeyProvider", "VaultResource"]
T = TypeVar("T")


class VaultResource(SettingsBackedResource):
    """A Vault (OpenBao) client with verified TLS and one of two auth methods."""

    addr: str = ""
    cacert: str | None = None
    auth_method: str = "approle"  # "approle" or "token"
    approle_file: str | None = None  # JSON {"role_id": ..., "secret_id": ...}, mode 0600
    token_file: str | None = None  # a token, or the stack's openbao-init.json (root token; bootstrap only)
    kv_mount: str = "secret"
    transit_mount: str = "transit"
    database_mount: str = "database"
    timeout: int = 10

    _vault: VaultClient | None = PrivateAttr(default=None)

    @classmethod
    def from_settings(
        cls, settings: Settings | None = None, *, admin: bool = False, snapshot: bool = False
    ) -> VaultResource:
        """The platform's AppRole identity; with ``snapshot`` the snapshot AppRole; with ``admin`` the stack's root
        token (bootstrap only)."""
        s = settings or get_settings()
        approle = "vault_snapshot_approle_file" if snapshot else "vault_approle_file"
        credentials = "vault_root_token_file" if admin else approle
        return cls(
            addr=s.vault_addr or "",
            cacert=path_str(s.vault_cacert),
            auth_method="token" if admin else "approle",
            approle_file=None if admin else path_str(getattr(s, approle)),
            token_file=path_str(s.vault_root_token_file) if admin else None,
            unset_settings=unset(s, "vault_addr", credentials),
        )

    def vault_client(self) -> VaultClient:
        """The core client behind this resource (created once)."""
        if self._vault is None:
            self.require_settings()
            self._vault = VaultClient(
                self.addr,
                self.cacert,
                auth_method=self.auth_method,
                approle_file=self.approle_file,
                token_file=self.token_file,
                kv_mount=self.kv_mount,
                transit_mount=self.transit_mount,
                database_mount=self.database_mount,
                timeout=self.timeout,
            )
        return self._vault

    # --- delegation: the client's API, as assets and tests call it on the resource ----------------------------

    def client(self) -> hvac.Client:
        return self.vault_client().client()

    def call(self, what: str, fn: Callable[[], T]) -> T:
        return self.vault_client().call(what, fn)

    def read_secret(self, path: str) -> dict[str, Any]:
        return self.vault_client().read_secret(path)

    def write_secret(self, path: str, data: dict[str, Any]) -> int:
        return self.vault_client().write_secret(path, data)

    def rotate_secret(self, path: str, field: str = "value", nbytes: int = 32) -> int:
        return self.vault_client().rotate_secret(path, field, nbytes)

    def datakey(self, key: str) -> DataKey:
        return self.vault_client().datakey(key)

    def decrypt(self, key: str, ciphertext: str) -> bytes:
        return self.vault_client().decrypt(key, ciphertext)

    def encrypt(self, key: str, plaintext: bytes) -> str:
        return self.vault_client().encrypt(key, plaintext)

    def rewrap(self, key: str, ciphertext: str) -> str:
        return self.vault_client().rewrap(key, ciphertext)

    def rotate(self, key: str) -> int:
        return self.vault_client().rotate(key)

    def set_min_decryption_version(self, key: str, version: int) -> None:
        self.vault_client().set_min_decryption_version(key, version)

    def key_info(self, key: str) -> dict[str, Any]:
        return self.vault_client().key_info(key)

    def key_provider(self, key: str) -> TransitKeyProvider:
        return self.vault_client().key_provider(key)

    def database_credentials(self, role: str) -> dict[str, Any]:
        return self.vault_client().database_credentials(role)

    def renew_lease(self, lease_id: str, increment: int | None = None) -> int:
        return self.vault_client().renew_lease(lease_id, increment)

    def revoke_lease(self, lease_id: str) -> None:
        self.vault_client().revoke_lease(lease_id)
