"""Composition root of the code location: the only module that imports ``assets`` and ``sensors``.

Each domain module declares its own ``defs``; this module merges them and binds the resources, which read
their configuration from the environment (``eval "$(cqox-platform stack env)"`` for the local stack).
"""

import os

import dagster as dg
from dagster_aws.s3 import S3Resource

from assets import backups, canary, database, datasets, deploy, ha, security, slo
from cqox_platform.resources.backups import BackupStorageResource
from cqox_platform.resources.kubernetes import KubernetesResource
from cqox_platform.resources.patroni import PatroniResource
from cqox_platform.resources.postgres import PostgresResource
from cqox_platform.resources.prometheus import PrometheusResource
from cqox_platform.resources.vault import VaultResource
from sensors import backup_schedules, canary_sensor, database_schedules, datasets_sensor, ha_sensors, slo_sensor

vault = VaultResource.platform_from_env()
# The platform logs in to PostgreSQL as a short-lived Vault-issued user when a Vault database role is configured
# (the local stack sets CQOX_PG_VAULT_ROLE); without one it uses the passfile login.
postgres = (
    PostgresResource.from_env_with_vault(vault) if os.environ.get("CQOX_PG_VAULT_ROLE") else PostgresResource.from_env()
)

defs = dg.Definitions.merge(
    database.defs,
    security.defs,
    datasets.defs,
    slo.defs,
    database_schedules.defs,
    datasets_sensor.defs,
    slo_sensor.defs,
    backups.defs,
    backup_schedules.defs,
    canary.defs,
    canary_sensor.defs,
    deploy.defs,
    ha.defs,
    ha_sensors.defs,
    dg.Definitions(
        resources={
            "postgres": postgres,
            "postgres_admin": PostgresResource.from_env(),
            "vault": vault,
            "vault_admin": VaultResource.admin_from_env(),
            "prometheus": PrometheusResource.from_env(),
            # boto3 takes the CA (AWS_CA_BUNDLE), credentials file and checksum mode from `stack env`.
            "backups": BackupStorageResource.from_env(),
            "s3": S3Resource(endpoint_url=dg.EnvVar("CQOX_S3_ENDPOINT"), region_name="us-east-1"),
            # The stack's admin kubeconfig (CQOX_KUBECONFIG); in a cluster, the pod's service account.
            "kubernetes": KubernetesResource.from_env(),
            # An HA stack's Patroni REST API (CQOX_PATRONI_*); left unconfigured on a single node, where the
            # ha asset fails with what to do and the timeline sensor skips.
            "patroni": PatroniResource.from_env(),
        }
    ),
)
