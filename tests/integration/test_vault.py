"""Vault (OpenBao) configuration, identities, failures and transport security against the real stack."""

from __future__ import annotations

import base64
import ipaddress
import json
import os
import socket
import ssl
import threading
from pathlib import Path
from unittest import mock

import psycopg
import pytest

from assets import security
from cqox_platform.errors import VaultError, VaultPermissionError, VaultSealedError, VaultUnreachableError
from cqox_platform.pgserver import free_port
from cqox_platform.resources.postgres import PostgresResource
from cqox_platform.resources.vault import VaultResource
from cqox_platform.secrets.transport import probe_tls
from tests.helpers import materialize_vault_config, postgres_admin, vault_admin, vault_platform


def _meta(result, key):
    (event,) = result.asset_materializations_for_node("vault_config")
    return event.metadata[key].value


def test_vault_config_materializes_idempotently_and_lists_no_secret(stack, vault_configured):
    assert set(_meta(vault_configured, "engines")) >= {"secret", "transit", "database"}
    assert _meta(vault_configured, "policies") == ["cqox-platform", "cqox-vault-snapshot", "cqox-wal-archiver"]
    assert _meta(vault_configured, "transit_keys")["cqox-datasets"]["type"] == "aes256-gcm96"
    assert _meta(vault_configured, "transit_keys")["cqox-backups"]["type"] == "aes256-gcm96"
    assert _meta(vault_configured, "audit_devices") == ["file/"]
    assert _meta(vault_configured, "database_roles") == ["cqox-migrator", "cqox-platform"]
    again = materialize_vault_config(stack)
    assert _meta(again, "changed_this_run") == []
    secrets = json.loads(Path(stack.env()["CQOX_VAULT_APPROLE_FILE"]).read_text())
    dumped = json.dumps(
        {k: str(v.value) for k, v in again.asset_materializations_for_node("vault_config")[0].metadata.items()}
    )
    assert secrets["secret_id"] not in dumped and secrets["role_id"] not in dumped
    checks = {e.check_name: e.passed for e in again.get_asset_check_evaluations()}
    assert checks == {"transport_security": True}


def test_the_migrator_role_has_the_owner_and_lifetimes_of_the_settings(stack, vault_configured):
    """What Vault runs as the database admin comes from the settings (defaults here), checked before use."""
    role = vault_admin(stack).client().secrets.database.read_role("cqox-migrator")["data"]
    assert (role["default_ttl"], role["max_ttl"]) == (3600, 86400)
    assert 'GRANT "cqox_admin" TO "{{name}}";' in role["creation_statements"]


def test_approle_identity_is_least_privilege(stack, vault_configured):
    vault = vault_platform(stack)
    key = vault.datakey("cqox-datasets")
    assert len(key.plaintext) == 32 and key.wrapped.startswith("vault:v")
    assert vault.decrypt("cqox-datasets", key.wrapped) == key.plaintext
    with pytest.raises(VaultPermissionError, match="denied"):
        vault.call("listing mounts", lambda: vault.client().sys.list_mounted_secrets_engines())
    with pytest.raises(VaultPermissionError):
        vault.call(
            "reading another path",
            lambda: vault.client().secrets.kv.v2.read_secret_version(path="other/thing", mount_point="secret"),
        )


def test_wal_archiver_identity_is_least_privilege_and_its_file_belongs_to_postgres(stack, vault_configured):
    import pwd

    from cqox_platform.backup.archive.archiver_settings import ArchiverSettings
    from cqox_platform.secrets.vault_client import VaultClient

    path = Path(stack.env()["CQOX_WAL_ARCHIVER_CONFIG"])
    st = path.stat()
    assert st.st_mode & 0o777 == 0o600 and st.st_uid == pwd.getpwnam("postgres").pw_uid
    settings = ArchiverSettings.load(path)
    assert settings.secret_id not in repr(settings)
    vault = VaultClient(
        settings.vault_addr, settings.vault_cacert, role_id=settings.role_id, secret_id=settings.secret_id
    )
    assert settings.secret_id not in repr(vault)
    key = vault.key_provider("cqox-backups").generate_data_key()
    assert vault.key_provider("cqox-backups").unwrap(key.wrapped) == key.plaintext
    assert set(vault.read_secret("cqox/backups/s3")) == {"access_key_id", "secret_access_key"}
    with pytest.raises(VaultPermissionError):
        vault.key_provider("cqox-datasets").generate_data_key()
    with pytest.raises(VaultPermissionError):
        vault.read_secret("cqox/datasets-path-key")


def test_vault_config_keeps_an_operators_data_key_window_when_it_rewrites_the_archiver_file(stack, vault_configured):
    """The pusher's data-key cache window is an operator's edit of the archiver settings; ``vault_config`` rewrites
    the file when its endpoint or bucket is wrong, and must not silently put the default window back."""
    from cqox_platform.backup.archive.archiver_settings import ArchiverSettings
    from cqox_platform.fsutil import write_file
    from cqox_platform.pgserver import PG_OS_USER

    path = Path(stack.env()["CQOX_WAL_ARCHIVER_CONFIG"])
    shipped = path.read_text()
    edited = {**json.loads(shipped), "data_key_max_age_seconds": 120, "data_key_max_uses": 64, "bucket": "moved"}
    write_file(path, json.dumps(edited), mode=0o600, owner=PG_OS_USER)
    try:
        assert materialize_vault_config(stack).success
        settings = ArchiverSettings.load(path)
        assert settings.bucket == json.loads(shipped)["bucket"]  # rewritten from the platform's settings
        assert (settings.data_key_max_age_seconds, settings.data_key_max_uses) == (120, 64)
    finally:
        write_file(path, shipped, mode=0o600, owner=PG_OS_USER)


def test_platform_logs_in_to_postgres_with_vault_issued_users_over_tls13(stack, vault_configured):
    pg = PostgresResource(
        host="127.0.0.1",
        port=int(stack.env()["CQOX_PG_PORT"]),
        dbname="cqox_prod",
        user="unused",
        sslrootcert=stack.env()["CQOX_PG_SSLROOTCERT"],
        vault=vault_platform(stack),
        vault_db_role="cqox-platform",
    )
    with pg.connect() as conn:
        session_user, tls = conn.execute(
            "SELECT session_user, (SELECT version FROM pg_stat_ssl WHERE pid = pg_backend_pid())"
        ).fetchone()
    assert session_user.startswith("v-approle-cqox-pla")
    assert tls == "TLSv1.3"
    first_lease = pg.client()._lease["lease_id"]

    # Near expiry the lease is renewed, same user.
    pg.client()._lease_expires_at = 0.0 + pg.client()._lease_expires_at - pg.client()._lease["lease_duration"] * 0.9
    with pg.connect() as conn:
        assert conn.execute("SELECT session_user").fetchone()[0] == session_user
    assert pg.client()._lease["lease_id"] == first_lease

    # A revoked lease (its user dropped) is replaced by a fresh user on the next connect.
    vault_platform(stack).revoke_lease(first_lease)
    pg.client()._lease_expires_at = 0.0
    with pg.connect() as conn:
        new_user = conn.execute("SELECT session_user").fetchone()[0]
    assert new_user != session_user
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(
            host="127.0.0.1",
            port=int(stack.env()["CQOX_PG_PORT"]),
            dbname="cqox_prod",
            user=session_user,
            password="whatever",
            sslmode="verify-full",
            sslrootcert=stack.env()["CQOX_PG_SSLROOTCERT"],
        )


def _issued(stack, vault_role: str) -> PostgresResource:
    """A login issued by Vault's database engine for ``vault_role`` (as the code location builds it)."""
    env = stack.env()
    return PostgresResource(
        host="127.0.0.1",
        port=int(env["CQOX_PG_PORT"]),
        dbname="cqox_prod",
        user="vault-issued",
        sslrootcert=env["CQOX_PG_SSLROOTCERT"],
        vault=vault_platform(stack),
        vault_db_role=vault_role,
    )


# Issue 13, item 11(e): what a runtime-issued user must not do to the schema. Each is refused by PostgreSQL.
SCHEMA_CHANGES = {
    "create table": "CREATE TABLE sneaky (id int)",
    "create schema": "CREATE SCHEMA sneaky",
    "drop table": "DROP TABLE analysis_results",
    "alter table": "ALTER TABLE datasets ADD COLUMN sneaky text",
    "truncate": "TRUNCATE audit_log",
    "create index": "CREATE INDEX sneaky ON datasets (name)",
    "rewrite the audit trail": "UPDATE audit_log SET action = 'forged'",
    "erase the audit trail": "DELETE FROM audit_log",
    "forge migration history": "DELETE FROM schema_migrations",
    "forge the schema fingerprint": "UPDATE schema_fingerprint SET fingerprint = 'forged'",
}


@pytest.fixture(scope="module")
def migrated(stack, vault_configured):
    """cqox_prod at the newest migration, applied by the admin login (works before and after the role split)."""
    from cqox_platform.schema import MigrationRunner

    with postgres_admin(stack).connect(autocommit=True) as conn:
        MigrationRunner().migrate(conn)


@pytest.mark.parametrize("change", sorted(SCHEMA_CHANGES))
def test_runtime_issued_users_cannot_change_the_schema(stack, migrated, change):
    runtime = _issued(stack, "cqox-platform")
    try:
        with runtime.connect(autocommit=True) as conn, pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute(SCHEMA_CHANGES[change])
    finally:
        runtime.client().close()


def test_runtime_issued_users_read_and_write_the_cqox_tables(stack, migrated):
    runtime = _issued(stack, "cqox-platform")
    try:
        with runtime.connect() as conn:
            conn.execute("INSERT INTO audit_log (user_id, action) VALUES ('test', 'roles.dml')")
            (dataset_id,) = conn.execute(
                "INSERT INTO datasets (name, status) VALUES ('roles-test', 'new') RETURNING id"
            ).fetchone()
            conn.execute("UPDATE datasets SET status = 'checked' WHERE id = %s", (dataset_id,))
            conn.execute("SELECT id FROM datasets WHERE id = %s FOR UPDATE", (dataset_id,))
            conn.execute("DELETE FROM datasets WHERE id = %s", (dataset_id,))
            assert conn.execute("SELECT count(*) FROM schema_migrations").fetchone()[0] >= 10
            member = conn.execute("SELECT pg_has_role(session_user, 'cqox_runtime', 'USAGE')").fetchone()[0]
            superuser = conn.execute("SELECT rolsuper FROM pg_roles WHERE rolname = current_user").fetchone()[0]
        assert member and not superuser
    finally:
        runtime.client().close()


def test_migrator_issued_users_migrate_and_their_new_tables_reach_the_runtime(stack, migrated):
    """A later migration's table gets the runtime grants by default privileges, with no GRANT in its file."""
    from cqox_platform.schema import MigrationRunner

    migrator, runtime = _issued(stack, "cqox-migrator"), _issued(stack, "cqox-platform")
    try:
        with migrator.connect(autocommit=True) as conn:
            report = MigrationRunner().migrate(conn)
            assert report.current_version >= 10
            conn.execute("CREATE TABLE later_migration_table (id bigserial PRIMARY KEY, note text)")
        try:
            with runtime.connect() as conn:
                conn.execute("INSERT INTO later_migration_table (note) VALUES ('a')")
                conn.execute("UPDATE later_migration_table SET note = 'b'")
                assert conn.execute("SELECT note FROM later_migration_table").fetchall() == [("b",)]
                conn.execute("DELETE FROM later_migration_table")
        finally:
            with migrator.connect(autocommit=True) as conn:
                conn.execute("DROP TABLE later_migration_table")
    finally:
        migrator.client().close()
        runtime.client().close()


def test_audit_log_records_requests_without_secret_values(stack, vault_configured):
    vault = vault_platform(stack)
    key = vault.datakey("cqox-datasets")
    log = Path(stack.service("openbao").audit_log).read_text()
    assert "transit/datakey/plaintext/cqox-datasets" in log
    assert base64.b64encode(key.plaintext).decode() not in log
    token = vault.client().token
    assert token not in log


def test_sealed_vault_gives_its_own_error_and_nothing_else(stack, vault_configured):
    admin = vault_admin(stack)
    vault = vault_platform(stack)
    vault.client()  # logged in before the seal
    admin.client().sys.seal()
    try:
        with pytest.raises(VaultSealedError, match="sealed"):
            vault.datakey("cqox-datasets")
    finally:
        stack.up()  # unseals with the stored key
    assert len(vault.datakey("cqox-datasets").plaintext) == 32


def test_unreachable_and_untrusted_vault_are_named(stack, tmp_path):
    closed = VaultResource(
        addr=f"https://127.0.0.1:{free_port()}",
        cacert=stack.env()["VAULT_CACERT"],
        auth_method="token",
        token_file=stack.env()["CQOX_VAULT_ROOT_TOKEN_FILE"],
    )
    with pytest.raises(VaultUnreachableError, match="unreachable"):
        closed.datakey("cqox-datasets")
    other_ca = tmp_path / "other-ca.pem"
    from cqox_platform.stack.certs import ensure_tls

    other_ca.write_bytes(ensure_tls(tmp_path / "other").ca_cert.read_bytes())
    untrusted = VaultResource(
        addr=stack.env()["VAULT_ADDR"],
        cacert=str(other_ca),
        auth_method="token",
        token_file=stack.env()["CQOX_VAULT_ROOT_TOKEN_FILE"],
    )
    with pytest.raises(VaultUnreachableError, match="certificate did not verify"):
        untrusted.datakey("cqox-datasets")
    missing = VaultResource(
        addr=stack.env()["VAULT_ADDR"], cacert=stack.env()["VAULT_CACERT"], approle_file=str(tmp_path / "nope.json")
    )
    with pytest.raises(VaultError, match="materialize the `vault_config` asset"):
        missing.datakey("cqox-datasets")


def test_transit_versions_rotation_and_retired_versions(stack, vault_configured):
    admin = vault_admin(stack)
    admin.call(
        "creating a scratch key",
        lambda: admin.client().secrets.transit.create_key(name="scratch-rotation", key_type="aes256-gcm96"),
    )
    old = admin.encrypt("scratch-rotation", b"hello")
    assert admin.rotate("scratch-rotation") == 2
    rewrapped = admin.rewrap("scratch-rotation", old)
    assert rewrapped.startswith("vault:v2:")
    admin.set_min_decryption_version("scratch-rotation", 2)
    with pytest.raises(VaultError, match="disallowed by policy"):
        admin.decrypt("scratch-rotation", old)
    assert admin.decrypt("scratch-rotation", rewrapped) == b"hello"
    assert admin.key_info("scratch-rotation")["min_decryption_version"] == 2


class _Tls12Server:
    """A TLS server capped at TLS 1.2 with the stack's certificate: what transport_security must reject."""

    def __init__(self, cert: str, key: str) -> None:
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ctx.maximum_version = ssl.TLSVersion.TLSv1_2
        self.ctx.load_cert_chain(cert, key)
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen()
        self.port = self.sock.getsockname()[1]
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        for _ in range(4):
            try:
                conn, _ = self.sock.accept()
                with self.ctx.wrap_socket(conn, server_side=True) as tls:
                    tls.recv(1)
            except OSError:
                continue


def test_transport_probe_fails_a_tls12_endpoint(stack):
    tls = stack.config.tls_dir
    server = _Tls12Server(str(tls / "server.crt"), str(tls / "server.key"))
    probe = probe_tls("legacy", "127.0.0.1", server.port, str(tls / "ca.crt"))
    assert not probe.ok
    assert probe.accepts_below_tls13
    assert probe.protocol != "TLSv1.3"
    good = probe_tls("vault", "127.0.0.1", stack.config.ports["openbao"], str(tls / "ca.crt"))
    assert good.ok and good.protocol == "TLSv1.3" and good.days_left > 300


def test_transport_check_fails_when_an_endpoint_is_tls12(stack, vault_configured):
    """The asset check itself, pointed at a TLS 1.2 'Vault', fails and says which endpoint."""
    from dagster_aws.s3 import S3Resource

    tls = stack.config.tls_dir
    server = _Tls12Server(str(tls / "server.crt"), str(tls / "server.key"))
    fake_vault = VaultResource(addr=f"https://127.0.0.1:{server.port}", cacert=str(tls / "ca.crt"))
    with mock.patch.dict(os.environ, {"AWS_CA_BUNDLE": stack.env()["AWS_CA_BUNDLE"]}):
        result = security.transport_security(
            postgres=postgres_admin(stack),
            vault=fake_vault,
            s3=S3Resource(endpoint_url=stack.env()["CQOX_S3_ENDPOINT"], region_name="us-east-1"),
        )
    assert result.passed is False
    assert result.metadata["failing"].value == ["vault"]
    endpoints = {r.data["endpoint"]: r.data for r in result.metadata["endpoints"].records}
    assert endpoints["vault"]["accepts < TLS 1.3"] is True and endpoints["postgresql"]["accepts < TLS 1.3"] is False
    assert endpoints["postgresql"]["certificate verifies"] is True and endpoints["postgresql"]["days left"] > 0


def test_platform_token_is_renewed_before_it_expires(stack, vault_configured):
    vault = vault_platform(stack).vault_client()
    client = vault.client()
    token = client.token
    assert vault._token_ttl > 0  # from the AppRole login's answer
    vault._token_expires_at = 0.0  # pretend the TTL ran out: the next call must renew (same token) or re-login
    vault.datakey("cqox-datasets")
    assert vault._token_expires_at > 0
    assert client.token == token  # renewed in place, not a new login


def test_kv_secrets_write_read_and_rotate_without_returning_values(stack, vault_configured):
    vault = vault_platform(stack)
    path = f"cqox/test-{os.getpid()}"
    with pytest.raises(VaultError, match="nothing at the path"):
        vault.read_secret(path)
    assert vault.rotate_secret(path) == 1  # creates it
    first = vault.read_secret(path)["value"]
    assert len(base64.b64decode(first)) == 32
    assert vault.rotate_secret(path) == 2
    assert vault.read_secret(path)["value"] != first


# --- issue 13 item 11 (d): the platform cannot loosen its keys; secret-ids expire and are bound to an address --


@pytest.mark.parametrize(
    "change",
    [
        {"exportable": True},
        {"deletion_allowed": True},
        {"allow_plaintext_backup": True},
        {"min_decryption_version": 1, "deletion_allowed": True},  # smuggled next to the allowed parameter
    ],
    ids=["exportable", "deletion_allowed", "allow_plaintext_backup", "smuggled"],
)
def test_platform_cannot_change_transit_key_settings(stack, vault_configured, change):
    vault = vault_platform(stack)
    with pytest.raises(VaultPermissionError):
        vault.call(
            "changing transit key settings",
            lambda: vault.client().secrets.transit.update_key_configuration(name="cqox-datasets", **change),
        )
    key = vault_admin(stack).client().secrets.transit.read_key(name="cqox-datasets")["data"]
    assert key["exportable"] is False and key["deletion_allowed"] is False


def test_platform_can_still_rotate_and_retire_key_versions(stack, vault_configured):
    vault = vault_platform(stack)
    info = vault.key_info("cqox-datasets")
    assert vault.rotate("cqox-datasets") == info["latest_version"] + 1
    vault.set_min_decryption_version("cqox-datasets", info["min_decryption_version"])  # allowed, and a no-op here
    assert vault.key_info("cqox-datasets")["min_decryption_version"] == info["min_decryption_version"]


def _login_from(stack, source: str, role_id: str, secret_id: str) -> int:
    """HTTP status of an AppRole login whose TCP connection comes from loopback address ``source``."""
    import http.client
    from urllib.parse import urlparse

    env = stack.env()
    url = urlparse(env["VAULT_ADDR"])
    context = ssl.create_default_context(cafile=env["VAULT_CACERT"])
    conn = http.client.HTTPSConnection(url.hostname, url.port, context=context, source_address=(source, 0), timeout=10)
    try:
        conn.request(
            "POST",
            "/v1/auth/approle/login",
            body=json.dumps({"role_id": role_id, "secret_id": secret_id}),
            headers={"Content-Type": "application/json"},
        )
        return conn.getresponse().status
    finally:
        conn.close()


def test_approle_secret_ids_expire_and_log_in_only_from_the_bound_address(stack, vault_configured):
    from datetime import UTC, datetime

    from cqox_platform.backup.archive.archiver_settings import ArchiverSettings

    env = stack.env()
    platform = json.loads(Path(env["CQOX_VAULT_APPROLE_FILE"]).read_text())
    snapshot = json.loads(Path(env["CQOX_VAULT_SNAPSHOT_APPROLE_FILE"]).read_text())
    archiver = ArchiverSettings.load(Path(env["CQOX_WAL_ARCHIVER_CONFIG"]))
    admin = vault_admin(stack).client()
    for role, role_id, secret_id in (
        ("cqox-platform", platform["role_id"], platform["secret_id"]),
        ("cqox-vault-snapshot", snapshot["role_id"], snapshot["secret_id"]),
        ("cqox-wal-archiver", archiver.role_id, archiver.secret_id),
    ):
        config = admin.auth.approle.read_role(role_name=role)["data"]
        assert config["secret_id_ttl"] > 0, f"{role}: secret-ids never expire"
        for field in ("secret_id_bound_cidrs", "token_bound_cidrs"):  # Vault may print a /32 as a bare address
            assert [str(ipaddress.ip_network(c)) for c in config[field]] == ["127.0.0.1/32"], f"{role}: {field}"
        lookup = admin.auth.approle.read_secret_id(role_name=role, secret_id=secret_id)["data"]
        expires = datetime.fromisoformat(lookup["expiration_time"].replace("Z", "+00:00"))
        assert expires.year > 1 and expires > datetime.now(UTC), f"{role}: the secret-id in use never expires"
        assert _login_from(stack, "127.0.0.1", role_id, secret_id) == 200
        assert _login_from(stack, "127.0.0.2", role_id, secret_id) in (400, 403), f"{role}: login from anywhere"
