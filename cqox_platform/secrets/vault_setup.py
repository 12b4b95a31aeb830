"""Bring a Vault (OpenBao) to the state the platform needs, idempotently, and report that state.

Runs with the bootstrap token (``vault_admin``). Every step reads first and writes only what differs, so a
second run changes nothing. The report lists engines, policies and key versions, never a secret.
"""

from __future__ import annotations

import base64
import json
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import hvac
import hvac.exceptions

from cqox_platform.errors import VaultError
from cqox_platform.stack.files import write_private

POLICY_DIR = Path(__file__).resolve().parents[2] / "deploy" / "vault" / "policies"
DATASETS_KEY = "cqox-datasets"
APPROLE = "cqox-platform"
DB_CONNECTION = "cqox-prod"
DB_ROLE = "cqox-platform"
#: KV path of the key pgcrypto uses for dataset object paths (issue 3, datasets).
DATASET_PATH_KEY = "cqox/datasets-path-key"

# The dynamic login role acts as the schema owner through membership, so it can run migrations and own what it
# creates; dropping it on revocation never orphans objects. It is short-lived, not least-privilege: a separate
# migrator/runtime split is future work (see the closing note of issue 3).
DB_CREATION = [
    """CREATE ROLE "{{name}}" WITH LOGIN PASSWORD '{{password}}' VALID UNTIL '{{expiration}}' NOINHERIT;""",
    """GRANT "{{owner}}" TO "{{name}}";""",
    """ALTER ROLE "{{name}}" SET role = '{{owner}}';""",
]
DB_REVOCATION = [
    """ALTER ROLE "{{name}}" NOLOGIN;""",
    """SELECT pg_terminate_backend(pid) FROM pg_stat_activity
       WHERE usename = '{{name}}' AND pid <> pg_backend_pid();""",
    """DROP ROLE IF EXISTS "{{name}}";""",
]


@dataclass(frozen=True)
class DatabaseEngineSettings:
    """How Vault reaches PostgreSQL to mint credentials (the password stays in memory for the call only)."""

    host: str
    port: int
    dbname: str
    admin_user: str
    admin_password: str = field(repr=False)
    sslrootcert: str
    owner_role: str
    default_ttl: str = "1h"
    max_ttl: str = "24h"


@dataclass
class VaultState:
    engines: dict[str, str] = field(default_factory=dict)
    policies: list[str] = field(default_factory=list)
    auth_methods: list[str] = field(default_factory=list)
    audit_devices: list[str] = field(default_factory=list)
    transit_keys: dict[str, dict[str, Any]] = field(default_factory=dict)
    database_roles: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)


def _ensure_mount(client: hvac.Client, path: str, backend: str, state: VaultState, options=None) -> None:
    mounts = client.sys.list_mounted_secrets_engines()["data"]
    existing = mounts.get(f"{path}/")
    if existing is None:
        client.sys.enable_secrets_engine(backend_type=backend, path=path, options=options)
        state.changed.append(f"enabled {backend} at {path}/")
    elif existing["type"] != backend:
        raise VaultError(f"{path}/ is mounted as {existing['type']}, expected {backend}; move one of them.")


def _ensure_transit_key(client: hvac.Client, name: str, state: VaultState) -> None:
    try:
        key = client.secrets.transit.read_key(name=name)["data"]
    except hvac.exceptions.InvalidPath:
        client.secrets.transit.create_key(name=name, key_type="aes256-gcm96")
        state.changed.append(f"created transit key {name}")
        key = client.secrets.transit.read_key(name=name)["data"]
    if key["type"] != "aes256-gcm96":
        raise VaultError(f"transit key {name} is {key['type']}, expected aes256-gcm96.")
    state.transit_keys[name] = {
        "type": key["type"],
        "latest_version": key["latest_version"],
        "min_decryption_version": key["min_decryption_version"],
    }


def _apply_policies(client: hvac.Client, state: VaultState, policy_dir: Path) -> None:
    for path in sorted(policy_dir.glob("*.hcl")):
        name, text = path.stem, path.read_text()
        try:
            current = client.sys.read_policy(name=name)["data"]["rules"]
        except hvac.exceptions.InvalidPath:
            current = None
        if current != text:
            client.sys.create_or_update_policy(name=name, policy=text)
            state.changed.append(f"wrote policy {name}")
        state.policies.append(name)


def _ensure_approle(client: hvac.Client, state: VaultState, creds_file: Path, addr: str, verify) -> None:
    if "approle/" not in client.sys.list_auth_methods()["data"]:
        client.sys.enable_auth_method(method_type="approle", path="approle")
        state.changed.append("enabled approle auth")
    client.auth.approle.create_or_update_approle(
        role_name=APPROLE,
        token_policies=[APPROLE],
        token_ttl="1h",
        token_max_ttl="4h",
        token_type="service",
        secret_id_ttl="0",
        secret_id_num_uses=0,
    )
    state.auth_methods = sorted(client.sys.list_auth_methods()["data"])
    role_id = client.auth.approle.read_role_id(role_name=APPROLE)["data"]["role_id"]
    if creds_file.exists() and _approle_login_works(creds_file, role_id, addr, verify):
        return
    secret_id = client.auth.approle.generate_secret_id(role_name=APPROLE)["data"]["secret_id"]
    write_private(creds_file, json.dumps({"role_id": role_id, "secret_id": secret_id}))
    state.changed.append(f"issued a secret id for AppRole {APPROLE} (written to {creds_file})")


def _approle_login_works(creds_file: Path, role_id: str, addr: str, verify) -> bool:
    try:
        creds = json.loads(creds_file.read_text())
        if creds.get("role_id") != role_id:
            return False
        hvac.Client(url=addr, verify=verify).auth.approle.login(role_id=role_id, secret_id=creds["secret_id"])
        return True
    except (ValueError, KeyError, hvac.exceptions.VaultError):
        return False


def _check_audit(client: hvac.Client, state: VaultState) -> None:
    devices = client.sys.list_enabled_audit_devices()["data"]
    if not devices:
        try:  # HashiCorp Vault allows this; OpenBao only accepts audit devices declared in its config file
            client.sys.enable_audit_device(device_type="file", options={"file_path": "stdout"})
            state.changed.append("enabled file audit device")
            devices = client.sys.list_enabled_audit_devices()["data"]
        except hvac.exceptions.InvalidRequest as exc:
            raise VaultError(
                "no audit device is enabled and this server refuses to enable one through the API "
                f'({"; ".join(exc.errors or [])}); declare `audit "file" ...` in its config (the local stack '
                "does) and reload it."
            ) from None
    state.audit_devices = sorted(devices)


def _configure_database(client: hvac.Client, state: VaultState, db: DatabaseEngineSettings) -> None:
    url = (
        f"postgresql://{{{{username}}}}:{{{{password}}}}@{db.host}:{db.port}/{db.dbname}"
        f"?sslmode=verify-full&sslrootcert={db.sslrootcert}"
    )
    client.secrets.database.configure(
        name=DB_CONNECTION,
        plugin_name="postgresql-database-plugin",
        verify_connection=True,
        allowed_roles=[DB_ROLE],
        connection_url=url,
        username=db.admin_user,
        password=db.admin_password,
        password_authentication="scram-sha-256",
    )
    creation = [s.replace("{{owner}}", db.owner_role) for s in DB_CREATION]
    client.secrets.database.create_role(
        name=DB_ROLE,
        db_name=DB_CONNECTION,
        creation_statements=creation,
        revocation_statements=DB_REVOCATION,
        default_ttl=db.default_ttl,
        max_ttl=db.max_ttl,
    )
    state.database_roles = sorted(client.secrets.database.list_roles()["data"]["keys"])


def _ensure_kv_secret(client: hvac.Client, path: str, state: VaultState) -> None:
    try:
        client.secrets.kv.v2.read_secret_version(path=path, mount_point="secret", raise_on_deleted_version=True)
    except hvac.exceptions.InvalidPath:
        value = base64.b64encode(secrets.token_bytes(32)).decode()
        client.secrets.kv.v2.create_or_update_secret(path=path, secret={"value": value}, mount_point="secret")
        state.changed.append(f"created secret secret/{path}")


def configure_vault(
    client: hvac.Client,
    *,
    verify: str | bool,
    approle_file: Path,
    database: DatabaseEngineSettings | None,
    policy_dir: Path = POLICY_DIR,
) -> VaultState:
    """Apply the platform's Vault configuration; return what exists afterwards and what this run changed."""
    state = VaultState()
    _ensure_mount(client, "secret", "kv", state, options={"version": "2"})
    _ensure_mount(client, "transit", "transit", state)
    _ensure_mount(client, "database", "database", state)
    _ensure_transit_key(client, DATASETS_KEY, state)
    _ensure_kv_secret(client, DATASET_PATH_KEY, state)
    _apply_policies(client, state, policy_dir)
    _ensure_approle(client, state, approle_file, client.url, verify)
    _check_audit(client, state)
    if database is not None:
        _configure_database(client, state, database)
    state.engines = {k.rstrip("/"): v["type"] for k, v in client.sys.list_mounted_secrets_engines()["data"].items()}
    return state
