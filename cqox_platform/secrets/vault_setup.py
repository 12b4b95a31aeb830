"""Bring a Vault (OpenBao) to the state the platform needs, idempotently, and report that state.

Runs with the bootstrap token (``vault_admin``). Every step reads first and writes only what differs, so a
second run changes nothing. The report lists engines, policies and key versions, never a secret.
"""

from __future__ import annotations

import base64
import json
import re
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import hvac
import hvac.exceptions

from cqox_platform.backup.archive.archiver_settings import ARCHIVER_APPROLE, BACKUPS_KEY, ArchiverSettings
from cqox_platform.backup.archive.archiver_settings import S3_SECRET_PATH as ARCHIVER_S3_SECRET
from cqox_platform.db.roles import ENSURE_RUNTIME_GROUP, RUNTIME_GROUP, is_schema_owner_role
from cqox_platform.errors import CqoxError, VaultError
from cqox_platform.fsutil import write_file, write_private
from cqox_platform.package_data import package_path
from cqox_platform.settings import Settings, SettingsError

POLICY_DIR = package_path("cqox_platform.secrets", "policies")
DATASETS_KEY = "cqox-datasets"
APPROLE = "cqox-platform"
#: The identity that reads raft snapshots and nothing else (policy ``policies/cqox-vault-snapshot.hcl``).
SNAPSHOT_APPROLE = "cqox-vault-snapshot"
DB_CONNECTION = "cqox-prod"
#: Vault database role of the runtime login (DML only; ``CQOX_PG_VAULT_ROLE``).
DB_ROLE = "cqox-platform"
#: Vault database role of the migrator login (the schema owner; ``CQOX_PG_VAULT_MIGRATOR_ROLE``).
DB_MIGRATOR_ROLE = "cqox-migrator"
#: KV path of the key pgcrypto uses for dataset object paths.
DATASET_PATH_KEY = "cqox/datasets-path-key"

# Two kinds of short-lived users (``cqox_platform.db.roles``). The migrator acts as the schema owner through
# membership (NOINHERIT + a default ``role``), so it runs migrations and owns what it creates; dropping it on
# revocation never orphans objects. The runtime user inherits the DML-only group and nothing else.
DB_MIGRATOR_CREATION = [
    """CREATE ROLE "{{name}}" WITH LOGIN PASSWORD '{{password}}' VALID UNTIL '{{expiration}}' NOINHERIT;""",
    """GRANT "{{owner}}" TO "{{name}}";""",
    """ALTER ROLE "{{name}}" SET role = '{{owner}}';""",
]
DB_RUNTIME_CREATION = [
    ENSURE_RUNTIME_GROUP,
    """CREATE ROLE "{{name}}" WITH LOGIN PASSWORD '{{password}}' VALID UNTIL '{{expiration}}' INHERIT """
    """NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS;""",
    f"""GRANT {RUNTIME_GROUP} TO "{{{{name}}}}";""",
]
DB_REVOCATION = [
    """ALTER ROLE "{{name}}" NOLOGIN;""",
    """SELECT pg_terminate_backend(pid) FROM pg_stat_activity
       WHERE usename = '{{name}}' AND pid <> pg_backend_pid();""",
    """DROP ROLE IF EXISTS "{{name}}";""",
]


#: The longest a Vault-issued PostgreSQL login may live, renewals included: a leaked migrator password carries the
#: schema owner's rights for a day at most. A constant, not a setting: a cap the same operator can raise is none.
DB_LOGIN_TTL_CAP_SECONDS = 24 * 3600


@dataclass(frozen=True)
class DatabaseLoginLimits:
    """Which role Vault's migrator logins act as, and how long Vault-issued PostgreSQL logins live.

    All three end up in what Vault runs as the database admin (``GRANT "{{owner}}" TO ...``, the lease
    lifetimes), so they come from the installation's settings (never a run's config) and are checked when this
    object is made, by whoever makes it: the role against the platform's own namespace, the lifetimes against
    :data:`DB_LOGIN_TTL_CAP_SECONDS`.
    """

    owner_role: str
    default_ttl: str
    max_ttl: str

    def __post_init__(self) -> None:
        role_env = Settings.env_name("vault_db_owner_role")
        if not is_schema_owner_role(self.owner_role):
            raise SettingsError(
                f"{role_env}={self.owner_role!r} is not a role migrator logins may act as: Vault grants it to "
                "every migrator login as the database admin, so only the platform's own roles are allowed "
                f"(`cqox_` and lowercase letters, digits or `_`, at most 63 characters, not `{RUNTIME_GROUP}`); "
                f"set {role_env} to the role that owns the CQOX schema (`cqox_admin` on the local stack)."
            )
        default, most = self.default_ttl_seconds, self.max_ttl_seconds
        default_env, max_env = Settings.env_name("vault_db_default_ttl"), Settings.env_name("vault_db_max_ttl")
        for env, text, seconds in ((default_env, self.default_ttl, default), (max_env, self.max_ttl, most)):
            if seconds > DB_LOGIN_TTL_CAP_SECONDS:
                raise SettingsError(
                    f"{env}={text!r} is over the cap of {DB_LOGIN_TTL_CAP_SECONDS // 3600}h for Vault-issued "
                    f"PostgreSQL logins; set {env} to {DB_LOGIN_TTL_CAP_SECONDS // 3600}h or less."
                )
        if default > most:
            raise SettingsError(
                f"{default_env}={self.default_ttl!r} is longer than {max_env}={self.max_ttl!r}, which cuts every "
                f"login short; set {default_env} to {self.max_ttl} or less."
            )

    @property
    def default_ttl_seconds(self) -> int:
        return _setting_duration(self.default_ttl, "vault_db_default_ttl")

    @property
    def max_ttl_seconds(self) -> int:
        return _setting_duration(self.max_ttl, "vault_db_max_ttl")

    @classmethod
    def from_settings(cls, settings: Settings) -> DatabaseLoginLimits:
        return cls(settings.vault_db_owner_role, settings.vault_db_default_ttl, settings.vault_db_max_ttl)

    def migrator_creation_statements(self) -> list[str]:
        """The migrator role's creation statements with the owner role in place (checked above)."""
        return [s.replace("{{owner}}", self.owner_role) for s in DB_MIGRATOR_CREATION]


@dataclass(frozen=True)
class DatabaseEngineSettings:
    """How Vault reaches PostgreSQL to mint credentials (the password stays in memory for the call only)."""

    host: str
    port: int
    dbname: str
    admin_user: str
    admin_password: str = field(repr=False)
    sslrootcert: str
    logins: DatabaseLoginLimits


@dataclass(frozen=True)
class ArchiverSetup:
    """What PostgreSQL's WAL archiver needs: where its settings file goes, who owns it, and the S3 target."""

    settings_file: Path
    os_user: str
    s3_endpoint: str
    s3_cacert: str
    bucket: str
    access_key_id: str = field(repr=False)
    secret_access_key: str = field(repr=False)
    vault_cacert: str = ""


@dataclass
class VaultState:
    engines: dict[str, str] = field(default_factory=dict)
    policies: list[str] = field(default_factory=list)
    auth_methods: list[str] = field(default_factory=list)
    audit_devices: list[str] = field(default_factory=list)
    transit_keys: dict[str, dict[str, Any]] = field(default_factory=dict)
    database_roles: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    #: AppRole -> the secret-id its credentials file holds after this run: expiry (unix time), lifetime (s).
    secret_ids: dict[str, dict[str, float]] = field(default_factory=dict)


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


@dataclass(frozen=True)
class AppRoleLimits:
    """How far a leaked secret-id reaches: for how long, and from where (Vault's ``secret_id_ttl`` and CIDRs).

    The secret-id is renewed by ``vault_config`` (scheduled daily): once less than half its lifetime is left, a
    new one is written to the credentials file and the old one destroyed, so a consumer reading the file always
    has at least half a lifetime in hand; a missed week of schedules at the default 720 h changes nothing.
    """

    secret_id_ttl: str = "720h"
    bound_cidrs: tuple[str, ...] = ("127.0.0.1/32",)

    @property
    def ttl_seconds(self) -> int:
        return _duration_seconds(self.secret_id_ttl)

    @classmethod
    def from_settings(cls, settings: Any) -> AppRoleLimits:
        """The limits the settings contract names (``vault_config`` and the stack's bootstrap use the same)."""
        cidrs = tuple(c.strip() for c in settings.vault_approle_cidrs.split(",") if c.strip())
        return cls(secret_id_ttl=settings.vault_secret_id_ttl, bound_cidrs=cidrs)


_DURATION = re.compile(r"([0-9]{1,9})([smhd]?)")


def _positive_seconds(text: str) -> int | None:
    """``720h``, ``30d``, ``90m``, ``3600s`` or ``3600`` in seconds; ``None`` for anything else, 0 included
    (0 means "never expires" to Vault, which is what every lifetime here exists to prevent)."""
    match = _DURATION.fullmatch(text.strip())
    if match is None or int(match[1]) == 0:
        return None
    return int(match[1]) * {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}[match[2]]


def _duration_seconds(text: str) -> int:
    """A secret-id's positive lifetime."""
    seconds = _positive_seconds(text)
    if seconds is None:
        raise VaultError(f"secret-id lifetime {text!r} must be positive, like 720h, 30d, 3600s or 3600.")
    return seconds


def _setting_duration(text: str, field_name: str) -> int:
    """The positive lifetime a setting holds, or an error saying which variable to set to what."""
    seconds = _positive_seconds(text)
    if seconds is None:
        env = Settings.env_name(field_name)
        default = Settings.model_fields[field_name].default
        raise SettingsError(
            f"{env}={text!r} must be a positive duration like 1h, 90m or 3600s; set {env} to one (default {default})."
        )
    return seconds


#: A fresh secret-id's expiry can read a little over its lifetime ahead (clocks, rounding): not a reason to renew.
RENEWAL_CLOCK_SLACK_SECONDS = 60


def secret_id_needs_renewal(lookup: dict[str, Any] | None, limits: AppRoleLimits, now: float) -> str | None:
    """Why the secret-id described by Vault's ``lookup`` must be replaced, or ``None`` while it is current.

    Fails closed: an unknown, unbounded (issued before secret-ids had a lifetime), unbound or half-spent
    secret-id is replaced, and so is one that would outlive the configured lifetime.
    """
    if not lookup:
        return "Vault does not know it"
    expires = lookup.get("expiration_time") or ""
    if not expires or expires.startswith("0001-"):
        return "it never expires"
    if _normalise(list(lookup.get("cidr_list") or [])) != _normalise(list(limits.bound_cidrs)):
        return "its CIDR binding differs"
    left = _expiry(expires) - now
    if left < limits.ttl_seconds / 2:
        return f"less than half its lifetime is left ({max(left, 0) / 3600:.1f} h)"
    if left > limits.ttl_seconds + RENEWAL_CLOCK_SLACK_SECONDS:
        # Issued under a longer lifetime than the setting now allows: a shortened limit takes effect at once.
        return f"it outlives the configured lifetime {limits.secret_id_ttl} ({left / 3600:.1f} h left)"
    return None


def _expiry(text: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def _ensure_approle(
    client: hvac.Client,
    state: VaultState,
    creds_file: Path,
    addr: str,
    verify,
    role: str = APPROLE,
    limits: AppRoleLimits = AppRoleLimits(),
) -> tuple[dict[str, str] | None, str | None]:
    """Create or update AppRole ``role`` (policy of the same name); issue a secret id unless the file's is current.

    Returns fresh credentials when it issued them (the caller writes them, then destroys the replaced secret-id
    it also returns), ``(None, None)`` when the file's secret-id works and has half its lifetime left.
    """
    import time

    if "approle/" not in client.sys.list_auth_methods()["data"]:
        client.sys.enable_auth_method(method_type="approle", path="approle")
        state.changed.append("enabled approle auth")
    cidrs = list(limits.bound_cidrs)
    wanted = {
        "token_policies": [role],
        "token_ttl": 3600,
        "token_max_ttl": 4 * 3600,
        "token_type": "service",
        "secret_id_ttl": limits.ttl_seconds,
        "secret_id_num_uses": 0,
        "secret_id_bound_cidrs": cidrs,
        "token_bound_cidrs": cidrs,
    }
    try:
        current = client.auth.approle.read_role(role_name=role)["data"]
    except hvac.exceptions.InvalidPath:
        current = {}
    if any(_normalise(current.get(k)) != _normalise(v) for k, v in wanted.items()):
        client.auth.approle.create_or_update_approle(role_name=role, **wanted)
        state.changed.append(f"configured AppRole {role} (secret-id TTL {limits.secret_id_ttl}, bound to {cidrs})")
    state.auth_methods = sorted(client.sys.list_auth_methods()["data"])
    role_id = client.auth.approle.read_role_id(role_name=role)["data"]["role_id"]
    old_secret = _current_secret_id(creds_file, role_id, addr, verify)
    reason = "the credentials file has no working secret-id"
    if old_secret is not None:
        try:
            lookup = client.auth.approle.read_secret_id(role_name=role, secret_id=old_secret)
        except hvac.exceptions.VaultError:
            lookup = None
        reason = secret_id_needs_renewal((lookup or {}).get("data"), limits, time.time())
        if reason is None:
            _record_secret_id(state, role, (lookup or {}).get("data"), limits)
            return None, None
    secret_id = client.auth.approle.generate_secret_id(role_name=role, cidr_list=cidrs)["data"]["secret_id"]
    state.changed.append(f"issued a secret id for AppRole {role} ({reason}; written to {creds_file})")
    _record_secret_id(
        state, role, client.auth.approle.read_secret_id(role_name=role, secret_id=secret_id)["data"], limits
    )
    return {"role_id": role_id, "secret_id": secret_id}, old_secret


def _record_secret_id(state: VaultState, role: str, lookup: dict[str, Any] | None, limits: AppRoleLimits) -> None:
    """What the run reports and pushes about the secret-id left in the file: when it expires, its lifetime."""
    expires = (lookup or {}).get("expiration_time") or ""
    if expires and not expires.startswith("0001-"):
        state.secret_ids[role] = {"expires_at": _expiry(expires), "ttl_seconds": float(limits.ttl_seconds)}


def _normalise(value: Any) -> Any:
    """Compare role settings as Vault means them: lists unordered, a /32 or /128 the same as a bare address."""
    if isinstance(value, list):
        return sorted(_cidr(v) if isinstance(v, str) else v for v in value)
    return value


def _cidr(text: str) -> str:
    import ipaddress

    try:
        return str(ipaddress.ip_network(text, strict=False))
    except ValueError:
        return text


def _retire_secret_id(client: hvac.Client, state: VaultState, role: str, secret_id: str | None) -> None:
    """Destroy a replaced secret-id once its successor is on disk, so only one per identity is ever valid."""
    if secret_id is None:
        return
    try:
        client.auth.approle.destroy_secret_id(role_name=role, secret_id=secret_id)
        state.changed.append(f"destroyed the replaced secret id of AppRole {role}")
    except hvac.exceptions.VaultError:
        pass  # already expired or gone: nothing left to retire


def _current_secret_id(creds_file: Path, role_id: str, addr: str, verify) -> str | None:
    """The file's secret-id if it still logs in, else ``None``."""
    try:
        creds = json.loads(creds_file.read_text())
        if creds.get("role_id") != role_id:
            return None
        hvac.Client(url=addr, verify=verify).auth.approle.login(role_id=role_id, secret_id=creds["secret_id"])
        return creds["secret_id"]
    except (OSError, ValueError, KeyError, hvac.exceptions.VaultError):
        return None


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
        allowed_roles=[DB_ROLE, DB_MIGRATOR_ROLE],
        connection_url=url,
        username=db.admin_user,
        password=db.admin_password,
        password_authentication="scram-sha-256",
    )
    roles = {DB_MIGRATOR_ROLE: db.logins.migrator_creation_statements(), DB_ROLE: DB_RUNTIME_CREATION}
    for name, creation in roles.items():
        client.secrets.database.create_role(
            name=name,
            db_name=DB_CONNECTION,
            creation_statements=creation,
            revocation_statements=DB_REVOCATION,
            default_ttl=db.logins.default_ttl_seconds,
            max_ttl=db.logins.max_ttl_seconds,
        )
    state.database_roles = sorted(client.secrets.database.list_roles()["data"]["keys"])


def _ensure_kv_secret(client: hvac.Client, path: str, state: VaultState) -> None:
    try:
        client.secrets.kv.v2.read_secret_version(path=path, mount_point="secret", raise_on_deleted_version=True)
    except hvac.exceptions.InvalidPath:
        value = base64.b64encode(secrets.token_bytes(32)).decode()
        client.secrets.kv.v2.create_or_update_secret(path=path, secret={"value": value}, mount_point="secret")
        state.changed.append(f"created secret secret/{path}")


def _seed_pagerduty_key(client: hvac.Client, key_file: Path, state: VaultState) -> None:
    """The local stack only: store its receiver's integration key where ``alertmanager_config`` reads a real one.

    Never overwrites: a key an operator put there (a real PagerDuty service) wins over the local one.
    """
    from cqox_platform.alerts.routing import PAGERDUTY_FIELD, PAGERDUTY_SECRET

    try:
        client.secrets.kv.v2.read_secret_version(
            path=PAGERDUTY_SECRET, mount_point="secret", raise_on_deleted_version=True
        )
    except hvac.exceptions.InvalidPath:
        key = key_file.read_text().strip()
        client.secrets.kv.v2.create_or_update_secret(
            path=PAGERDUTY_SECRET, secret={PAGERDUTY_FIELD: key}, mount_point="secret"
        )
        state.changed.append(f"stored the local receiver's PagerDuty routing key in secret/{PAGERDUTY_SECRET}")


def _configure_archiver(
    client: hvac.Client, state: VaultState, setup: ArchiverSetup, verify, limits: AppRoleLimits
) -> None:
    """The WAL archiver's AppRole, its S3 credentials in KV, and its settings file owned by PostgreSQL's user."""
    wanted = {"access_key_id": setup.access_key_id, "secret_access_key": setup.secret_access_key}
    try:
        current = client.secrets.kv.v2.read_secret_version(
            path=ARCHIVER_S3_SECRET, mount_point="secret", raise_on_deleted_version=True
        )["data"]["data"]
    except hvac.exceptions.InvalidPath:
        current = None
    if current != wanted:
        client.secrets.kv.v2.create_or_update_secret(path=ARCHIVER_S3_SECRET, secret=wanted, mount_point="secret")
        state.changed.append(f"stored the backup bucket's S3 credentials in secret/{ARCHIVER_S3_SECRET}")
    settings_ok = False
    window: dict[str, Any] = {}  # an operator's data-key cache window survives the rewrite
    if setup.settings_file.exists():
        try:
            existing = ArchiverSettings.load(setup.settings_file)
            window = {
                "data_key_max_age_seconds": existing.data_key_max_age_seconds,
                "data_key_max_uses": existing.data_key_max_uses,
            }
            settings_ok = (
                existing.s3_endpoint == setup.s3_endpoint
                and existing.bucket == setup.bucket
                and existing.vault_addr == client.url
                and existing.vault_cacert == setup.vault_cacert
                and existing.s3_cacert == setup.s3_cacert
            )
        except CqoxError:
            settings_ok = False
    fresh, replaced = _ensure_approle(
        client, state, setup.settings_file, client.url, verify, role=ARCHIVER_APPROLE, limits=limits
    )
    if settings_ok and fresh is None:
        return
    if fresh is None:  # the settings changed but the secret id still works: keep it
        existing = ArchiverSettings.load(setup.settings_file)
        fresh = {"role_id": existing.role_id, "secret_id": existing.secret_id}
    settings = ArchiverSettings(
        vault_addr=client.url,
        vault_cacert=setup.vault_cacert,
        role_id=fresh["role_id"],
        secret_id=fresh["secret_id"],
        s3_endpoint=setup.s3_endpoint,
        s3_cacert=setup.s3_cacert,
        bucket=setup.bucket,
        **window,
    )
    # The directory belongs to PostgreSQL's user: replace the file, never write or chown through a planted link.
    write_file(setup.settings_file, settings.to_json(), mode=0o600, owner=setup.os_user)
    state.changed.append(f"wrote the WAL archiver's settings {setup.settings_file} (owner {setup.os_user})")
    _retire_secret_id(client, state, ARCHIVER_APPROLE, replaced)


def configure_archiver(
    client: hvac.Client,
    *,
    verify: str | bool,
    archiver: ArchiverSetup,
    policy_dir: Path = POLICY_DIR,
    approle_limits: AppRoleLimits = AppRoleLimits(),
) -> VaultState:
    """Only what the WAL archiver needs: KV and Transit, the backups key, the policies, its AppRole and settings.

    The local stack runs this during ``up``, before PostgreSQL starts, so the first WAL segment already has a
    working archiver; ``configure_vault`` (``vault_config``) runs the same steps and finds them done.
    """
    state = VaultState()
    _ensure_mount(client, "secret", "kv", state, options={"version": "2"})
    _ensure_mount(client, "transit", "transit", state)
    _ensure_transit_key(client, BACKUPS_KEY, state)
    _apply_policies(client, state, policy_dir)
    _configure_archiver(client, state, archiver, verify, approle_limits)
    return state


def configure_vault(
    client: hvac.Client,
    *,
    verify: str | bool,
    approle_file: Path,
    database: DatabaseEngineSettings | None,
    policy_dir: Path = POLICY_DIR,
    archiver: ArchiverSetup | None = None,
    approle_limits: AppRoleLimits = AppRoleLimits(),
    pagerduty_key_file: Path | None = None,
    snapshot_approle_file: Path | None = None,
) -> VaultState:
    """Apply the platform's Vault configuration; return what exists afterwards and what this run changed.

    ``snapshot_approle_file``: where the snapshot identity's credentials go (``None``: no snapshot identity).
    """
    state = VaultState()
    _ensure_mount(client, "secret", "kv", state, options={"version": "2"})
    _ensure_mount(client, "transit", "transit", state)
    _ensure_mount(client, "database", "database", state)
    _ensure_transit_key(client, DATASETS_KEY, state)
    _ensure_transit_key(client, BACKUPS_KEY, state)
    _ensure_kv_secret(client, DATASET_PATH_KEY, state)
    if pagerduty_key_file is not None:
        _seed_pagerduty_key(client, pagerduty_key_file, state)
    _apply_policies(client, state, policy_dir)
    fresh, replaced = _ensure_approle(client, state, approle_file, client.url, verify, limits=approle_limits)
    if fresh is not None:
        write_private(approle_file, json.dumps(fresh))
        _retire_secret_id(client, state, APPROLE, replaced)
    if snapshot_approle_file is not None:
        fresh, replaced = _ensure_approle(
            client, state, snapshot_approle_file, client.url, verify, role=SNAPSHOT_APPROLE, limits=approle_limits
        )
        if fresh is not None:
            write_private(snapshot_approle_file, json.dumps(fresh))
            _retire_secret_id(client, state, SNAPSHOT_APPROLE, replaced)
    if archiver is not None:
        _configure_archiver(client, state, archiver, verify, approle_limits)
    _check_audit(client, state)
    if database is not None:
        _configure_database(client, state, database)
    state.engines = {k.rstrip("/"): v["type"] for k, v in client.sys.list_mounted_secrets_engines()["data"].items()}
    return state
