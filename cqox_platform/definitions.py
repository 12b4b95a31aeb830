"""Composition root of the code location: the only module that imports ``assets`` and ``sensors``.

Each domain module declares its own ``defs``; this module merges them and binds the resources, each built
from the settings contract (``cqox_platform.settings``; ``eval "$(cqox-platform stack env)"`` for the local
stack). Loading needs no environment: a value a run needs but nobody set fails that run, naming the variable.
"""

import dagster as dg
from dagster_aws.s3 import S3Resource

from assets import (
    alert_drill,
    alerting,
    backups,
    canary,
    database,
    datasets,
    deploy,
    ha,
    security,
    site_loss,
    slo,
    vault_recovery,
)
from cqox_platform.resources.alertmanager import AlertmanagerResource
from cqox_platform.resources.backups import BackupStorageResource
from cqox_platform.resources.kubernetes import KubernetesResource
from cqox_platform.resources.patroni import PatroniResource
from cqox_platform.resources.postgres import PostgresResource
from cqox_platform.resources.prometheus import PrometheusResource
from cqox_platform.resources.vault import VaultResource
from cqox_platform.settings import get_settings
from sensors import (
    backup_schedules,
    canary_sensor,
    database_schedules,
    datasets_sensor,
    ha_sensors,
    heartbeat_sensor,
    run_failure_sensor,
    slo_sensor,
    vault_recovery_sensor,
    vault_sensor,
)

settings = get_settings()
vault = VaultResource.from_settings(settings)

defs = dg.Definitions.merge(
    database.defs,
    security.defs,
    datasets.defs,
    slo.defs,
    alerting.defs,
    alert_drill.defs,
    database_schedules.defs,
    datasets_sensor.defs,
    slo_sensor.defs,
    heartbeat_sensor.defs,
    vault_sensor.defs,
    run_failure_sensor.defs,
    backups.defs,
    backup_schedules.defs,
    canary.defs,
    canary_sensor.defs,
    deploy.defs,
    ha.defs,
    ha_sensors.defs,
    vault_recovery.defs,
    site_loss.defs,
    vault_recovery_sensor.defs,
    dg.Definitions(
        resources={
            # Short-lived Vault-issued users when Vault database roles are configured (the local stack sets
            # both); without one the passfile login. "postgres" is the runtime login (DML only) every table
            # write uses; "postgres_migrator" acts as the schema owner, for the database assets that need DDL
            # or ownership (migrations, pg_partman maintenance, dropping partitions, refreshing aggregates).
            "postgres": PostgresResource.from_settings(settings, vault=vault),
            "postgres_migrator": PostgresResource.from_settings(settings, vault=vault, migrator=True),
            "postgres_admin": PostgresResource.from_settings(settings),
            "vault": vault,
            "vault_admin": VaultResource.from_settings(settings, admin=True),
            # The snapshot AppRole: reads raft snapshots and nothing else (vault_snapshot only).
            "vault_snapshot_reader": VaultResource.from_settings(settings, snapshot=True),
            "prometheus": PrometheusResource.from_settings(settings),
            # Alertmanager's API and routing file (CQOX_ALERTMANAGER_*); alertmanager_config loads routing there.
            "alertmanager": AlertmanagerResource.from_settings(settings),
            "backups": BackupStorageResource.from_settings(settings),
            # boto3 takes the CA (AWS_CA_BUNDLE), credentials file and checksum mode from `stack env`; no
            # endpoint means AWS's own.
            "s3": S3Resource(endpoint_url=settings.s3_endpoint, region_name="us-east-1"),
            # The stack's admin kubeconfig (CQOX_KUBECONFIG); in a cluster, the pod's service account.
            "kubernetes": KubernetesResource.from_settings(settings),
            # An HA stack's Patroni REST API (CQOX_PATRONI_*); left unconfigured on a single node, where the
            # ha asset fails with what to do and the timeline sensor skips.
            "patroni": PatroniResource.from_settings(settings),
        }
    ),
)
