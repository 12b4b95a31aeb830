"""Every environment variable the platform reads, in one typed object: the settings contract.

Like pgBackRest's option table, this one class is the list of the platform's knobs: the CLI, the resources
of the code location, sensors, assets and the local stack all read their configuration from it, and
``cqox-platform stack env`` renders its values from it, so the names cannot drift apart again. Each field
says what it means; ``source`` says who sets it: ``stack`` (``cqox-platform stack env`` prints it) or
``operator`` (set by hand when the default does not fit).

Nothing else in the platform reads ``os.environ`` for a ``CQOX_*`` name. Loading the settings needs no
running service and no variable: a field a run needs but nobody set is ``None``, and ``require`` turns that
into one line saying which variable is missing and how to set it.

Libraries read a few more variables on the platform's behalf (boto3 the ``AWS_*`` ones, libpq the ``PG*``
ones, Dagster ``DAGSTER_HOME``); ``LIBRARY_ENV`` lists the ones the stack sets for them.

The WAL archiving fast path does not import this module (pydantic-settings costs about 0.1 s of start-up):
PostgreSQL hands ``wal-push`` everything it needs on the command line and in the archiver settings file.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from datetime import date
from pathlib import Path
from typing import Any, Literal

from pydantic import AliasChoices, Field, PositiveInt, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from cqox_platform.errors import CqoxError

Source = Literal["stack", "operator"]

#: What the stack sets for libraries and tools that read their own variables (not the platform's code).
LIBRARY_ENV: dict[str, str] = {
    "DAGSTER_HOME": "Dagster's instance directory (dagster.yaml, logs): <stack>/dagster",
    "KUBECONFIG": "kubectl's kubeconfig: the stack's admin identity",
    "BAO_ADDR": "the bao CLI's server address",
    "BAO_CACERT": "the bao CLI's CA certificate",
    "AWS_ENDPOINT_URL_S3": "boto3 and the aws CLI: the S3 endpoint",
    "AWS_SHARED_CREDENTIALS_FILE": "boto3: the S3 credentials file (mode 0600)",
    "AWS_PROFILE": "boto3: the profile in that file",
    "AWS_DEFAULT_REGION": "boto3: the region",
    "AWS_REQUEST_CHECKSUM_CALCULATION": "boto3: checksums only when required (the local S3 server needs it)",
    "AWS_RESPONSE_CHECKSUM_VALIDATION": "boto3: response checksums only when required",
    "PGHOST": "libpq (psql, Dagster's psycopg2): host",
    "PGPORT": "libpq: port",
    "PGDATABASE": "libpq: database",
    "PGUSER": "libpq: user",
    "PGSSLMODE": "libpq: verify-full",
    "PGSSLROOTCERT": "libpq: the CA that signed PostgreSQL's certificate",
    "PGPASSFILE": "libpq: the admin password file (mode 0600)",
}

#: The local stack's ports (service name -> setting). A new stack takes these when set; an existing stack
#: keeps the ports it was created with (``stack.json``).
PORT_SETTINGS: dict[str, str] = {
    "postgres": "pg_port",
    "openbao": "openbao_port",
    "openbao_cluster": "openbao_cluster_port",
    "s3": "s3_port",
    "prometheus": "prometheus_port",
    "pushgateway": "pushgateway_port",
    "dagster": "dagster_port",
    "traffic": "traffic_port",
    "kine": "kine_port",
    "kube_apiserver": "kube_apiserver_port",
    "kube_controller_manager": "kube_controller_manager_port",
    "etcd": "etcd_port",
    "etcd_peer": "etcd_peer_port",
    "patroni1": "patroni1_port",
    "patroni2": "patroni2_port",
    "patroni3": "patroni3_port",
    "pg1": "pg1_port",
    "pg2": "pg2_port",
    "pg3": "pg3_port",
    "postgres_replicas": "pg_replicas_port",
    "haproxy_stats": "haproxy_stats_port",
    "alertmanager": "alertmanager_port",
    "alert_receiver": "alert_receiver_port",
    "postgres_exporter1": "postgres_exporter1_port",
    "postgres_exporter2": "postgres_exporter2_port",
    "postgres_exporter3": "postgres_exporter3_port",
    "blackbox_exporter": "blackbox_exporter_port",
    "etcd_metrics": "etcd_metrics_port",
    "kubelet": "kubelet_port",
    "kubelet_healthz": "kubelet_healthz_port",
    "kube_scheduler": "kube_scheduler_port",
    "s3_dr": "s3_dr_port",
}


#: Where the daily SLO partitions start unless ``CQOX_SLO_PARTITIONS_START`` says otherwise: a fixed date near
#: this release (a date computed at import, such as the first of the current month, would move the partitions
#: every month and drop days already reported from the UI).
DEFAULT_SLO_PARTITIONS_START = date(2026, 11, 1)


class SettingsError(CqoxError):
    """A setting a command needs is not set, or the stack produced a variable the contract does not know."""


def _f(default: Any, meaning: str, source: Source = "stack", env: str | None = None) -> Any:
    """A field with its meaning and source; ``env`` names a variable outside the ``CQOX_`` prefix."""
    extra = {"source": source}
    if env:
        return Field(default, description=meaning, validation_alias=AliasChoices(env), json_schema_extra=extra)
    return Field(default, description=meaning, json_schema_extra=extra)


def _port(meaning: str) -> Any:
    return _f(None, f"port of {meaning} for a new stack (default: the stack's own default)", "operator")


class Settings(BaseSettings):
    """The platform's configuration, read from the environment (``eval "$(cqox-platform stack env)"``)."""

    model_config = SettingsConfigDict(
        env_prefix="CQOX_", case_sensitive=False, extra="ignore", frozen=True, populate_by_name=True
    )

    # --- the local stack -------------------------------------------------------------------------------------
    stack_dir: Path = _f(Path(".cqox"), "directory of the local stack (state, data, logs, certificates)")
    environment: Literal["local", "staging", "production"] = _f(
        "local", "what this installation is; alert_drill injects faults only where it is not production", "operator"
    )
    cache_dir: Path | None = _f(
        None, "where built binaries (kube-apiserver, kine) are cached (default /var/cache/cqox-platform)", "operator"
    )
    platform_cli: Path | None = _f(
        None, "the cqox-platform executable PostgreSQL runs (default: beside the running interpreter)", "operator"
    )

    # --- PostgreSQL ------------------------------------------------------------------------------------------
    pg_host: str | None = _f(None, "host of the CQOX database (HAProxy's on an HA stack)")
    pg_port: int | None = _f(None, "port of the CQOX database; for a new stack also the port it listens on")
    pg_db: str | None = _f(None, "name of the CQOX database")
    pg_user: str | None = _f(None, "the admin login (passfile), used for backups and bootstrap")
    pg_sslrootcert: Path | None = _f(None, "CA certificate that signed PostgreSQL's server certificate")
    pg_passfile: Path | None = _f(None, "libpq password file of the admin login (mode 0600)")
    pg_dsn: str | None = _f(None, "libpq connection string of the admin login (for psql and scripts)")
    pg_vault_role: str | None = _f(
        None, "Vault database role of the runtime login (DML on the CQOX tables only); unset: passfile login"
    )
    pg_vault_migrator_role: str | None = _f(
        None, "Vault database role of the migrator login (schema owner: migrations, partitions); unset: passfile login"
    )
    pg_data: Path | None = _f(None, "data directory of the single PostgreSQL node")
    dagster_pg_db: str | None = _f(None, "database of Dagster's instance storage")
    wal_archiver_config: Path | None = _f(None, "archiver settings file wal-push and wal-fetch read (postgres-owned)")
    pg_os_user: str = _f("postgres", "OS user PostgreSQL runs as; owns the archiver settings file", "operator")
    wal_push_mode: Literal["async", "sync"] = _f(
        "async",
        "archive_command of new PostgreSQL configs: async (pusher ahead, shell check per segment) or sync",
        "operator",
    )
    pg_replicas_port: int | None = _f(None, "HAProxy's read-only port in front of the replicas (HA stack)")

    # --- Vault -----------------------------------------------------------------------------------------------
    vault_addr: str | None = _f(None, "Vault (OpenBao) address", env="VAULT_ADDR")
    vault_cacert: Path | None = _f(None, "CA certificate of Vault's TLS", env="VAULT_CACERT")
    vault_approle_file: Path | None = _f(None, "the platform's AppRole credentials (written by vault_config)")
    vault_root_token_file: Path | None = _f(None, "the local stack's root token (bootstrap only: vault_config)")
    vault_audit_log: Path | None = _f(None, "Vault's audit log file (the secret-leak tests scan it)")
    backup_transit_key: str = _f("cqox-backups", "Transit key that wraps backup and WAL data keys", "operator")
    vault_approle_cidrs: str = _f(
        "127.0.0.1/32",
        "comma-separated CIDRs the AppRoles' secret-ids and tokens are bound to (where the platform and archiver run)",
        "operator",
    )
    vault_secret_id_ttl: str = _f(
        "720h", "lifetime of an AppRole secret-id; vault_config re-issues one once half of it has passed", "operator"
    )
    vault_db_owner_role: str = _f(
        "cqox_admin",
        "schema-owner role Vault-issued migrator logins act as: `cqox_` and lowercase letters, digits or `_` "
        "(not `cqox_runtime`); never a built-in or another application's role",
        "operator",
    )
    vault_db_default_ttl: str = _f(
        "1h", "lifetime of a Vault-issued PostgreSQL login unless renewed (at most CQOX_VAULT_DB_MAX_TTL)", "operator"
    )
    vault_db_max_ttl: str = _f(
        "24h", "longest lifetime of a Vault-issued PostgreSQL login, renewals included (at most 24h)", "operator"
    )
    vault_snapshot_approle_file: Path | None = _f(
        None, "credentials of the snapshot AppRole, which may read raft snapshots and nothing else (vault_config)"
    )
    vault_snapshot_keep: PositiveInt = _f(
        48, "Vault snapshots always kept per bucket, newest first, whatever their age", "operator"
    )
    vault_snapshot_max_age_days: PositiveInt = _f(
        14,
        "Vault snapshots older than this many days are deleted, beyond the newest CQOX_VAULT_SNAPSHOT_KEEP",
        "operator",
    )
    vault_unseal_mode: Literal["shamir", "transit", "kms", "key_file"] | None = _f(
        None,
        "how a restored Vault is unsealed: `shamir` (shares held by CQOX_VAULT_UNSEAL_SHAMIR_HOLDERS), `transit` "
        "or `kms` (auto-unseal by a key outside both sites), `key_file` (the local stack only)",
    )
    vault_unseal_shamir_holders: str | None = _f(
        None, "comma-separated names of the people who each hold one Shamir unseal share (mode shamir)", "operator"
    )
    vault_unseal_shamir_threshold: PositiveInt | None = _f(
        None,
        "how many of those shares unseal Vault (mode shamir; at least 2 when there are 2 or more holders)",
        "operator",
    )
    vault_unseal_transit: str | None = _f(
        None,
        "the other Vault's Transit key that auto-unseals this one, as `https://host:port/<mount>/keys/<name>`",
        "operator",
    )
    vault_unseal_kms_key: str | None = _f(
        None, "the cloud KMS key that auto-unseals Vault (an ARN or key id)", "operator"
    )
    vault_unseal_key_file: Path | None = _f(
        None, "the local stack's unseal key file (JSON with `unseal_keys_b64`; mode key_file)"
    )

    # --- S3 --------------------------------------------------------------------------------------------------
    s3_endpoint: str | None = _f(None, "S3 endpoint URL")
    s3_bucket: str | None = _f(None, "bucket of datasets, base backups and WAL")
    s3_dr_bucket: str | None = _f(None, "second-region bucket the DR copy writes to")
    s3_dr_endpoint: str | None = _f(
        None, "the DR region's S3 endpoint URL (another region and account than CQOX_S3_ENDPOINT)"
    )
    s3_dr_cacert: Path | None = _f(None, "CA certificate of the DR S3 endpoint's TLS")
    s3_dr_credentials_file: Path | None = _f(
        None,
        "AWS shared-credentials file (mode 0600) of the DR copy's writer: only the DR copy reads it; the primary's "
        "archiver and backups never get it",
    )
    s3_dr_reader_credentials_file: Path | None = _f(
        None,
        "AWS shared-credentials file (mode 0600) of a key that may only read the DR copy: drills and reports that "
        "read the DR copy use it",
    )
    aws_ca_bundle: Path | None = _f(None, "CA certificate of the S3 endpoint's TLS", env="AWS_CA_BUNDLE")
    backup_repositories: Path | None = _f(
        None,
        "YAML file of the backup repositories of other engines (barman-cloud, pgbackrest) the platform drills and "
        "measures besides its own; unset: its own only",
        "operator",
    )

    # --- datasets --------------------------------------------------------------------------------------------
    # What an upload may decode to: the byte limit on the upload itself says nothing about a Parquet file of
    # zeros, which compresses about a thousand to one. Parquet's footer is checked before any column is decoded.
    dataset_max_rows: PositiveInt = _f(10_000_000, "most rows a dataset upload may have", "operator")
    dataset_max_columns: PositiveInt = _f(1_000, "most columns a dataset upload may have", "operator")
    dataset_max_decoded_bytes: PositiveInt = _f(
        1 << 30,
        "most bytes a Parquet upload may decode to: the larger of its uncompressed size and 8 bytes per cell",
        "operator",
    )

    # --- Prometheus, SLOs, traffic ---------------------------------------------------------------------------
    prometheus_url: str | None = _f(None, "Prometheus base URL")
    prometheus_rules_dir: Path | None = _f(None, "directory Prometheus loads rule files from")
    prometheus_pid_file: Path | None = _f(
        None,
        "file holding Prometheus's PID: installed rule files are loaded by SIGHUP to it (the HTTP lifecycle API, "
        "which would also let anyone stop it, stays off)",
    )
    pushgateway_url: str | None = _f(None, "Pushgateway base URL (backup and SLO gauges)")
    pushgateway_user: str | None = _f(None, "basic-auth user the platform pushes to the Pushgateway as")
    pushgateway_password_file: Path | None = _f(None, "file holding that user's password (mode 0600)")
    pushgateway_cacert: Path | None = _f(None, "CA certificate of the Pushgateway's TLS")
    traffic_url: str | None = _f(None, "the synthetic CQOx traffic exporter (stack up --traffic)")
    slo_partitions_start: date = _f(
        DEFAULT_SLO_PARTITIONS_START,
        "first day of the daily SLO report partitions (YYYY-MM-DD): set it to the day this installation began "
        "serving, so the UI lists no day without data; a fixed date, so the partitions never move",
        "operator",
    )
    slo_spec: Path | None = _f(
        None,
        "SLO spec for rules, reports, the burn-rate sensor and the canary gate (default cqox_platform/slo/slos.yaml)",
        "operator",
    )
    canary_policy_dir: Path | None = _f(
        None, "directory of canary policies (default cqox_platform/canary/policies)", "operator"
    )
    canary_stable_ready: Literal["available", "updated"] = _f(
        "available",
        "when a promoted stable Deployment counts as rolled out: `available` (its updated pods are available, as "
        "`kubectl rollout status`) or `updated` (observed generation and updated replicas only: the local stack, "
        "which runs kube-controller-manager but no kubelet, so no pod ever becomes available)",
    )

    # --- alerting: Alertmanager, PagerDuty, webhooks, the local receiver --------------------------------------
    alertmanager_url: str | None = _f(None, "Alertmanager base URL (HTTPS with basic auth on the local stack)")
    alertmanager_cacert: Path | None = _f(None, "CA certificate of Alertmanager's TLS")
    alertmanager_user: str | None = _f(None, "basic-auth user of Alertmanager's API")
    alertmanager_password_file: Path | None = _f(None, "file holding that user's password (mode 0600)")
    alertmanager_config_file: Path | None = _f(
        None, "the routing file Alertmanager loads; alertmanager_config writes it (mode 0600: it holds keys)"
    )
    pagerduty_events_url: str = _f(
        "https://events.pagerduty.com/v2/enqueue",
        "PagerDuty Events API v2 enqueue URL the page receiver posts to (the local stack: its receiver)",
    )
    alert_webhook_url: SecretStr | None = _f(
        None, "webhook the ticket receiver posts to (a secret for chat webhooks; the local stack: its receiver)"
    )
    alert_heartbeat_url: SecretStr | None = _f(
        None,
        "dead man's switch the always-firing Watchdog is sent to, which pages when it stops (a secret: snitch URLs "
        "carry their token; the local stack: its receiver's /heartbeat/watchdog)",
    )
    alert_receiver_url: str | None = _f(None, "the local stack's alert receiver (what would have paged)")
    pagerduty_routing_key_file: Path | None = _f(
        None,
        "local stack only: the receiver's integration key, which vault_config stores in Vault KV when KV has none",
    )

    # --- Dagster, Kubernetes, HA -----------------------------------------------------------------------------
    dagster_url: str | None = _f(None, "the Dagster webserver's URL")
    kubeconfig: Path | None = _f(None, "kubeconfig of the platform's Kubernetes identity; unset: in-cluster")
    kube_restricted_kubeconfig: Path | None = _f(None, "kubeconfig of a powerless identity (RBAC tests)")
    kube_api_url: str | None = _f(None, "the Kubernetes API server's URL")
    kube_node: str | None = _f(None, "name of the stack's Kubernetes node (`stack up --kube-node`)")
    kube_pod_logs: Path | None = _f(None, "directory of the node's container logs (`stack up --kube-node`)")
    etcd_url: str | None = _f(None, "etcd client URL (HA stack)")
    patroni_urls: str | None = _f(None, "comma-separated Patroni REST API URLs (HA stack)")
    patroni_user: str | None = _f(None, "Patroni REST API user for writes (HA stack)")
    patroni_password_file: Path | None = _f(None, "file holding that user's password (HA stack)")
    patroni_cacert: Path | None = _f(None, "CA certificate of Patroni's REST API (HA stack)")
    haproxy_stats_url: str | None = _f(None, "HAProxy's stats and metrics URL (HA stack)")

    # --- ports of a new local stack (operator overrides) -----------------------------------------------------
    openbao_port: int | None = _port("OpenBao")
    openbao_cluster_port: int | None = _port("OpenBao's cluster listener")
    s3_port: int | None = _port("the S3 server")
    prometheus_port: int | None = _port("Prometheus")
    pushgateway_port: int | None = _port("the Pushgateway")
    dagster_port: int | None = _port("the Dagster webserver")
    traffic_port: int | None = _port("the traffic exporter")
    kine_port: int | None = _port("kine (the API server's storage)")
    kube_apiserver_port: int | None = _port("kube-apiserver")
    kube_controller_manager_port: int | None = _port("kube-controller-manager")
    etcd_port: int | None = _port("etcd's client listener")
    etcd_peer_port: int | None = _port("etcd's peer listener")
    patroni1_port: int | None = _port("node1's Patroni REST API")
    patroni2_port: int | None = _port("node2's Patroni REST API")
    patroni3_port: int | None = _port("node3's Patroni REST API")
    pg1_port: int | None = _port("node1's PostgreSQL")
    pg2_port: int | None = _port("node2's PostgreSQL")
    pg3_port: int | None = _port("node3's PostgreSQL")
    haproxy_stats_port: int | None = _port("HAProxy's stats listener")
    alertmanager_port: int | None = _port("Alertmanager")
    alert_receiver_port: int | None = _port("the local alert receiver")
    postgres_exporter1_port: int | None = _port("the PostgreSQL exporter of the single node or of node1")
    postgres_exporter2_port: int | None = _port("node2's PostgreSQL exporter (HA stack)")
    postgres_exporter3_port: int | None = _port("node3's PostgreSQL exporter (HA stack)")
    blackbox_exporter_port: int | None = _port("the blackbox exporter (certificate expiry, OpenBao's seal)")
    etcd_metrics_port: int | None = _port("etcd's metrics-only listener (HA stack)")
    kubelet_port: int | None = _port("the kubelet's API (stack with a Kubernetes node)")
    kubelet_healthz_port: int | None = _port("the kubelet's health endpoint (stack with a Kubernetes node)")
    kube_scheduler_port: int | None = _port("kube-scheduler (stack with a Kubernetes node)")
    s3_dr_port: int | None = _port("the DR region's S3 server")

    # --- reading ---------------------------------------------------------------------------------------------

    @classmethod
    def env_name(cls, field: str) -> str:
        """The environment variable behind a field: ``pg_host`` is ``CQOX_PG_HOST``, ``vault_addr`` ``VAULT_ADDR``."""
        info = cls.model_fields[field]
        alias = info.validation_alias
        if isinstance(alias, AliasChoices):
            return str(alias.choices[0])
        return f"CQOX_{field.upper()}"

    @classmethod
    def source(cls, field: str) -> Source:
        extra = cls.model_fields[field].json_schema_extra
        assert isinstance(extra, dict)
        return extra["source"]  # type: ignore[return-value]

    @classmethod
    def env_names(cls, source: Source | None = None) -> dict[str, str]:
        """Variable name -> field, for every field (or those of one source)."""
        return {cls.env_name(f): f for f in cls.model_fields if source is None or cls.source(f) == source}

    def require(self, field: str) -> Any:
        """The value of a field a command cannot do without; one clear line when it is not set."""
        value = getattr(self, field)
        if value is None or value == "":
            meaning = type(self).model_fields[field].description
            raise SettingsError(
                f"{self.env_name(field)} is not set ({meaning}); for the local stack run "
                f'`eval "$(cqox-platform stack env)"` first.'
            )
        return value.get_secret_value() if isinstance(value, SecretStr) else value

    def port_overrides(self) -> dict[str, int]:
        """Ports a new local stack should use instead of its defaults."""
        return {svc: getattr(self, f) for svc, f in PORT_SETTINGS.items() if getattr(self, f) is not None}


def settings_table() -> str:
    """The Markdown table of every setting (docs/configuration.md holds this text, checked by a test)."""
    from cqox_platform.markdown import table

    def default(field: str) -> str:
        value = Settings.model_fields[field].default
        return "" if value is None else f"`{value}`"

    rows = [
        [f"`{Settings.env_name(f)}`", Settings.source(f), default(f), Settings.model_fields[f].description]
        for f in Settings.model_fields
    ]
    rows += [[f"`{name}`", "stack (for libraries)", "", meaning] for name, meaning in LIBRARY_ENV.items()]
    return table(["variable", "set by", "default", "meaning"], rows)


def get_settings() -> Settings:
    """The settings as the environment holds them now (cheap; read afresh so tests and sub-commands agree)."""
    return Settings()


def render_stack_env(values: Mapping[str, str]) -> dict[str, str]:
    """Validate what the stack's services export against the contract, for ``stack env`` and spawned services.

    An unknown name is a bug (a service exporting a variable nobody declared), so it fails here, where a test
    catches it, instead of drifting silently.
    """
    known = Settings.env_names() | dict.fromkeys(LIBRARY_ENV)
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise SettingsError(f"the stack exports variables the settings contract does not declare: {unknown}.")
    fields = Settings.env_names()
    Settings.model_validate({fields[k]: v for k, v in values.items() if k in fields})
    return dict(values)


#: The DR region's settings (endpoint, keys): the primary side's processes (PostgreSQL, its archiver) never get them.
DR_ONLY_ENV_PREFIX = "CQOX_S3_DR_"


def child_env(extra: Mapping[str, str] | None = None, *, drop_prefixes: tuple[str, ...] = ()) -> dict[str, str]:
    """The environment to pass on to a child process, with the given prefixes dropped and ``extra`` added.

    Spawning is the one other place the environment is handled: a child inherits what this process has.
    """
    env = (
        {k: v for k, v in os.environ.items() if not k.startswith(drop_prefixes)} if drop_prefixes else dict(os.environ)
    )
    env.update(extra or {})
    return env


def forget_inherited(prefix: str) -> None:
    """Drop variables this process inherited under ``prefix``, for a process that must trust only its own files
    (the WAL archiver: boto3 would follow an inherited ``AWS_PROFILE`` to files its OS user cannot read)."""
    for name in [n for n in os.environ if n.startswith(prefix)]:
        del os.environ[name]
