"""Vault configuration and transport security as assets and checks (group ``security``)."""

from pathlib import Path
from urllib.parse import urlparse

import dagster as dg
from dagster_aws.s3 import S3Resource

from assets.metadata import column, table
from cqox_platform.errors import CqoxError
from cqox_platform.pushgateway import Pushgateway, Sample, expected_period_sample, push
from cqox_platform.resources.postgres import PostgresResource
from cqox_platform.resources.vault import VaultResource
from cqox_platform.secrets.renewal import SECRET_IDS_METADATA
from cqox_platform.secrets.transport import TlsProbe, probe_tls
from cqox_platform.secrets.vault_setup import (
    AppRoleLimits,
    ArchiverSetup,
    DatabaseEngineSettings,
    DatabaseLoginLimits,
    configure_vault,
)
from cqox_platform.settings import Settings, get_settings

GROUP = "security"
#: The Pushgateway group of the secret-id gauges. vault_config runs daily (and on renewal): a group older than
#: three days only means the gauges may be out of date (the expiry alert works from absolute times), a ticket.
SECRET_ID_PUSH_JOB = "cqox-vault"
SECRET_ID_PUSH_PERIOD_SECONDS = 86400
SECRET_ID_STALE_SEVERITY = "ticket"


class VaultConfigSettings(dg.Config):
    """Whether to set up the database secrets engine.

    Where credentials are written (the platform's AppRole file, the archiver's settings file and its OS user),
    which bucket the archiver writes to, and which role and lifetimes Vault's PostgreSQL logins get come from the
    settings only: anyone who can launch a run could otherwise have a fresh secret-id written where they can read
    it, or every migrator login made a member of ``postgres``.
    """

    configure_database: bool = True


@dg.asset(
    group_name=GROUP,
    kinds={"vault"},
    description="Vault as code: KV v2, Transit keys cqox-datasets and cqox-backups, policies from "
    "secrets/policies, the platform's, the WAL archiver's and the snapshot reader's AppRoles, audit device, and the "
    "database secrets engine for short-lived PostgreSQL users.",
)
def vault_config(
    context: dg.AssetExecutionContext,
    config: VaultConfigSettings,
    vault_admin: VaultResource,
    postgres_admin: PostgresResource,
    s3: S3Resource,
) -> dg.MaterializeResult:
    settings = get_settings()
    # Checked before anything is read or written: a bad setting fails the run naming the variable to fix.
    logins = DatabaseLoginLimits.from_settings(settings)
    database = None
    if config.configure_database:
        database = DatabaseEngineSettings(
            host=postgres_admin.host,
            port=postgres_admin.port,
            dbname=postgres_admin.dbname,
            admin_user=postgres_admin.user,
            admin_password=postgres_admin.admin_password(),
            sslrootcert=postgres_admin.sslrootcert or "",
            logins=logins,
        )
    archiver = _archiver_setup(context, settings, vault_admin, s3)
    client = vault_admin.client()
    state = vault_admin.call(
        "configuring Vault",
        lambda: configure_vault(
            client,
            verify=vault_admin.cacert or True,
            approle_file=Path(settings.require("vault_approle_file")),
            database=database,
            archiver=archiver,
            approle_limits=AppRoleLimits.from_settings(settings),
            # The local stack's receiver key (CQOX_PAGERDUTY_ROUTING_KEY_FILE); production leaves it unset and
            # an operator writes the real PagerDuty integration key to Vault.
            pagerduty_key_file=settings.pagerduty_routing_key_file,
            # The snapshot identity (vault_snapshot): reads raft snapshots, nothing else.
            snapshot_approle_file=settings.vault_snapshot_approle_file,
        ),
    )
    for change in state.changed:
        context.log.info(change)
    _push_secret_id_gauges(context, settings, state.secret_ids)
    return dg.MaterializeResult(
        metadata={
            "vault": vault_admin.addr,
            "engines": dg.MetadataValue.json(state.engines),
            "policies": dg.MetadataValue.json(state.policies),
            "auth_methods": dg.MetadataValue.json(state.auth_methods),
            "audit_devices": dg.MetadataValue.json(state.audit_devices),
            "transit_keys": dg.MetadataValue.json(state.transit_keys),
            "database_roles": dg.MetadataValue.json(state.database_roles),
            "changed_this_run": dg.MetadataValue.json(state.changed),
            # What secret_id_renewal_sensor decides from: each AppRole's secret-id expiry (unix time), lifetime.
            SECRET_IDS_METADATA: dg.MetadataValue.json(state.secret_ids),
        }
    )


def _push_secret_id_gauges(
    context: dg.AssetExecutionContext, settings: Settings, secret_ids: dict[str, dict[str, float]]
) -> None:
    """Each secret-id's expiry (an absolute time: CqoxVaultSecretIdExpiring keeps counting down when nothing
    pushes any more) and lifetime, for the alert that pages well before one expires."""
    gateway = Pushgateway.from_settings(settings)
    if gateway is None:
        context.log.warning("no Pushgateway configured (CQOX_PUSHGATEWAY_URL): secret-id expiry gauges not pushed")
        return
    samples: list[Sample] = []
    for role, life in sorted(secret_ids.items()):
        samples.append(("cqox_vault_secret_id_expiry_timestamp_seconds", {"approle": role}, life["expires_at"]))
        samples.append(("cqox_vault_secret_id_ttl_seconds", {"approle": role}, life["ttl_seconds"]))
    samples.append(expected_period_sample(SECRET_ID_PUSH_PERIOD_SECONDS, SECRET_ID_STALE_SEVERITY))
    try:
        sent = push(gateway, SECRET_ID_PUSH_JOB, {}, samples, replace=True)
        context.log.info(f"pushed {sent} secret-id gauge(s) to the Pushgateway")
    except CqoxError as exc:
        # Not raised: the secrets are renewed; the old gauges only make the expiry alert fire early.
        context.log.warning(f"secret-id gauges not pushed: {exc}")


def _archiver_setup(
    context: dg.AssetExecutionContext, settings: Settings, vault_admin: VaultResource, s3: S3Resource
) -> ArchiverSetup | None:
    """The WAL archiver's identity and S3 target, or ``None`` (logged) when no archiver is configured here."""
    settings_file, bucket = settings.wal_archiver_config, settings.s3_bucket
    if not settings_file or not bucket or not s3.endpoint_url:
        context.log.warning("no WAL archiver settings file, bucket or S3 endpoint configured: skipping the archiver")
        return None
    import boto3

    credentials = boto3.Session(profile_name=s3.profile_name).get_credentials()
    if credentials is None:
        raise dg.Failure("no S3 credentials found for the backup bucket (AWS_PROFILE / AWS_SHARED_CREDENTIALS_FILE).")
    frozen = credentials.get_frozen_credentials()
    return ArchiverSetup(
        settings_file=Path(settings_file),
        os_user=settings.pg_os_user,
        s3_endpoint=s3.endpoint_url,
        s3_cacert=str(settings.aws_ca_bundle or ""),
        bucket=bucket,
        access_key_id=frozen.access_key,
        secret_access_key=frozen.secret_key,
        vault_cacert=vault_admin.cacert or "",
    )


def _problem(probe: TlsProbe) -> str:
    """Why a probe failed, in a few words."""
    if probe.error:
        return probe.error
    if probe.accepts_below_tls13:
        return "accepts a TLS version below 1.3"
    return "certificate does not verify" if not probe.verified else f"negotiated {probe.protocol}"


def _endpoint(url: str) -> tuple[str, int]:
    parsed = urlparse(url)
    return parsed.hostname or "127.0.0.1", parsed.port or 443


@dg.asset_check(
    asset=vault_config,
    description="PostgreSQL, Vault and S3 speak only TLS 1.3 with certificates that verify against the CA.",
)
def transport_security(postgres: PostgresResource, vault: VaultResource, s3: S3Resource) -> dg.AssetCheckResult:
    vault_host, vault_port = _endpoint(vault.addr)
    probes: list[TlsProbe] = [
        probe_tls("postgresql", postgres.host, postgres.port, postgres.sslrootcert, postgres=True),
        probe_tls("vault", vault_host, vault_port, vault.cacert),
    ]
    if s3.endpoint_url:
        s3_host, s3_port = _endpoint(s3.endpoint_url)
        # boto3 reads its CA bundle from AWS_CA_BUNDLE; the probe trusts exactly what the S3 client trusts.
        ca_bundle = get_settings().aws_ca_bundle
        probes.append(probe_tls("s3", s3_host, s3_port, str(ca_bundle) if ca_bundle else None))
    endpoints = table(
        [
            column("endpoint"),
            column("address"),
            column("protocol", description="what the handshake negotiated"),
            column("certificate verifies", "bool", "against the configured CA"),
            column("accepts < TLS 1.3", "bool", "a handshake capped at TLS 1.2 succeeded"),
            column("expires", description="the certificate's notAfter (UTC date)"),
            column("days left", "float"),
            column("error", description="why the probe failed; empty: it did not"),
        ],
        [
            [
                p.name,
                p.address,
                p.protocol,
                p.verified,
                p.accepts_below_tls13,
                p.cert_not_after.date().isoformat() if p.cert_not_after else None,
                round(p.days_left, 1) if p.days_left is not None else None,
                p.error,
            ]
            for p in probes
        ],
    )
    failing = [p.name for p in probes if not p.ok]
    soonest = min((p for p in probes if p.days_left is not None), key=lambda p: p.days_left, default=None)
    if failing:
        description = "; ".join(f"{p.name} at {p.address}: {_problem(p)}" for p in probes if not p.ok)
    else:
        description = f"{', '.join(p.name for p in probes)} speak only TLS 1.3 with verified certificates"
        if soonest is not None:
            description += f"; the first to expire is {soonest.name}'s in {soonest.days_left:.0f} days"
    return dg.AssetCheckResult(
        passed=not failing,
        description=description,
        metadata={
            "endpoints": endpoints,
            "failing": dg.MetadataValue.json(failing),
            "min_days_to_expiry": min((p.days_left for p in probes if p.days_left is not None), default=-1.0),
        },
    )


vault_config_job = dg.define_asset_job(
    "vault_config_job",
    selection=[vault_config],
    description="Apply Vault as code (engines, Transit keys, policies, AppRoles, audit) and renew AppRole "
    "secret-ids that are due.",
)
vault_config_schedule = dg.ScheduleDefinition(
    job=vault_config_job,
    cron_schedule="15 2 * * *",
    execution_timezone="UTC",
    # On by default: a fresh instance that never ran it would lose its AppRole logins when the secret-ids expire.
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description="Daily: re-applies Vault's configuration and renews the AppRole secret-ids once half of their "
    "lifetime (CQOX_VAULT_SECRET_ID_TTL) has passed, long before they expire (secret_id_renewal_sensor also "
    "requests a run as soon as one is due).",
)

defs = dg.Definitions(
    assets=[vault_config], asset_checks=[transport_security], jobs=[vault_config_job], schedules=[vault_config_schedule]
)
